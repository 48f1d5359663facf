"""Named task distributions and the RL²/RL³ env pipeline built on them.

A *task* name selects an env class and one of its presets (``"random_mdp"``, ``"random_mdp_ood"``, ``"bandit"``,
``"gridworld_13x13_watery"``, …). :func:`make_meta_env` wraps it in the transforms of an algorithm:

* ``"rl2"``: :class:`~rl3_torchrl.transforms.MetaRLInputs` + ``InitTracker``;
* ``"rl3"``: the same plus :class:`~rl3_torchrl.transforms.OnlineQEstimator` (the task family's preset);
* ``"rl3_coarse"``: RL³ with the coarse state abstraction of the Q model (gridworlds only).

:func:`register_task` adds a task (any env factory) to :data:`TASKS`, so that the recipes, the evaluation and the
study runner accept its name. The recipes see tasks registered by the modules named in the environment variable
``RL3_TASKS`` (comma-separated module names, imported at the end of this module, also in collection workers):
``RL3_TASKS=my_tasks python recipes/ppo_rl3.py env=my_task``.
"""
from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from torchrl.envs import Compose, InitTracker, TransformedEnv

from rl3_torchrl._validation import check_choice
from rl3_torchrl.envs import GridworldEnv, RandomMDPEnv
from rl3_torchrl.envs.toy_text import FrozenLakeFamily, TaxiFamily, make_toy_text_env
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
    """One named task distribution: how to build its env, the family it is a shift of, and the settings of RL³'s
    Q estimator on it.

    Attributes:
        factory (callable): ``factory(num_envs, **kwargs) -> env``, a batched meta-RL env (``batch_size
            [num_envs]``, a ``horizon`` attribute, the keys of :class:`~rl3_torchrl.envs.MetaTaskEnv`; for the
            oracle-normalised evaluation a ``task_mdp()``); ``kwargs`` are ``horizon``, ``seed``, ``split``,
            ``device``.
        family (str): the in-distribution task of which this one is a shift (itself if in distribution).
        q_preset (str or dict): a preset name of :attr:`OnlineQEstimator.PRESETS
            <rl3_torchrl.transforms.OnlineQEstimator.PRESETS>` or the estimator's keyword arguments.

    Examples:
        >>> spec = TASKS["random_mdp_ood"]
        >>> spec.family, spec.q_preset
        ('random_mdp', 'random_mdp')
    """

    factory: Callable
    family: str
    q_preset: str | dict = "random_mdp"


