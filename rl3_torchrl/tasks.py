"""Named task distributions and the RL²/RL³ env pipeline built on them.

A *task* name selects an env class and one of its presets (``"random_mdp"``, ``"random_mdp_ood"``, ``"bandit"``,
``"gridworld_13x13_watery"``, …). :func:`make_meta_env` wraps it in the transforms of an algorithm:

* ``"rl2"``: :class:`~rl3_torchrl.transforms.MetaRLInputs` + ``InitTracker``;
* ``"rl3"``: the same plus :class:`~rl3_torchrl.transforms.OnlineQEstimator` (the task family's preset);
* ``"rl3_coarse"``: RL³ with the coarse state abstraction of the Q model (gridworlds only).
"""
from __future__ import annotations

from dataclasses import dataclass

from torchrl.envs import Compose, InitTracker, TransformedEnv

from rl3_torchrl._validation import check_choice
from rl3_torchrl.envs import GridworldEnv, RandomMDPEnv
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator



@dataclass(frozen=True)
class Algorithm:
    """One meta-RL algorithm: what its env pipeline adds to the task and what its actor-critic reads.

    Adding an algorithm is one entry of :data:`ALGORITHMS`; the configuration's ``algo`` key, :func:`make_meta_env`,
    the trainer and ``load_actor`` all read it from there.

    Attributes:
        model_inputs (str): the input layout of :func:`~rl3_torchrl.modules.make_actor_critic` (its ``inputs``
            argument): ``"rl2"`` (observation, previous action, reward, done) or ``"rl3"`` (those and the Q
            features).
        q_estimator (bool): the pipeline adds the :class:`~rl3_torchrl.transforms.OnlineQEstimator`.
        coarse (bool): the estimator runs on the coarse state abstraction (gridworlds only).

    Examples:
        >>> ALGORITHMS["rl3_coarse"]
        Algorithm(model_inputs='rl3', q_estimator=True, coarse=True)
    """

    model_inputs: str
    q_estimator: bool = False
    coarse: bool = False


#: Every algorithm by name (the ``algo`` of the configuration).
ALGORITHMS: dict[str, Algorithm] = {
    "rl2": Algorithm("rl2"),
    "rl3": Algorithm("rl3", q_estimator=True),
    "rl3_coarse": Algorithm("rl3", q_estimator=True, coarse=True),
}
#: The names of :data:`ALGORITHMS`.
ALGOS = tuple(ALGORITHMS)


@dataclass(frozen=True)
class TaskSpec:
    """One named task distribution: the env class, its preset and the family it is a shift of.

    Examples:
        >>> spec = TASKS["random_mdp_ood"]
        >>> spec.env_cls.__name__, spec.preset, spec.family, spec.q_preset
        ('RandomMDPEnv', 'ood', 'random_mdp', 'random_mdp')
    """

    env_cls: type
    preset: str
    family: str

    @property
    def q_preset(self) -> str:
        return "gridworld" if self.env_cls is GridworldEnv else "random_mdp"


def _registry() -> dict[str, TaskSpec]:
    tasks = {
        "random_mdp": TaskSpec(RandomMDPEnv, "default", "random_mdp"),
        "random_mdp_ood": TaskSpec(RandomMDPEnv, "ood", "random_mdp"),
        "bandit": TaskSpec(RandomMDPEnv, "bandit", "bandit"),
        "bandit_ood": TaskSpec(RandomMDPEnv, "bandit_ood", "bandit"),
    }
    for preset in GridworldEnv.PRESETS:
        family = "gridworld_" + preset.split("_")[0]
        tasks["gridworld_" + preset] = TaskSpec(GridworldEnv, preset, family)
    return tasks


#: Every task by name: the random-MDP and bandit presets by hand, every gridworld preset of ``GridworldEnv.PRESETS``.
TASKS: dict[str, TaskSpec] = _registry()


def task_family(task: str) -> list[str]:
    """The task itself and its out-of-distribution shifts, in-distribution first.

    Examples:
        >>> task_family("random_mdp")
        ['random_mdp', 'random_mdp_ood']
    """
    family = TASKS[check_choice("task", task, TASKS)].family
    return [family] + [name for name, spec in TASKS.items() if spec.family == family and name != family]


def make_task_env(task: str, num_envs: int, **kwargs):
    """The base env of a named task; keyword arguments (``horizon``, ``seed``, ``split``, ``device``, …) override
    its preset.

    Examples:
        >>> env = make_task_env("gridworld_11x11", 2)
        >>> env.horizon, env.n_states
        (250, 121)
    """
    spec = TASKS[check_choice("task", task, TASKS)]
    return spec.env_cls.from_preset(spec.preset, num_envs, **{k: v for k, v in kwargs.items() if v is not None})


def make_meta_env(
    task: str,
    algo: str,
    num_envs: int,
    *,
    write_q_values: bool = False,
    q_overrides: dict | None = None,
    **env_kwargs,
) -> TransformedEnv:
    """The env of a task wrapped in the input transforms of an algorithm.

    Args:
        task (str): a name of :data:`TASKS`.
        algo (str): a name of :data:`ALGORITHMS`.
        num_envs (int): the number of tasks held at once.

    Keyword Args:
        write_q_values (bool): RL³ only: also write the raw ``q_values`` (for tabular baseline policies).
        q_overrides (dict, optional): RL³ only: arguments overriding the Q estimator's preset.
        **env_kwargs: passed to :func:`make_task_env` (``horizon``, ``seed``, ``split``, ``device``, …); ``None``
            values keep the preset's.

    Examples:
        >>> env = make_meta_env("random_mdp", "rl3", 4, horizon=20)
        >>> td = env.reset()
        >>> td["q_features"].shape, td["prev_action"].shape, bool(td["is_init"].all())
        (torch.Size([4, 11]), torch.Size([4, 5]), True)
    """
    algorithm = ALGORITHMS[check_choice("algo", algo, ALGORITHMS)]
    spec = TASKS[check_choice("task", task, TASKS)]
    transforms = [MetaRLInputs()]
    if not algorithm.q_estimator:
        if write_q_values or q_overrides:
            allowed = " or ".join(repr(name) for name, a in ALGORITHMS.items() if a.q_estimator)
            raise ValueError(f"write_q_values and q_overrides need algo={allowed}, got algo={algo!r}.")
    else:
        q_preset = spec.q_preset
        if algorithm.coarse:
            if q_preset != "gridworld":
                raise ValueError(f"algo={algo!r} needs a gridworld task (a state abstraction), got task={task!r}.")
            q_preset = "gridworld_coarse"
        transforms.append(
            OnlineQEstimator.from_preset(q_preset, write_q_values=write_q_values, **(q_overrides or {}))
        )
    transforms.append(InitTracker())
    return TransformedEnv(make_task_env(task, num_envs, **env_kwargs), Compose(*transforms))
