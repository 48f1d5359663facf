"""Exact finite-horizon solutions of meta-episodes with inner-episode restarts.

The meta-episode is an ``H``-step finite-horizon problem on the augmented state ``(s, τ)``: ``τ`` counts the steps
of the current inner episode. A transition that enters a terminal state, or that completes ``episode_length``
steps, continues from ``(start_state, 0)``. Backward induction on that augmented MDP gives the optimal expected
return of an agent that knows the task (the normaliser of every evaluation), and the same recursion with the
uniform policy gives the exact value of acting at random.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase

from rl3_torchrl._validation import check_choice, check_int

_TASK_KEYS = ("transition", "reward", "terminal", "start_state", "episode_length")


def _as_tasks(env_or_tasks) -> TensorDictBase:
    tasks = env_or_tasks.task_mdp() if hasattr(env_or_tasks, "task_mdp") else env_or_tasks
    missing = [key for key in _TASK_KEYS if key not in tasks.keys()]
    if missing:
        raise ValueError(f"env_or_tasks lacks the task keys {missing}; expected {list(_TASK_KEYS)} (see task_mdp()).")
    return tasks


def _default_horizon(env_or_tasks, horizon):
    if horizon is None:
        if not hasattr(env_or_tasks, "horizon"):
            raise ValueError("horizon=None needs an env with a `horizon` attribute; pass horizon=H for task tensors.")
        horizon = env_or_tasks.horizon
    return check_int("horizon", horizon, low=1)


def finite_horizon_values(
    tasks: TensorDictBase, horizon: int, policy: str = "optimal", all_steps: bool = False
) -> torch.Tensor:
    """Backward induction over ``horizon`` steps: the value of every ``(s, τ)`` with ``horizon`` steps to go.

    Args:
        tasks (TensorDictBase): as returned by :meth:`~rl3_torchrl.envs.MetaTaskEnv.task_mdp`.
        horizon (int): the number of steps.
        policy (str): ``"optimal"`` (max over actions) or ``"random"`` (mean over actions).
        all_steps (bool): return the values for every number of steps to go, not only ``horizon``.

    Returns:
        a float64 tensor ``[B, S, T]`` of expected returns from state ``s`` at inner step ``τ`` (``T = 1`` when
        inner episodes have no time limit); with ``all_steps``, ``[horizon + 1, B, S, T]`` indexed by the
        number of steps to go.

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = RandomMDPEnv(num_envs=2, horizon=30)
        >>> _ = env.reset()
        >>> finite_horizon_values(env.task_mdp(), 30).shape
        torch.Size([2, 10, 10])
    """
    check_choice("policy", policy, ("optimal", "random"))
    reduce = _max_over_actions if policy == "optimal" else _mean_over_actions
    values = [reduce(q) for q in _backward_induction(tasks, check_int("horizon", horizon, low=1), reduce)]
    if all_steps:
        return torch.stack([torch.zeros_like(values[0])] + values)
    return values[-1]


def optimal_actions(tasks: TensorDictBase, horizon: int) -> torch.Tensor:
    """The optimal action of every ``(steps to go, s, τ)``: int64 ``[horizon, B, S, T]``.

    ``actions[h - 1, b, s, τ]`` is optimal with ``h`` steps to go (ties go to the lowest action index).

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = RandomMDPEnv(num_envs=2, horizon=5)
        >>> _ = env.reset()
        >>> optimal_actions(env.task_mdp(), 5).shape
        torch.Size([5, 2, 10, 10])
    """
    steps = _backward_induction(tasks, check_int("horizon", horizon, low=1), _max_over_actions)
    return torch.stack([q.argmax(2) for q in steps])


def _max_over_actions(q):
    return q.amax(2)


def _mean_over_actions(q):
    return q.mean(2)


def _backward_induction(tasks: TensorDictBase, horizon: int, reduce):
    """Yield ``Q [B, S, A, T]`` with 1, 2, …, ``horizon`` steps to go, where the value of the steps after the
    first is ``reduce(Q)`` over actions (the max: optimal; the mean: uniformly random)."""
    transition, reward = tasks["transition"], tasks["reward"]
    B, S, A, _ = transition.shape
    limits = tasks["episode_length"]
    limit = int(limits.max())
    if bool((limits != limit).any()):
        raise ValueError(f"all tasks must share one episode_length, got {sorted(set(limits.tolist()))}.")
    T = max(limit, 1)
    dtype = torch.float64
    transition = transition.to(dtype).reshape(B, S * A, S)
    reward = reward.to(dtype).reshape(B, S * A, 1)
    # restart[b, s', τ]: moving into s' from inner step τ ends the inner episode (terminal s' or time limit).
    restart = tasks["terminal"].view(B, S, 1)
    if limit:
        restart = restart | (torch.arange(T, device=transition.device) == T - 1).view(1, 1, T)
    start = tasks["start_state"].view(B, 1, 1).expand(B, 1, T)
    v = torch.zeros(B, S, T, dtype=dtype, device=transition.device)
    for _ in range(horizon):
        carried = torch.cat([v[..., 1:], v[..., :1]], dim=-1) if T > 1 else v  # V(s', τ + 1)
        restarted = v.gather(1, start)[:, :, :1].expand(B, S, T)  # V(start, 0)
        after = torch.where(restart, restarted, carried)
        q = (reward + torch.bmm(transition, after)).view(B, S, A, T)
        yield q
        v = reduce(q)


def oracle_return(env_or_tasks, horizon: int | None = None) -> torch.Tensor:
    """The exact expected ``H``-step return of the optimal policy that knows each task.

    Args:
        env_or_tasks: a :class:`~rl3_torchrl.envs.MetaTaskEnv` (its current tasks) or the TensorDict of
            :meth:`~rl3_torchrl.envs.MetaTaskEnv.task_mdp`.
        horizon (int, optional): ``H``; defaults to the env's ``horizon``.

    Returns:
        a float64 tensor ``[B]``: the optimal expected undiscounted return of each task's meta-episode.

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = RandomMDPEnv(num_envs=4, horizon=100, seed=0)
        >>> _ = env.reset()
        >>> bool((oracle_return(env) >= random_policy_return(env)).all())
        True
    """
    return _start_value(env_or_tasks, horizon, "optimal")


def random_policy_return(env_or_tasks, horizon: int | None = None) -> torch.Tensor:
    """The exact expected ``H``-step return of the uniformly random policy (same arguments as
    :func:`oracle_return`).

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = RandomMDPEnv.from_preset("bandit", num_envs=3)
        >>> _ = env.reset()
        >>> random_policy_return(env).shape
        torch.Size([3])
    """
    return _start_value(env_or_tasks, horizon, "random")


def _start_value(env_or_tasks, horizon, policy):
    horizon = _default_horizon(env_or_tasks, horizon)
    tasks = _as_tasks(env_or_tasks)
    final = finite_horizon_values(tasks, horizon, policy)
    start = tasks["start_state"].view(-1, 1)
    return final[:, :, 0].gather(1, start).squeeze(1)