def register_task(name: str, factory: Callable, *, family: str | None = None, q_preset="random_mdp",
                  replace: bool = False) -> TaskSpec:
    """Add a task to :data:`TASKS` (the recipes, the evaluation and the studies then accept its name).

    Args:
        name (str): the task's name.
        factory (callable): ``factory(num_envs, **kwargs) -> env`` (see :class:`TaskSpec`), e.g. a
            ``functools.partial`` of :func:`~rl3_torchrl.envs.toy_text.make_toy_text_env` or a
            :class:`~rl3_torchrl.envs.TrialEnv` builder of your own.

    Keyword Args:
        family (str, optional): the in-distribution task this one is a shift of (default: ``name`` itself).
        q_preset (str or dict): the Q estimator's preset name or keyword arguments (default ``"random_mdp"``).
        replace (bool): allow replacing a task of the same name.

    Examples:
        >>> from functools import partial
        >>> spec = register_task("small_mdp", partial(RandomMDPEnv, n_states=3, horizon=20))
        >>> make_meta_env("small_mdp", "rl3", 2).reset()["q_features"].shape
        torch.Size([2, 11])
        >>> register_task("small_mdp", RandomMDPEnv)
        Traceback (most recent call last):
        ...
        ValueError: name='small_mdp' is already a task; pass replace=True to replace it.
        >>> del TASKS["small_mdp"]
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}.")
    if name in TASKS and not replace:
        raise ValueError(f"name={name!r} is already a task; pass replace=True to replace it.")
    if not callable(factory):
        raise TypeError(f"factory must be callable (num_envs, **kwargs) -> env, got {type(factory).__name__}.")
    family = name if family is None else family
    if family != name and family not in TASKS:
        raise ValueError(f"family={family!r} is not a task; allowed: {sorted(TASKS)} or None (the task itself).")
    if isinstance(q_preset, str):
        check_choice("q_preset", q_preset, OnlineQEstimator.PRESETS)
    elif not isinstance(q_preset, dict):
        raise TypeError(f"q_preset must be a preset name of OnlineQEstimator.PRESETS or a dict, got {q_preset!r}.")
    else:
        OnlineQEstimator(**q_preset)  # fails now, with the estimator's message, rather than at the first reset
    TASKS[name] = TaskSpec(factory, family, q_preset)
    return TASKS[name]


#: The Gymnasium toy-text tasks (``pip install "rl3_torchrl[gym]"``): name -> (family object, default horizon,
#: in-distribution task). FrozenLake OOD: more holes (frozen probability 0.8 -> 0.6) on maps of the same size.
TOY_TEXT_TASKS = {
    "frozenlake_4x4": (FrozenLakeFamily(size=4, frozen_prob=0.8), 100, "frozenlake_4x4"),
    "frozenlake_4x4_holes": (FrozenLakeFamily(size=4, frozen_prob=0.6), 100, "frozenlake_4x4"),
    "frozenlake_8x8": (FrozenLakeFamily(size=8, frozen_prob=0.8), 200, "frozenlake_8x8"),
    "frozenlake_8x8_holes": (FrozenLakeFamily(size=8, frozen_prob=0.6), 200, "frozenlake_8x8"),
    "taxi": (TaxiFamily(), 200, "taxi"),
    "taxi_rainy": (TaxiFamily(rainy=True), 200, "taxi"),
}


def _builtin_tasks() -> dict[str, TaskSpec]:
    tasks = {
        "random_mdp": TaskSpec(functools.partial(RandomMDPEnv.from_preset, "default"), "random_mdp"),
        "random_mdp_ood": TaskSpec(functools.partial(RandomMDPEnv.from_preset, "ood"), "random_mdp"),
        "bandit": TaskSpec(functools.partial(RandomMDPEnv.from_preset, "bandit"), "bandit"),
        "bandit_ood": TaskSpec(functools.partial(RandomMDPEnv.from_preset, "bandit_ood"), "bandit"),
    }
    for preset in GridworldEnv.PRESETS:
        family = "gridworld_" + preset.split("_")[0]
        factory = functools.partial(GridworldEnv.from_preset, preset)
        tasks["gridworld_" + preset] = TaskSpec(factory, family, "gridworld")
    for name, (family, horizon, in_distribution) in TOY_TEXT_TASKS.items():
        q_preset = "gridworld" if isinstance(family, TaxiFamily) else "toy_text"  # Taxi: 500 states, sparse model
        tasks[name] = TaskSpec(functools.partial(make_toy_text_env, family, horizon=horizon), in_distribution, q_preset)
    return tasks


#: Every task by name: the random-MDP and bandit presets, every gridworld preset of ``GridworldEnv.PRESETS``, the
#: toy-text tasks of :data:`TOY_TEXT_TASKS`, and the tasks added by :func:`register_task`.
TASKS: dict[str, TaskSpec] = _builtin_tasks()


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
    return spec.factory(num_envs, **{k: v for k, v in kwargs.items() if v is not None})


def make_meta_env(
    task: str,
    algo: str,
    num_envs: int,
    *,
    write_q_values: bool = False,
    q_overrides: dict | None = None,
    prev_observation: bool = False,
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
        prev_observation (bool): also write ``prev_observation``, the observation of the step before
            (:class:`~rl3_torchrl.transforms.MetaRLInputs`' ``observation_key``).
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
    transforms = [MetaRLInputs(observation_key="observation" if prev_observation else None)]
    if not algorithm.q_estimator:
        if write_q_values or q_overrides:
            allowed = " or ".join(repr(name) for name, a in ALGORITHMS.items() if a.q_estimator)
            raise ValueError(f"write_q_values and q_overrides need algo={allowed}, got algo={algo!r}.")
    else:
        q_preset = spec.q_preset
        if algorithm.coarse:
            if not task.startswith("gridworld"):
                raise ValueError(f"algo={algo!r} needs a gridworld task (a state abstraction), got task={task!r}.")
            q_preset = "gridworld_coarse"
        settings = OnlineQEstimator.PRESETS[q_preset] if isinstance(q_preset, str) else q_preset
        transforms.append(OnlineQEstimator(**{**settings, "write_q_values": write_q_values, **(q_overrides or {})}))
    transforms.append(InitTracker())
    return TransformedEnv(make_task_env(task, num_envs, **env_kwargs), Compose(*transforms))


for _module in filter(None, os.environ.get("RL3_TASKS", "").split(",")):
    importlib.import_module(_module.strip())  # user modules that call register_task
