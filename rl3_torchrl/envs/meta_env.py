"""The meta-episode machinery shared by every task family.

A :class:`MetaTaskEnv` holds ``B`` tasks (one per batch row). The **meta-episode is the torchrl episode**: ``done``
and ``terminated`` are set after ``horizon`` steps, and a reset draws a new task for the rows being reset. Inner
episodes end and restart *inside* the env (at a terminal state, or after ``episode_length`` steps); the step
reports it as data, together with the state actually reached before the restart, so that a model of the task can
record true transitions while the policy sees the restart state.

Subclasses describe one task family through four hooks: ``_sample_tasks(mask)`` (draw task parameters for the
masked rows), ``_advance(state, action)`` (one transition of the true dynamics), ``_observe(state)`` (the
observation of a state) and ``_task_tensors()`` (the exact tabular model, for :meth:`MetaTaskEnv.task_mdp`).
"""
from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from rl3_torchrl._validation import check_choice, check_int

SPLITS = ("train", "test")
#: The largest seed: seeds are 64-bit (a larger one would silently wrap onto a smaller one's tasks).
MAX_SEED = 2**64 - 1

# Keys written by every meta-task env, besides "observation", "reward" and the done keys.
STATE_KEY = "state"
META_STEP_KEY = "meta_step"
EPISODE_STEP_KEY = "episode_step"
INNER_DONE_KEY = "inner_done"
INNER_TERMINATED_KEY = "inner_terminated"
REACHED_STATE_KEY = "reached_state"


def stream_seed(seed: int, split: str, stream: str) -> int:
    """A 63-bit generator seed for one named random stream of one split.

    Train and test streams of the same ``seed`` come from different entropy pools (numpy's ``SeedSequence``), so
    held-out tasks never repeat the training stream.

    Examples:
        >>> stream_seed(0, "train", "tasks") != stream_seed(0, "test", "tasks")
        True
    """
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, SPLITS.index(split), sum(map(ord, stream))]
    hi, lo = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)


def _set_trial_settings(env: EnvBase, horizon, episode_length, split, validate_actions) -> None:
    """Check and set the settings every meta-episode env takes (:class:`MetaTaskEnv` and
    :class:`~rl3_torchrl.envs.TrialEnv`): ``horizon``, ``episode_length`` (or ``None``), ``split`` and
    ``validate_actions`` (``None``: on where the env's device is the CPU, where the checks cost no device sync).

    Examples:
        >>> from types import SimpleNamespace
        >>> env = SimpleNamespace(device=torch.device("cpu"))
        >>> _set_trial_settings(env, 8, None, "test", None)
        >>> env.horizon, env.episode_length, env.split, env.validate_actions
        (8, None, 'test', True)
    """
    env.horizon = check_int("horizon", horizon, low=1)
    env.episode_length = None if episode_length is None else check_int("episode_length", episode_length, low=1)
    env.split = check_choice("split", split, SPLITS)
    if validate_actions is None:
        validate_actions = env.device is None or env.device.type == "cpu"
    env.validate_actions = bool(validate_actions)


def _trial_entries(meta_t, episode_t, horizon: int, episode_length: int | None, inner_done, inner_terminated,
                  done) -> dict:
    """The entries every meta-episode env writes beside its observations (:class:`MetaTaskEnv` and
    :class:`~rl3_torchrl.envs.TrialEnv`): ``meta_step`` (``t / H``), ``episode_step`` (``τ / T``, ``T`` the inner
    episode limit or ``H``), the inner-episode flags and ``done``/``terminated`` (at ``t = H``, never truncated).

    Examples:
        >>> flags = torch.tensor([[False], [True]])
        >>> out = _trial_entries(torch.tensor([2, 4]), torch.tensor([1, 0]), 4, None, flags, flags, flags)
        >>> out["meta_step"].flatten().tolist(), out["episode_step"].flatten().tolist(), out["truncated"].any().item()
        ([0.5, 1.0], [0.25, 0.0], False)
    """
    episode_norm = horizon if episode_length is None else episode_length
    return {
        META_STEP_KEY: (meta_t.to(torch.float32) / horizon).unsqueeze(-1),
        EPISODE_STEP_KEY: (episode_t.to(torch.float32) / episode_norm).unsqueeze(-1),
        INNER_DONE_KEY: inner_done,
        INNER_TERMINATED_KEY: inner_terminated,
        "done": done,
        "terminated": done.clone(),
        "truncated": torch.zeros_like(done),
    }


