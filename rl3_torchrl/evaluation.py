"""Evaluation of meta-RL policies on held-out tasks, against the exact oracle.

Every method is run on the same held-out tasks: the env's ``split="test"`` task stream with a fixed seed, drawn in
the same chunks, does not depend on the policy. For each task the undiscounted meta-episode return is divided by
the task's exact optimal return (:func:`~rl3_torchrl.envs.oracle_return`); results are means with standard errors
over tasks, plus the mean return of each inner episode and, on gridworlds, the fraction of inner episodes that
reach the goal.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rl3_torchrl._validation import check_choice, check_float, check_int
from rl3_torchrl.envs import GridworldEnv, oracle_return
from rl3_torchrl.envs.gridworld_generator import ENTRY_REWARDS, GOAL
from rl3_torchrl.modules.bayesian import (
    ModelBasedPolicy,
    PosteriorMeanPlanner,
    PosteriorSamplingPlanner,
    TaskPrior,
    UCRL2Planner,
)
from rl3_torchrl.modules.tabular import OraclePolicy, QGreedyPolicy, RandomPolicy
from rl3_torchrl.tasks import make_meta_env, make_task_env


@dataclass(frozen=True)
class Baseline:
    """One row of :data:`BASELINE_REGISTRY`: how to build a baseline's policy and its tuned hyper-parameters.

    Args:
        summary (str): one line for ``--help`` and the docs.
        make (callable): ``(env, seed, **params) -> policy``, called after every reset of the evaluation env.
        params (dict): the hyper-parameters and their defaults (every accepted name).
        check (callable): ``(base_env, **params) -> None``; raises ``ValueError`` on bad input, before any work.
        algo (str): the env pipeline (``"rl2"``, or ``"rl3"`` for methods acting on the online ``q_values``).
        q_overrides (callable, optional): ``params -> dict`` of :class:`~rl3_torchrl.transforms.OnlineQEstimator`
            arguments (``"rl3"`` methods only).

    Examples:
        >>> BASELINE_REGISTRY["psrl"].algo, BASELINE_REGISTRY["ucrl2"].params
        ('rl2', {'delta': 0.05, 'scale': 0.03})
    """

    summary: str
    make: Callable
    params: dict = field(default_factory=dict)
    check: Callable = lambda env, **params: None
    algo: str = "rl2"
    q_overrides: Callable | None = None


def _base(env):
    return getattr(env, "base_env", env)


def _check_epsilon(epsilon):
    check_float("epsilon", epsilon, low=0.0, high=1.0)


def _model_based(planner_cls, summary, epsilon=None, **defaults):
    """A registry row for a :class:`~rl3_torchrl.modules.bayesian.ModelBasedPolicy` with ``planner_cls``."""
    params = dict(defaults) if epsilon is None else {"epsilon": epsilon, **defaults}

    def split(params):
        return params.pop("epsilon", 0.0), params

    def check(env, **params):
        epsilon, params = split(dict(params))
        _check_epsilon(epsilon)
        planner_cls(**params)
        TaskPrior.from_env(env)

    def make(env, seed, **params):
        epsilon, params = split(dict(params))
        return ModelBasedPolicy.from_env(env, planner_cls(**params), epsilon=epsilon, seed=seed)

    return Baseline(summary, make, params, check)


#: The baselines, one row each (adding a method is one row here). The ``*_q`` rows act on RL³'s own online-Q
#: features (the ``OnlineQEstimator`` of the ``"rl3"`` pipeline); ``psrl``, ``opsrl``, ``ucrl2``, ``beb``,
#: ``eps_greedy`` and ``greedy`` are the model-based agents of Duan et al. (2016), whose defaults were tuned on
#: *training* tasks by ``benchmarks/tune_baselines.py`` (see docs/baselines.rst).
BASELINE_REGISTRY: dict[str, Baseline] = {
    "random": Baseline("uniformly random actions", lambda env, seed: RandomPolicy(_base(env).n_actions, seed=seed)),
    "oracle": Baseline("the optimal policy of the true task (the normaliser)", lambda env, seed: OraclePolicy.from_env(env)),
    "greedy_q": Baseline(
        "greedy on RL³'s own online Q estimate (OnlineQEstimator q_values)",
        lambda env, seed: QGreedyPolicy(0.0, seed=seed),
        algo="rl3",
    ),
    "eps_greedy_q": Baseline(
        "ε-greedy on RL³'s own online Q estimate",
        lambda env, seed, epsilon: QGreedyPolicy(epsilon, seed=seed),
        {"epsilon": 0.1},
        lambda env, epsilon: _check_epsilon(epsilon),
        algo="rl3",
    ),
    "mbie_eb": Baseline(
        "greedy on RL³'s own online Q with the MBIE-EB bonus beta / sqrt(N(s, a))",
        lambda env, seed, beta: QGreedyPolicy(0.0, seed=seed),
        {"beta": 1.0},
        lambda env, beta: check_float("beta", beta, low=0.0),
        algo="rl3",
        q_overrides=lambda params: {"exploration_bonus": params["beta"]},
    ),
    "psrl": _model_based(PosteriorSamplingPlanner, "posterior sampling: one task sampled per inner episode"),
    "opsrl": _model_based(
        PosteriorSamplingPlanner, "optimistic PSRL: the best of num_samples posterior samples", num_samples=4
    ),
    "ucrl2": _model_based(UCRL2Planner, "UCRL2: extended value iteration on confidence sets", delta=0.05, scale=0.03),
    "beb": _model_based(PosteriorMeanPlanner, "BEB: posterior mean plus beta / (1 + N(s, a))", beta=1.0,
                        estimate="posterior"),
    "eps_greedy": _model_based(PosteriorMeanPlanner, "ε-greedy on the posterior-mean model", epsilon=0.01,
                               estimate="posterior"),
    "greedy": _model_based(PosteriorMeanPlanner, "greedy on the posterior-mean model (certainty equivalence)",
                           estimate="posterior"),
}
#: The names of :data:`BASELINE_REGISTRY`.
BASELINES = tuple(BASELINE_REGISTRY)


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """The mean of ``values`` and its standard error ``std / sqrt(n)`` (0 for a single value).

    Examples:
        >>> mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        (2.5, 0.6454972243679028)
    """
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("mean_and_stderr needs at least one value.")
    stderr = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return float(values.mean()), stderr


def inner_episode_returns(rewards: torch.Tensor, inner_done: torch.Tensor, max_episodes: int) -> torch.Tensor:
    """Sum the rewards of each inner episode: ``[B, max_episodes]`` (NaN for episodes a task did not start).

    Args:
        rewards (Tensor): ``[B, H]``.
        inner_done (Tensor): bool ``[B, H]``, True at the last step of each inner episode.
        max_episodes (int): the number of columns.

    Examples:
        >>> r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> inner_episode_returns(r, torch.tensor([[False, True, False, True]]), 3)
        tensor([[3., 7., nan]])
    """
    B, H = rewards.shape
    index = torch.cat([torch.zeros_like(inner_done[:, :1]), inner_done[:, :-1]], 1).long().cumsum(1)
    keep = index < max_episodes
    out = torch.zeros(B, max_episodes, dtype=rewards.dtype, device=rewards.device)
    out.scatter_add_(1, index.clamp_max(max_episodes - 1), torch.where(keep, rewards, 0.0))
    started = torch.arange(max_episodes, device=rewards.device) <= index[:, -1:]  # index never decreases
    return torch.where(started, out, torch.nan)


def inner_episode_goals(rewards: torch.Tensor, inner_done: torch.Tensor, goal_reward: float):
    """Per task, the inner episodes that ended on a step paying ``goal_reward`` (on gridworlds: at the goal) and the
    inner episodes started; one still running at the last step counts as started, not as reaching the goal.

    Returns:
        ``(reached [B], started [B])`` long.

    Examples:
        >>> r = torch.tensor([[-1.0, 100.0, -1.0, -100.0, -1.0], [-1.0] * 5])
        >>> done = torch.tensor([[False, True, False, True, False], [False] * 5])
        >>> inner_episode_goals(r, done, 100.0)  # 1 goal in 3 inner episodes; none in 1
        (tensor([1, 0]), tensor([3, 1]))
    """
    reached = ((rewards == goal_reward) & inner_done).sum(1)
    return reached, inner_done.sum(1) + (~inner_done[:, -1]).long()


def run_meta_episodes(env, make_policy: Callable, *, greedy: bool = False):
    """Reset ``env`` (new tasks) and play one whole meta-episode in every row.

    Args:
        env (TransformedEnv): a meta env (e.g. from :func:`~rl3_torchrl.tasks.make_meta_env`).
        make_policy (callable): ``env -> policy``, called after the reset, so that a policy can be built from the
            tasks (e.g. :meth:`OraclePolicy.from_env`); the policy is a TensorDict callable writing ``"action"``.
        greedy (bool): deterministic actions (the mode) for probabilistic actors.

    Returns:
        ``(rewards [B, H], inner_done [B, H], oracle [B])``.

    Examples:
        >>> env = make_meta_env("bandit", "rl2", 3, horizon=10)
        >>> rewards, inner_done, oracle = run_meta_episodes(env, OraclePolicy.from_env)
        >>> rewards.shape, bool(inner_done.all())
        (torch.Size([3, 10]), True)
    """
    base = env.base_env
    td = env.reset()
    oracle = oracle_return(base)
    policy = make_policy(env)
    H = base.horizon
    rewards = torch.zeros(*base.batch_size, H, device=base.device)
    inner_done = torch.zeros(*base.batch_size, H, dtype=torch.bool, device=base.device)
    mode = ExplorationType.DETERMINISTIC if greedy else ExplorationType.RANDOM
    with torch.no_grad(), set_exploration_type(mode):
        for t in range(H):
            td = policy(td)
            td, td_next = env.step_and_maybe_reset(td)
            rewards[:, t] = td["next", "reward"].squeeze(-1)
            inner_done[:, t] = td["next", "inner_done"].squeeze(-1)
            td = td_next
    return rewards, inner_done, oracle


def evaluate(
    make_policy: Callable,
    task: str,
    algo: str = "rl3",
    *,
    horizon: int | None = None,
    num_tasks: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    split: str = "test",
    greedy: bool = False,
    device=None,
    write_q_values: bool = False,
    q_overrides: dict | None = None,
    prev_observation: bool = False,
    max_inner_episodes: int = 0,
) -> dict:
    """Evaluate a policy on ``num_tasks`` held-out tasks of ``task``.

    Args:
        make_policy (callable): ``env -> policy``, called once per chunk of tasks after the reset.
        task (str): a task name (:data:`~rl3_torchrl.tasks.TASKS`).
        algo (str): the input pipeline of the env (``"rl2"``, ``"rl3"``, ``"rl3_coarse"``).

    Keyword Args:
        horizon (int, optional): ``H`` (default: the task's).
        num_tasks (int): held-out tasks (default 1000), run ``batch_size`` at a time.
        seed (int): the seed of the test task stream (the same for every method) and of the actions that learned
            policies sample (in a forked RNG: the caller's torch RNG is left as it was).
        split (str): ``"test"`` (held-out tasks, the default) or ``"train"`` (for tuning hyper-parameters).
        greedy (bool): deterministic actions of learned policies (their distribution's mode).
        write_q_values, q_overrides, prev_observation: passed to :func:`~rl3_torchrl.tasks.make_meta_env`.
        max_inner_episodes (int): columns of the per-inner-episode curve (0: none).

    Returns:
        a dict with ``return_mean``, ``return_stderr``, ``normalized_mean``, ``normalized_stderr``,
        ``oracle_mean``, ``num_tasks``, ``horizon``, ``inner_episode_returns`` (mean over tasks, a list) and, on
        gridworlds, ``goal_rate``: the fraction of all inner episodes started that reached the goal
        (:func:`inner_episode_goals`, pooled over tasks).

    Examples:
        >>> result = evaluate(lambda env: RandomPolicy(5, seed=0), "random_mdp", horizon=20, num_tasks=8)
        >>> 0 < result["normalized_mean"] < 1
        True
    """
    num_tasks = check_int("num_tasks", num_tasks, low=1)
    batch_size = min(check_int("batch_size", batch_size, low=1), num_tasks)
    env = make_meta_env(
        task,
        algo,
        batch_size,
        horizon=horizon,
        seed=seed,
        split=split,
        device=device,
        write_q_values=write_q_values,
        q_overrides=q_overrides,
        prev_observation=prev_observation,
    )
    goal_reward = ENTRY_REWARDS[GOAL] if isinstance(env.base_env, GridworldEnv) else None
    returns, normalized, oracles, curves, goals = [], [], [], [], []
    for start in range(0, num_tasks, batch_size):
        with torch.random.fork_rng(devices=[env.device] if getattr(env.device, "type", None) == "cuda" else []):
            torch.manual_seed(seed + start)  # sampled actions: the same for every call, the caller's RNG untouched
            rewards, inner_done, oracle = run_meta_episodes(env, make_policy, greedy=greedy)
        n = min(batch_size, num_tasks - start)
        total = rewards[:n].sum(1).double()
        returns.append(total)
        oracles.append(oracle[:n])
        normalized.append(total / oracle[:n].to(total))
        if max_inner_episodes:
            curves.append(inner_episode_returns(rewards[:n], inner_done[:n], max_inner_episodes))
        if goal_reward is not None:
            goals.append(torch.stack(inner_episode_goals(rewards[:n], inner_done[:n], goal_reward)).sum(1))
    returns, normalized = torch.cat(returns), torch.cat(normalized)
    result = {"num_tasks": num_tasks, "horizon": env.base_env.horizon}
    result["return_mean"], result["return_stderr"] = mean_and_stderr(returns)
    result["normalized_mean"], result["normalized_stderr"] = mean_and_stderr(normalized)
    result["oracle_mean"] = float(torch.cat(oracles).mean())
    if curves:
        result["inner_episode_returns"] = torch.cat(curves).nanmean(0).tolist()
    if goals:
        reached, started = torch.stack(goals).sum(0).tolist()
        result["goal_rate"] = reached / started
    return result


def baseline_policy(name: str, env, *, seed: int = 0, **params) -> Callable:
    """``env -> policy`` for a baseline of :data:`BASELINE_REGISTRY`, its hyper-parameters checked first.

    Args:
        name (str): a name of :data:`BASELINES`.
        env: an env of the task the policy will run on (its family decides whether the method applies).

    Keyword Args:
        seed (int): seeds the policy's private generator.
        **params: hyper-parameters of the method (see ``BASELINE_REGISTRY[name].params``); defaults otherwise.

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = RandomMDPEnv(2, horizon=5); _ = env.reset()
        >>> type(baseline_policy("oracle", env)(env)).__name__
        'OraclePolicy'
        >>> baseline_policy("beb", env, beta=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: method='beb': beta=-1.0 is out of range; allowed: [0.0, inf].
    """
    spec = BASELINE_REGISTRY[check_choice("method", name, BASELINES)]
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(
            f"method={name!r} takes no hyper-parameter {unknown[0]}={params[unknown[0]]!r}; "
            f"allowed: {sorted(spec.params) or 'none'}."
        )
    params = {**spec.params, **params}
    try:
        spec.check(_base(env), **params)
    except ValueError as error:
        raise ValueError(f"method={name!r}: {error}") from None
    return lambda env: spec.make(env, seed, **params)


def evaluate_baseline(name: str, task: str, *, params: dict | None = None, **kwargs) -> dict:
    """:func:`evaluate` a baseline of :data:`BASELINE_REGISTRY` on ``task``.

    Args:
        name (str): a name of :data:`BASELINES` (``*_q`` methods act on RL³'s online ``q_values``; ``psrl``,
            ``opsrl``, ``ucrl2``, ``beb``, ``eps_greedy``, ``greedy`` are the model-based agents of
            :mod:`rl3_torchrl.modules.bayesian`, random-MDP and bandit tasks only).
        task (str): a task name.

    Keyword Args:
        params (dict, optional): hyper-parameters overriding the registry's tuned defaults.
        **kwargs: passed to :func:`evaluate` (``horizon``, ``num_tasks``, ``seed``, ``device``, ``split``, …).

    Examples:
        >>> evaluate_baseline("oracle", "bandit", horizon=10, num_tasks=4)["normalized_mean"] > 0.5
        True
        >>> evaluate_baseline("psrl", "bandit", horizon=10, num_tasks=4)["num_tasks"]
        4
    """
    check_choice("method", name, BASELINES)
    spec = BASELINE_REGISTRY[name]
    probe = make_task_env(task, 1, horizon=kwargs.get("horizon"))
    make_policy = baseline_policy(name, probe, seed=kwargs.get("seed", 0), **(params or {}))
    resolved = {**spec.params, **(params or {})}
    return evaluate(
        make_policy,
        task,
        spec.algo,
        write_q_values=spec.algo != "rl2",
        q_overrides=spec.q_overrides(resolved) if spec.q_overrides else None,
        **kwargs,
    )


def evaluate_actor(actor, task: str, algo: str, **kwargs) -> dict:
    """:func:`evaluate` a learned actor (its KV cache is cleared by the reset, through ``is_init``).

    The env writes ``prev_observation`` when the actor reads it (``model.prev_observation`` of the recipes).

    Examples:
        >>> from rl3_torchrl.modules import make_actor_critic
        >>> actor, _ = make_actor_critic(make_meta_env("bandit", "rl3", 1, horizon=5), "rl3", d_model=8,
        ...                              hidden_sizes=[8], ffn_dim=8, num_heads=2, num_layers=1)
        >>> evaluate_actor(actor, "bandit", "rl3", horizon=5, num_tasks=3)["num_tasks"]
        3
    """
    kwargs.setdefault("prev_observation", "prev_observation" in getattr(actor, "in_keys", ()))
    return evaluate(lambda env: actor, task, algo, **kwargs)


def return_vs_horizon(
    methods: dict[str, Callable[..., dict]],
    tasks: Sequence[str],
    horizons: Sequence[int],
    *,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``methods[name](task=..., horizon=...)`` for every task and horizon; returns one row per run.

    Keyword Args:
        on_row (callable, optional): called with each row as soon as it is finished (e.g. to append it to a file,
            so that a later failure loses nothing).

    Examples:
        >>> from functools import partial
        >>> rows = return_vs_horizon({"oracle": partial(evaluate_baseline, "oracle", num_tasks=2)},
        ...                          ["bandit", "bandit_ood"], [5, 10], on_row=lambda row: print(row["horizon"]))
        5
        10
        5
        10
        >>> [(r["task"], r["horizon"]) for r in rows]
        [('bandit', 5), ('bandit', 10), ('bandit_ood', 5), ('bandit_ood', 10)]
    """
    rows = []
    for name, run in methods.items():
        for task in tasks:
            for horizon in horizons:
                rows.append({"method": name, "task": task, **run(task=task, horizon=horizon)})
                if on_row is not None:
                    on_row(rows[-1])
    return rows


def value_map_episode(task: str = "gridworld_13x13", *, policy=None, algo: str = "rl3", horizon=None,
                      seed: int = 0) -> dict:
    """Play one meta-episode on a held-out gridworld and record what :func:`~rl3_torchrl.plotting.plot_value_map`
    draws: ``{"task", "tiles", "states", "values", "return", "oracle"}`` (the grid, the states visited, the online
    Q estimator's state values after the last step, the return and the oracle's).

    Args:
        task (str): a gridworld task name.

    Keyword Args:
        policy: a TensorDict policy for an env with ``algo``'s inputs (e.g. a trained RL³ actor); default: the
            greedy tabular policy on the estimator's own ``q_values``.
        algo (str): ``"rl3"`` or ``"rl3_coarse"``.
        horizon (int, optional): ``H`` (default: the task's).
        seed (int): the test task stream's seed.

    Examples:
        >>> episode = value_map_episode("gridworld_11x11", horizon=30)
        >>> len(episode["states"]), episode["tiles"].shape, episode["values"].shape  # a value per state
        (30, torch.Size([11, 11]), torch.Size([121]))
    """
    from rl3_torchrl.transforms import OnlineQEstimator

    if not task.startswith("gridworld"):
        raise ValueError(f"value_map_episode needs a gridworld task, got task={task!r}.")
    env = make_meta_env(task, algo, 1, horizon=horizon, seed=seed, split="test", write_q_values=policy is None)
    estimator = next(t for t in env.transform if isinstance(t, OnlineQEstimator))
    act = policy or QGreedyPolicy(0.0, seed=seed)
    seen = {"states": []}

    def record(td):
        # the env draws a new task right after the last step: keep this task's grid and latest estimates
        if not seen["states"]:
            seen["tiles"] = env.base_env.tiles()[0].clone()
        seen["states"].append(int(td["state"][0]))
        seen["values"] = estimator.value_map()[0].clone()
        return act(td)

    rewards, _, oracle = run_meta_episodes(env, lambda env: record)
    return {**seen, "task": task, "return": float(rewards.sum()), "oracle": float(oracle[0])}

