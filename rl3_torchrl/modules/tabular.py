"""Baseline policies for meta-episodes: uniform random, the task-aware oracle, and tabular RL on the online Q.

Each is a :class:`~tensordict.nn.TensorDictModuleBase` that writes ``"action"`` (int64 ``[*B]``), so it runs in
``env.rollout`` or a collector exactly like the learned actors.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from rl3_torchrl._validation import check_float, check_int
from rl3_torchrl.envs.oracle import optimal_actions


def _generator(seed, device):
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


class RandomPolicy(TensorDictModuleBase):
    """Uniformly random actions.

    Args:
        n_actions (int): the number of actions.

    Keyword Args:
        seed (int, optional): seeds a private generator (default: the global one).
        device: where the generator lives.

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = RandomMDPEnv(num_envs=3, horizon=10)
        >>> env.rollout(10, RandomPolicy(env.n_actions, seed=0))["action"].shape
        torch.Size([3, 10])
    """

    def __init__(self, n_actions: int, *, seed: int | None = None, device=None):
        super().__init__()
        self.n_actions = check_int("n_actions", n_actions, low=1)
        self.in_keys, self.out_keys = ["state"], ["action"]
        self._rng = _generator(seed, device)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        shape, device = tensordict.batch_size, tensordict.device
        tensordict.set("action", torch.randint(self.n_actions, shape, generator=self._rng, device=device))
        return tensordict


class QGreedyPolicy(TensorDictModuleBase):
    """ε-greedy actions on the online ``q_values`` (certainty equivalence), ties broken at random.

    With ``OnlineQEstimator(..., exploration_bonus=β)`` the values are optimistic and the greedy policy is
    MBIE-EB; with ``epsilon=0`` on the plain estimate it is pure certainty equivalence.

    Args:
        epsilon (float): the probability of a uniformly random action, in ``[0, 1]``.

    Keyword Args:
        q_values_key (NestedKey): where the Q estimates are (``"q_values"``, written by
            ``OnlineQEstimator(write_q_values=True)``).
        seed (int, optional): seeds a private generator.
        device: where the generator lives.

    Examples:
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"q_values": torch.tensor([[0.0, 2.0, 1.0]])}, batch_size=[1])
        >>> QGreedyPolicy(0.0)(td)["action"]
        tensor([1])
    """

    def __init__(self, epsilon: float = 0.0, *, q_values_key="q_values", seed: int | None = None, device=None):
        super().__init__()
        self.epsilon = check_float("epsilon", epsilon, low=0.0, high=1.0)
        self.q_values_key = q_values_key
        self.in_keys, self.out_keys = [q_values_key], ["action"]
        self._rng = _generator(seed, device)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.q_values_key not in tensordict.keys(True):
            raise KeyError(
                f"QGreedyPolicy needs {self.q_values_key!r}: add OnlineQEstimator(write_q_values=True) to the env."
            )
        q = tensordict.get(self.q_values_key)
        noise = torch.rand(q.shape, generator=self._rng, device=q.device)
        best = q == q.amax(-1, keepdim=True)
        greedy = torch.where(best, noise, -1.0).argmax(-1)  # a uniformly random maximiser
        explore = torch.rand(q.shape[:-1], generator=self._rng, device=q.device) < self.epsilon
        uniform = torch.randint(q.shape[-1], q.shape[:-1], generator=self._rng, device=q.device)
        tensordict.set("action", torch.where(explore, uniform, greedy))
        return tensordict


class OraclePolicy(TensorDictModuleBase):
    """The exact optimal policy of known tasks (the finite-horizon DP of :func:`~rl3_torchrl.envs.oracle_return`).

    It reads the current ``state``, ``meta_step`` (``t/H``) and ``episode_step`` (``τ/T``) and plays the optimal
    action with ``H − t`` steps to go.

    Args:
        tasks (TensorDictBase): the tasks of the env's rows (:meth:`~rl3_torchrl.envs.MetaTaskEnv.task_mdp`).
        horizon (int): ``H``.

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv, oracle_return
        >>> env = RandomMDPEnv(num_envs=2, horizon=10)
        >>> _ = env.reset()
        >>> policy = OraclePolicy.from_env(env)
        >>> policy.actions.shape
        torch.Size([10, 2, 10, 10])
    """

    def __init__(self, tasks: TensorDictBase, horizon: int):
        super().__init__()
        self.horizon = check_int("horizon", horizon, low=1)
        self.in_keys, self.out_keys = ["state", "meta_step", "episode_step"], ["action"]
        self.actions = optimal_actions(tasks, horizon)
        limit = int(tasks["episode_length"].max())
        self.episode_norm = limit if limit else horizon  # τ is reported as τ / episode_length, or τ / H

    @classmethod
    def from_env(cls, env) -> "OraclePolicy":
        """The oracle of an env's current tasks (call it after ``env.reset()``)."""
        base = getattr(env, "base_env", env)
        return cls(base.task_mdp(), base.horizon)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        state = tensordict.get("state")
        t = (tensordict.get("meta_step").squeeze(-1) * self.horizon).round().long()
        tau = (tensordict.get("episode_step").squeeze(-1) * self.episode_norm).round().long()
        tau = tau.clamp_max(self.actions.shape[-1] - 1)  # no time limit: one τ slot
        rows = torch.arange(state.shape[0], device=state.device)
        tensordict.set("action", self.actions[self.horizon - 1 - t, rows, state, tau])
        return tensordict
