"""Meta-episodes ("trials") of any episodic TorchRL env: :class:`TrialEnv`.

Why a wrapper and not a transform: a trial owns the ``done`` signal and must *reset the inner env in the middle of
its own step* (an inner episode that ends restarts at once, and the policy sees the restart state). A TorchRL
``Transform`` only post-processes its parent's outputs and cannot call its parent's ``reset`` from ``_step``; an
``EnvBase`` around the env can, and it gives the trial its own specs, seeding and ``task_mdp``. Everything
downstream (``MetaRLInputs``, ``OnlineQEstimator``, ``InitTracker``, the collectors) then composes with it as with
:class:`~rl3_torchrl.envs.MetaTaskEnv`.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite
from torchrl.envs import EnvBase

from rl3_torchrl._validation import check_int
from rl3_torchrl.envs.meta_env import (
    EPISODE_STEP_KEY,
    INNER_DONE_KEY,
    INNER_TERMINATED_KEY,
    MAX_SEED,
    META_STEP_KEY,
    _set_trial_settings,
    _trial_entries,
    stream_seed,
)

_DONE_KEYS = ("done", "terminated", "truncated")


def reached_key(key):
    """The key under which a meta env reports the value of ``key`` reached by a transition, before any restart.

    Examples:
        >>> reached_key("state"), reached_key(("agent", "observation"))
        ('reached_state', ('agent', 'reached_observation'))
    """
    if isinstance(key, tuple):
        return (*key[:-1], reached_key(key[-1]))
    return "reached_" + key


class TrialEnv(EnvBase):
    """Turn an episodic env and a task sampler into meta-episodes (trials) of ``horizon`` steps.

    Each batch row holds one task. A reset of a row (its ``_reset`` mask, or every row) calls
    ``task_sampler(env, mask, generator)`` to give the masked rows new tasks, then resets them. Inside a trial,
    an inner episode that ends (the env's ``done``, or ``episode_length`` steps) is restarted at once by a partial
    reset of the env, with the same task. The step reports it as data, with the same keys and meaning as
    :class:`~rl3_torchrl.envs.MetaTaskEnv`: ``inner_done``, ``inner_terminated`` (the env's ``terminated``),
    ``reached_<key>`` (the value of each ``reached_keys`` observation the transition reached, before the restart;
    the restart state is under ``<key>``), ``meta_step`` (``t / H``) and ``episode_step`` (``τ / T``, ``T =
    episode_length`` or ``H``). ``done`` and ``terminated`` are set after ``horizon`` steps, never before.

    The env's observations, actions, rewards and state inputs pass through unchanged. It must have the root done
    keys ``done`` (and optionally ``terminated``/``truncated``) and honour partial resets (``_reset``), as stock
    ``SerialEnv``/``ParallelEnv`` and natively batched envs do. The wrapper itself is vectorised (masks and
    ``torch.where``); the cost per row is the env's own (a Gymnasium env steps row by row in Python).

    Args:
        env (EnvBase): the episodic env (batched or not).
        horizon (int): ``H``, the steps of a meta-episode.
        task_sampler (callable, optional): ``task_sampler(env, mask, generator)``, called before every reset of
            the trial with the env, the bool ``mask`` (``env.batch_size``) of the rows that start a new task and
            the trial's ``torch.Generator`` (seeded from ``seed`` and ``split``). It gives those rows new tasks in
            place (e.g. rebuilds their Gymnasium envs) and returns ``None``, or returns a TensorDict of per-row task
            parameters that is passed to the env's reset (for envs that read their task from the reset data, e.g.
            across ``ParallelEnv`` processes). If it has a ``task_mdp()`` method (the exact tabular model of the
            current tasks: ``transition``, ``reward``, ``terminal``, ``start_state``), :meth:`task_mdp` and the
            oracle of :func:`~rl3_torchrl.envs.oracle_return` work; ``n_states`` is read from it too. If it has
            ``rng_state()`` and ``set_rng_state(state)`` (the wrapped env's dynamics streams), checkpoints save them
            and a resumed run repeats the uninterrupted one exactly.
            ``None``: the task never changes (each meta-episode is a fresh start of the same env).

    Keyword Args:
        episode_length (int, optional): cut inner episodes after this many steps (``inner_done`` without
            ``inner_terminated``); ``None``: they end only when the env says so.
        reached_keys (list of NestedKey, optional): the observations reported as ``reached_<key>``; default:
            every observation of the env.
        split (str): ``"train"`` or ``"test"``: disjoint task streams for the same seed.
        seed (int): seeds the task generator and the env (its own ``set_seed``).
        validate_actions (bool, optional): check every action against the env's action spec before stepping it
            (one host sync per step); default (``None``): on CPU only.
        device: the trial's device (default: the env's); data moves to the env's device for its calls.

    Examples:
        >>> from torchrl.envs import SelectTransform, TransformedEnv, check_env_specs
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> # a plain episodic env: episodes of 3 steps in one MDP per row, observation and state only
        >>> inner = TransformedEnv(RandomMDPEnv(num_envs=2, horizon=3), SelectTransform("observation", "state"))
        >>> env = TrialEnv(inner, horizon=7)
        >>> check_env_specs(env)
        >>> rollout = env.rollout(7)
        >>> rollout["next", "inner_done"].squeeze(-1)[0].tolist()
        [False, False, True, False, False, True, False]
        >>> rollout["next", "done"].squeeze(-1)[0].tolist()
        [False, False, False, False, False, False, True]
        >>> (rollout["next", "meta_step"][0, -1].item(), rollout["next", "episode_step"][0, -1].item())
        (1.0, 0.1428571492433548)
    """

    def __init__(
        self,
        env: EnvBase,
        horizon: int,
        task_sampler=None,
        *,
        episode_length: int | None = None,
        reached_keys=None,
        split: str = "train",
        seed: int = 0,
        validate_actions: bool | None = None,
        device=None,
    ):
        if not isinstance(env, EnvBase):
            raise TypeError(f"env must be a torchrl EnvBase, got {type(env).__name__}.")
        if task_sampler is not None and not callable(task_sampler):
            raise TypeError(
                f"task_sampler must be callable (env, mask, generator) -> None or TensorDict, got "
                f"{type(task_sampler).__name__}."
            )
        done_keys = list(env.full_done_spec.keys(True, True))
        if "done" not in done_keys or any(key not in _DONE_KEYS for key in done_keys):
            raise ValueError(
                f"env has the done keys {done_keys}; allowed: the root keys 'done' (required), 'terminated' and "
                "'truncated' (nested done keys, e.g. multi-agent envs, are not supported)."
            )
        super().__init__(device=env.device if device is None else device, batch_size=env.batch_size)
        self.env = env
        self.task_sampler = task_sampler
        _set_trial_settings(self, horizon, episode_length, split, validate_actions)
        observations = list(env.full_observation_spec.keys(True, True))
        self.reached_keys = observations if reached_keys is None else list(reached_keys)
        for key in self.reached_keys:
            if key not in observations:
                raise KeyError(
                    f"reached_keys holds {key!r}, which is not an observation of env; allowed: {observations}."
                )
        self._observation_keys = observations
        self._done_shape = env.full_done_spec["done"].shape
        self._make_specs()
        zeros = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        self.register_buffer("_meta_t", zeros.clone())
        self.register_buffer("_episode_t", zeros.clone())
        self._observed = None  # the env's observations of the current step (the base of partial resets)
        self.set_seed(seed)

    def _make_specs(self) -> None:
        batch, device = self.batch_size, self.device
        observation = self.env.full_observation_spec.clone().to(device)
        added = [reached_key(key) for key in self.reached_keys]
        added += [META_STEP_KEY, EPISODE_STEP_KEY, INNER_DONE_KEY, INNER_TERMINATED_KEY]
        taken = [key for key in added if key in observation.keys(True, True)]
        if taken:
            raise ValueError(f"env already has the observations {taken}, which TrialEnv writes; rename them.")
        for key in self.reached_keys:
            observation[reached_key(key)] = observation[key].clone()
        fraction = Bounded(0.0, 1.0, shape=(*batch, 1), dtype=torch.float32, device=device)
        flag = Categorical(2, shape=(*batch, 1), dtype=torch.bool, device=device)
        observation[META_STEP_KEY], observation[EPISODE_STEP_KEY] = fraction, fraction.clone()
        observation[INNER_DONE_KEY], observation[INNER_TERMINATED_KEY] = flag, flag.clone()
        self.full_observation_spec = observation
        self.full_action_spec = self.env.full_action_spec.clone().to(device)
        self.full_reward_spec = self.env.full_reward_spec.clone().to(device)
        self.full_state_spec = self.env.full_state_spec.clone().to(device)
        self.full_done_spec = Composite({key: flag.clone() for key in _DONE_KEYS}, shape=batch, device=device)

    # ------------------------------------------------------------------ properties read by evaluation and baselines
    @property
    def n_actions(self) -> int:
        """The number of actions of a discrete (``Categorical`` or ``OneHot``) action spec."""
        return int(self.action_spec.space.n)

    @property
    def n_states(self) -> int:
        """The number of states, from the task sampler (``task_sampler.n_states``)."""
        if not hasattr(self.task_sampler, "n_states"):
            raise AttributeError("n_states is only known when the task sampler has an `n_states` attribute.")
        return self.task_sampler.n_states

    # ------------------------------------------------------------------ seeding
    def _set_seed(self, seed: int | None) -> None:
        seed = 0 if seed is None else check_int("seed", seed, low=0, high=MAX_SEED)
        self._task_rng = torch.Generator().manual_seed(stream_seed(seed, self.split, "tasks"))
        self.env.set_seed(stream_seed(seed, self.split, "dynamics"))

    def rng_state(self) -> dict:
        """The random streams, for checkpoints: the task stream, and the wrapped env's dynamics stream where the task
        sampler can give it (its own ``rng_state()`` method, as :class:`~rl3_torchrl.envs.ToyTextSampler` has for
        its in-process Gymnasium rows; otherwise a resumed run's dynamics differ from an uninterrupted run's)."""
        state = {"tasks": self._task_rng.get_state()}
        if hasattr(self.task_sampler, "rng_state"):
            state["dynamics"] = self.task_sampler.rng_state()
        return state

    def set_rng_state(self, state: dict) -> None:
        """Restore the streams saved by :meth:`rng_state`."""
        self._task_rng.set_state(state["tasks"])
        if "dynamics" in state:
            self.task_sampler.set_rng_state(state["dynamics"])

    # ------------------------------------------------------------------ EnvBase
    def _inner_reset(self, mask: torch.Tensor, extra: TensorDictBase | None = None) -> TensorDictBase:
        """Reset the env's rows where ``mask`` is True; their observations (on the trial's device)."""
        inner = TensorDict({"_reset": mask.reshape(self._done_shape)}, self.env.batch_size, device=self.env.device)
        if extra is not None:
            inner.update(extra)
        return self.env.reset(inner).select(*self._observation_keys).to(self.device)

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None or self._observed is None:
            mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        else:
            mask = reset.reshape(self.batch_size).to(self.device)
        tasks = None
        if self.task_sampler is not None:
            tasks = self.task_sampler(self.env, mask.to(self.env.device), self._task_rng)
        observed = self._inner_reset(mask, tasks)
        if self._observed is not None:
            observed = observed.where(mask, self._observed)
        self._observed = observed
        self._meta_t = torch.where(mask, 0, self._meta_t)
        self._episode_t = torch.where(mask, 0, self._episode_t)
        no = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return self._output(observed, observed, no, no, no)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._observed is None:
            raise RuntimeError("TrialEnv.step() before reset(): call env.reset() first to draw tasks.")
        if bool((self._meta_t >= self.horizon).any()):  # one host sync per step (the env itself syncs anyway)
            ended = (self._meta_t >= self.horizon).nonzero().flatten()[:5].tolist()
            raise RuntimeError(
                f"rows {ended} already took horizon={self.horizon} steps: reset them (their done flag is set) "
                "before stepping again."
            )
        if self.validate_actions:
            self._check_actions(tensordict)
        inputs = [*self.env.full_action_spec.keys(True, True), *self.env.full_state_spec.keys(True, True)]
        stepped = self.env.step(tensordict.select(*inputs, strict=False).to(self.env.device))["next"].to(self.device)
        batch = self.batch_size
        terminated = stepped.get("terminated", stepped["done"]).reshape(batch)
        inner_done = stepped["done"].reshape(batch) | terminated
        self._meta_t = self._meta_t + 1
        self._episode_t = self._episode_t + 1
        if self.episode_length is not None:
            inner_done = inner_done | (self._episode_t >= self.episode_length)
        reached = stepped.select(*self._observation_keys)
        observed = reached
        if bool(inner_done.any()):  # restart the ended inner episodes: the policy sees their start states
            observed = self._inner_reset(inner_done).where(inner_done, reached)
        self._observed = observed
        self._episode_t = torch.where(inner_done, 0, self._episode_t)
        done = (self._meta_t >= self.horizon).unsqueeze(-1)
        out = self._output(observed, reached, inner_done.unsqueeze(-1), terminated.unsqueeze(-1), done)
        for key in self.full_reward_spec.keys(True, True):
            out.set(key, stepped[key])
        return out

    def _check_actions(self, tensordict: TensorDictBase) -> None:
        for key, spec in self.full_action_spec.items(True, True):
            action = tensordict.get(key, None)
            if action is None or action.shape != spec.shape or not spec.is_in(action):
                shown = "None"
                if action is not None:
                    shown = f"{action.flatten()[:8].tolist()} ({action.dtype}, shape {tuple(action.shape)})"
                allowed = f"n={spec.space.n}" if hasattr(spec.space, "n") else f"{spec.space}"
                raise ValueError(
                    f"TrialEnv: action {key!r} = {shown} is not in the env's action spec; allowed: "
                    f"{type(spec).__name__}({allowed}) of shape {tuple(spec.shape)} and dtype {spec.dtype}."
                )

    def _output(self, observed, reached, inner_done, inner_terminated, done) -> TensorDictBase:
        out = observed.clone(False)
        for key in self.reached_keys:
            out.set(reached_key(key), reached[key])
        out.update(_trial_entries(self._meta_t, self._episode_t, self.horizon, self.episode_length, inner_done,
                                 inner_terminated, done))
        return out

    # ------------------------------------------------------------------ inspection
    def task_mdp(self) -> TensorDict:
        """The exact tabular model of the current tasks, from ``task_sampler.task_mdp()``, in the format of
        :meth:`~rl3_torchrl.envs.MetaTaskEnv.task_mdp` (with ``episode_length``), for
        :func:`~rl3_torchrl.envs.oracle_return`."""
        if not hasattr(self.task_sampler, "task_mdp"):
            raise AttributeError("task_mdp() needs a task sampler with a task_mdp() method (the exact task model).")
        if self._observed is None:
            raise RuntimeError("task_mdp() needs tasks: call env.reset() first.")
        tasks = TensorDict(dict(self.task_sampler.task_mdp()), self.batch_size).to(self.device)
        limit = 0 if self.episode_length is None else self.episode_length
        tasks.set("episode_length", torch.full(self.batch_size, limit, dtype=torch.long, device=self.device))
        return tasks