class MetaTaskEnv(EnvBase):
    """Base class of batched meta-RL task families (one task per batch row).

    Args:
        num_envs (int): the number of tasks held at once (the env's ``batch_size`` is ``[num_envs]``).
        n_states (int): the number of states of each task.
        n_actions (int): the number of actions.
        horizon (int): ``H``, the meta-episode length in steps.
        episode_length (int or None): inner episodes are cut after this many steps; ``None`` means they end only
            at terminal states.
        observation_dim (int): the size of the ``observation`` vector.

    Keyword Args:
        split (str): ``"train"`` or ``"test"``; the two draw tasks from disjoint random streams.
        seed (int): the seed of the task and dynamics streams.
        validate_actions (bool, optional): check every action's dtype, shape and range. These checks are one host
            sync per step on an accelerator, so the default (``None``) checks on CPU only. ``False`` is unsafe with
            untrusted actions: an out-of-range action then silently reads the dynamics of another (state, action)
            row instead of failing; pass ``True`` while debugging on an accelerator. A step of a row that already
            took ``horizon`` steps without a reset raises either way: the env keeps an upper bound of the steps
            taken on the host and reads the device only once it reaches ``horizon`` (about once per meta-episode,
            every step with ``validate_actions``).
        device: the device of every tensor of the env.

    Output keys (besides ``reward`` and ``done``/``terminated``/``truncated``):
        ``observation`` (float, ``[B, observation_dim]``), ``state`` (int64 ``[B]``, the current state index),
        ``meta_step`` (``t / H``, ``[B, 1]``), ``episode_step`` (``τ / T`` with ``T = episode_length`` or ``H``),
        ``inner_done`` (bool ``[B, 1]``: the inner episode ended on this step and the env restarted it),
        ``inner_terminated`` (bool ``[B, 1]``: it ended at a terminal state) and ``reached_state`` (int64 ``[B]``,
        the state the transition reached, before any restart).

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = RandomMDPEnv(num_envs=2, horizon=3)
        >>> isinstance(env, MetaTaskEnv), env.batch_size
        (True, torch.Size([2]))
        >>> sorted(env.observation_spec.keys())[:4]
        ['episode_step', 'inner_done', 'inner_terminated', 'meta_step']
    """

    batch_locked = True
    PRESETS: dict[str, dict] = {}

    def __init__(
        self,
        num_envs: int,
        n_states: int,
        n_actions: int,
        horizon: int,
        episode_length: int | None,
        observation_dim: int,
        *,
        split: str = "train",
        seed: int = 0,
        validate_actions: bool | None = None,
        device=None,
    ):
        num_envs = check_int("num_envs", num_envs, low=1)
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.n_states = check_int("n_states", n_states, low=1)
        self.n_actions = check_int("n_actions", n_actions, low=1)
        _set_trial_settings(self, horizon, episode_length, split, validate_actions)
        self._observation_dim = observation_dim
        self._has_tasks = False
        zeros = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.register_buffer("_state", zeros.clone())
        self.register_buffer("_start_state", zeros.clone())
        self.register_buffer("_meta_t", zeros.clone())
        self.register_buffer("_episode_t", zeros.clone())
        self._steps_bound = 0  # an upper bound of _meta_t.max(), kept on the host (see _check_horizon)
        self._make_specs()
        self.set_seed(seed)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, num_envs: int = 1, **overrides):
        """Build the env from a named preset of :attr:`PRESETS`; keyword arguments override the preset.

        Examples:
            >>> from rl3_torchrl.envs import RandomMDPEnv
            >>> RandomMDPEnv.from_preset("ood", num_envs=2).dirichlet_alpha
            0.25
        """
        check_choice("preset", name, cls.PRESETS)
        return cls(num_envs, **{**cls.PRESETS[name], **overrides})

    def _make_specs(self) -> None:
        batch = self.batch_size
        flag = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=self.device)
        fraction = Bounded(0.0, 1.0, shape=(*batch, 1), dtype=torch.float32, device=self.device)
        state = Categorical(self.n_states, shape=batch, dtype=torch.long, device=self.device)
        self.observation_spec = Composite(
            {
                "observation": Bounded(
                    0.0, 1.0, shape=(*batch, self._observation_dim), dtype=torch.float32, device=self.device
                ),
                STATE_KEY: state,
                REACHED_STATE_KEY: state.clone(),
                META_STEP_KEY: fraction,
                EPISODE_STEP_KEY: fraction.clone(),
                INNER_DONE_KEY: flag,
                INNER_TERMINATED_KEY: flag.clone(),
            },
            shape=batch,
        )
        self.action_spec = Categorical(self.n_actions, shape=batch, dtype=torch.long, device=self.device)
        self.reward_spec = Unbounded(shape=(*batch, 1), dtype=torch.float32, device=self.device)
        self.full_done_spec = Composite(
            {key: flag.clone() for key in ("done", "terminated", "truncated")}, shape=batch
        )

    # ------------------------------------------------------------------ seeding
    def _set_seed(self, seed: int | None) -> None:
        seed = 0 if seed is None else check_int("seed", seed, low=0, high=MAX_SEED)
        self._task_rng = torch.Generator(device=self.device).manual_seed(stream_seed(seed, self.split, "tasks"))
        self._dynamics_rng = torch.Generator(device=self.device).manual_seed(
            stream_seed(seed, self.split, "dynamics")
        )

    def rng_state(self) -> dict:
        """The states of the task and dynamics random streams (for checkpoints)."""
        return {"tasks": self._task_rng.get_state(), "dynamics": self._dynamics_rng.get_state()}

    def set_rng_state(self, state: dict) -> None:
        """Restore the streams saved by :meth:`rng_state`."""
        self._task_rng.set_state(state["tasks"])
        self._dynamics_rng.set_state(state["dynamics"])

    # ------------------------------------------------------------------ subclass hooks
    def _sample_tasks(self, mask: torch.Tensor) -> None:
        """Draw new task parameters (and ``_start_state``) for the rows where ``mask`` ([B] bool) is True."""
        raise NotImplementedError

    def _advance(self, state: torch.Tensor, action: torch.Tensor):
        """One transition of the true dynamics: returns ``(next_state, reward [B], terminal [B] bool)``."""
        raise NotImplementedError

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        """The ``[B, observation_dim]`` float observation of ``state``."""
        raise NotImplementedError

    def _task_tensors(self) -> dict:
        """``transition [B,S,A,S]``, ``reward [B,S,A]`` (mean) and ``terminal [B,S]`` of the current tasks."""
        raise NotImplementedError

    # ------------------------------------------------------------------ EnvBase
    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        else:
            mask = reset.reshape(self.batch_size)
        self._sample_tasks(mask)
        self._has_tasks = True
        self._state = torch.where(mask, self._start_state, self._state)
        self._meta_t = torch.where(mask, 0, self._meta_t)
        if reset is None:
            self._steps_bound = 0  # a partial reset keeps the bound: refreshed when it reaches the horizon
        self._episode_t = torch.where(mask, 0, self._episode_t)
        no = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return self._output(self._state, no, no, no)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if not self._has_tasks:
            raise RuntimeError(f"{type(self).__name__}.step() before reset(): call env.reset() first to draw tasks.")
        action = tensordict.get("action")
        if self.validate_actions:
            self._check_action(action)
        if self.validate_actions or self._steps_bound >= self.horizon:
            self._check_horizon()
        reached, reward, inner_done, terminal, done = self.advance_tasks(action)
        out = self._output(reached, inner_done.unsqueeze(-1), terminal.unsqueeze(-1), done.unsqueeze(-1))
        out.set("reward", reward.to(torch.float32).unsqueeze(-1))
        return out

    def advance_tasks(self, action: torch.Tensor):
        """Advance every task by one step with plain tensors (no TensorDict, no checks).

        This is the whole per-step work of the env; :meth:`step` wraps it in TorchRL's TensorDict protocol.

        Returns:
            ``(reached_state, reward, inner_done, inner_terminated, done)``, each of shape ``[B]``.
        """
        reached, reward, terminal = self._advance(self._state, action)
        self._meta_t = self._meta_t + 1
        self._steps_bound += 1
        self._episode_t = self._episode_t + 1
        inner_done = terminal
        if self.episode_length is not None:
            inner_done = inner_done | (self._episode_t >= self.episode_length)
        self._state = torch.where(inner_done, self._start_state, reached)
        self._episode_t = torch.where(inner_done, 0, self._episode_t)
        return reached, reward, inner_done, terminal, self._meta_t >= self.horizon

    def _output(self, reached, inner_done, inner_terminated, done) -> TensorDict:
        return TensorDict(
            {
                "observation": self._observe(self._state),
                STATE_KEY: self._state,
                REACHED_STATE_KEY: reached,
                **_trial_entries(self._meta_t, self._episode_t, self.horizon, self.episode_length, inner_done,
                                inner_terminated, done),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _check_horizon(self) -> None:
        """Raise if a row already took ``horizon`` steps; otherwise make the host-side bound exact (one sync)."""
        taken = int(self._meta_t.max())
        if taken >= self.horizon:
            ended = self._meta_t >= self.horizon
            raise RuntimeError(
                f"rows {ended.nonzero().flatten()[:5].tolist()} already took horizon={self.horizon} steps: reset "
                "them (their done flag is set) before stepping again."
            )
        self._steps_bound = taken

    def _check_action(self, action) -> None:
        if not isinstance(action, torch.Tensor):
            raise TypeError(f"action must be a torch.Tensor, got {type(action).__name__}.")
        if action.dtype.is_floating_point or action.dtype.is_complex or action.dtype == torch.bool:
            raise TypeError(f"action must have an integer dtype (action indices), got dtype={action.dtype}.")
        if action.shape != self.batch_size:
            raise ValueError(
                f"action must have shape {tuple(self.batch_size)} (one index per task), got {tuple(action.shape)}."
            )
        bad = (action < 0) | (action >= self.n_actions)
        if bool(bad.any()):
            raise ValueError(
                f"action values must be in [0, {self.n_actions - 1}], got {action[bad][:5].tolist()} "
                f"(first offending rows {bad.nonzero().flatten()[:5].tolist()})."
            )

    # ------------------------------------------------------------------ inspection
    def task_mdp(self) -> TensorDict:
        """The exact tabular model of the current tasks.

        Returns a TensorDict of batch size ``[B]`` with ``transition`` ``[B, S, A, S]``, ``reward`` ``[B, S, A]``
        (the mean reward of taking ``a`` in ``s``), ``terminal`` ``[B, S]`` (entering the state ends the inner
        episode), ``start_state`` ``[B]`` and ``episode_length`` ``[B]`` (0 where inner episodes have no time
        limit). It is what :func:`~rl3_torchrl.envs.oracle_return` solves.

        Examples:
            >>> from rl3_torchrl.envs import RandomMDPEnv
            >>> env = RandomMDPEnv(num_envs=3, seed=0)
            >>> _ = env.reset()
            >>> env.task_mdp()["transition"].shape
            torch.Size([3, 10, 5, 10])
        """
        if not self._has_tasks:
            raise RuntimeError("task_mdp() needs tasks: call env.reset() first.")
        tensors = self._task_tensors()
        limit = 0 if self.episode_length is None else self.episode_length
        return TensorDict(
            {
                **tensors,
                "start_state": self._start_state.clone(),
                "episode_length": torch.full(self.batch_size, limit, dtype=torch.long, device=self.device),
            },
            batch_size=self.batch_size,
            device=self.device,
        )
