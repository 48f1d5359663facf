"""RL³'s "RL inside": a count-based model of the current task, solved by value iteration after every step."""
from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torchrl.data import Categorical, OneHot, Unbounded
from torchrl._utils import timeit
from torchrl.envs import Transform
from torchrl.envs.transforms.utils import _get_reset

from rl3_torchrl._validation import check_choice, check_float, check_int, optional
from rl3_torchrl.envs.trial import reached_key
from rl3_torchrl.transforms._spec_utils import action_index, get_key, parent_action_size
from rl3_torchrl.transforms.abstraction import StateAbstraction
from rl3_torchrl.transforms.count_model import REWARD_MODELS, DenseCountModel, SparseCountModel, _check_count_dtype

#: The features shown after an inner-episode restart: ``"cached"`` (the paper's) or ``"fresh"`` (ours).
RESTART_FEATURES = ("cached", "fresh")

#: The blocks of ``q_features``, in order: ``advantage`` (A values), ``value`` (1), ``count`` (A).
Q_FEATURE_BLOCKS = ("advantage", "value", "count")
BACKUPS = ("dense", "sparse")
# The terminal flag read by default: the inner-episode flag of a meta env, else the env's own ``terminated``.
_DEFAULT_TERMINAL_KEYS = ("inner_terminated", "terminated")


def _abstraction(name, value):
    if value is not None and not isinstance(value, StateAbstraction):
        raise TypeError(f"{name} must be a StateAbstraction, got {type(value).__name__}.")
    return value


def _radius(name, value):
    return value if value is None or value == "auto" else check_float(name, value, low=0.0)


#: The settings that may change after a reset, each with its check. A change of a ``_STEP_SETTINGS`` entry takes
#: effect at the next step; a change of a ``_MODEL_SETTINGS`` entry rebuilds the model at the next reset of every
#: row (stepping before that reset raises, so that no step silently runs on the old setting).
_STEP_SETTINGS = {
    "max_sweeps": lambda name, value: check_int(name, value, low=1),
    "tol": optional(lambda name, value: check_float(name, value, low=0.0, low_inclusive=False)),
    "check_every": lambda name, value: check_int(name, value, low=1),
    "warm_start": lambda name, value: bool(value),
    "feature_scale": lambda name, value: check_float(name, value, low=0.0, low_inclusive=False),
    "exploration_bonus": lambda name, value: check_float(name, value, low=0.0),
    "validate": lambda name, value: None if value is None else bool(value),
}
_MODEL_SETTINGS = {
    "backup": lambda name, value: check_choice(name, value, BACKUPS),
    "gamma": lambda name, value: check_float(name, value, low=0.0, high=1.0),
    "laplace": lambda name, value: check_float(name, value, low=0.0, low_inclusive=False),
    "reward_model": lambda name, value: check_choice(name, value, REWARD_MODELS),
    "restart_features": lambda name, value: check_choice(name, value, RESTART_FEATURES),
    "dtype": lambda name, value: _check_count_dtype(value),
    "n_states": optional(lambda name, value: check_int(name, value, low=1)),
    "abstraction": _abstraction,
    "abstraction_radius": _radius,
}
_SHOWN_FIRST = ("backup", "gamma", "laplace", "max_sweeps")  # the order of the repr starts with these
#: The settings fixed at construction (they decide the keys and specs of the env).
_FIXED_SETTINGS = (
    "write_q_values", "state_fn", "state_key", "action_key", "reward_key", "next_state_key", "terminal_key",
    "q_features_key", "q_values_key",
)  # fmt: skip


def q_feature_size(n_actions: int) -> int:
    """The width of ``q_features``: ``2·A + 1``.

    Examples:
        >>> q_feature_size(5)
        11
    """
    return 2 * n_actions + 1


def q_feature_slices(n_actions: int) -> dict[str, slice]:
    """Where each block of :data:`Q_FEATURE_BLOCKS` sits in ``q_features``.

    Examples:
        >>> q_feature_slices(5)
        {'advantage': slice(0, 5, None), 'value': slice(5, 6, None), 'count': slice(6, 11, None)}
    """
    A = n_actions
    return {"advantage": slice(0, A), "value": slice(A, A + 1), "count": slice(A + 1, 2 * A + 1)}


class OnlineQEstimator(Transform):
    """Estimate the current task online and write the current state's action-value features.

    Per batch row the transform keeps (in module buffers, sized at the first reset, never in the TensorDict) the
    counts ``N(s, a)``, ``N(s, a, s')`` and mean rewards of the transitions seen in the current meta-episode, the
    model ``P̂(s'|s, a) = (N(s, a, s') + α) / (N(s, a) + α·|S_known|)`` (unseen pairs: uniform over the known states,
    reward 0; states observed as terminal: absorbing, reward 0), and its action-values ``Q`` from value
    iteration with discount ``γ`` after every step. It records the *true* transition of step ``t``: ``s`` =
    ``state_key`` of the root, ``a`` = ``action_key``, ``r``, ``s'`` = ``next_state_key`` and the terminal flag in
    ``"next"`` (the state reached before an inner-episode restart), and then writes the features of the state the
    policy sees next. Only a meta-episode reset (``_reset`` mask) clears a row's model; inner-episode restarts keep it.

    ``q_features`` (float ``[*B, 2A+1]``, see :data:`Q_FEATURE_BLOCKS` and :func:`q_feature_slices`) is
    ``[(Q(s, ·) − V(s)) / scale, V(s) / scale, N(s, ·) / scale]`` with ``V(s) = max_a Q(s, a)``; with
    ``write_q_values`` the raw ``Q(s, ·)`` (``[*B, A]``) is written too.

    Two model representations (``backup``):

    - ``"dense"``: every state is known from the start (``|S_known| = n_states``); ``γ·P̂`` is dense
      ``[B, S, A, S]`` and updated one ``(s, a)`` row per step. Best for small ``S`` (random MDPs).
    - ``"sparse"``: states get ids in order of discovery (``|S_known|`` grows), each row keeps the list of distinct
      transitions it has seen and the smoothing mass is handled analytically, so a sweep costs
      ``O(edges + S·A)``. Required for gridworlds; optionally on a coarse
      :class:`~rl3_torchrl.transforms.StateAbstraction` (the model and value iteration run on groups of states, the
      counts in the features stay per state).

    Two conventions follow the authors' code by default and can be switched to ours (the estimator of this
    project before the authors' rules were checked):

    - ``reward_model``: ``"transition"`` (the paper's) keeps the running mean reward ``R̂(s, a, s')`` of every
      triple (0 for an unseen ``s'``) and uses ``R̂(s, a) = Σ_s' P̂(s'|s, a)·R̂(s, a, s')`` under the smoothed
      ``P̂``, which shrinks the reward towards 0 at low counts (≈ 0.55·r after one visit of a 10-state MDP with
      α = 0.1); ``"pair"`` (ours) uses the plain mean reward of ``(s, a)``.
    - ``restart_features``: after an inner-episode restart (the state the policy sees differs from the state the
      transition reached), ``"cached"`` (the paper's) shows the advantages and value of ``Q(s_0, ·)`` as cached
      the last time ``s_0`` was *reached* by a transition (zeros if never); value iteration is not rerun for the
      restart. ``"fresh"`` (ours) shows ``Q(s_0, ·)`` of the current model. The count block is always current
      in both conventions: counts are exact data, not an estimate that needs value iteration, so there is nothing
      stale to reproduce, and the count features then always sum to at most the number of steps taken.
      ``q_values`` (with ``write_q_values``) is the ``Q`` the features were computed from, so it is cached too.
      Without a ``next_state_key`` distinct from ``state_key`` no restart is visible and both conventions agree.

    Named presets (:meth:`from_preset`): the paper's ``"random_mdp"`` (dense, α = 0.1, 10 sweeps from zero),
    ``"gridworld"`` (sparse, α = 0.01, warm-started until ``max |ΔQ| < 0.1``) and ``"gridworld_coarse"`` (the same
    on the coarse abstraction), and ours ``"toy_text"`` (small tabular tasks with sparse rewards such as
    FrozenLake: dense, α = 0.01, warm-started until ``max |ΔQ| < 0.01``); all with ``reward_model="transition"``
    and ``restart_features="cached"``.
    Pass ``reward_model="pair", restart_features="fresh"`` for ours.

    Settings may change after a reset: the value-iteration ones (``max_sweeps``, ``tol``, ``check_every``,
    ``warm_start``, ``feature_scale``, ``exploration_bonus``, ``validate``) at the next step; the model's (``gamma``,
    ``laplace``, ``backup``, ``reward_model``, ``restart_features``, ``dtype``, ``n_states``, the abstraction) at the
    next reset of every row, and a step before that reset raises. Keys, ``write_q_values`` and ``state_fn`` are
    fixed at construction. Every value is checked when it is set; ``repr`` shows them all.

    Keyword Args:
        backup (str): ``"dense"`` or ``"sparse"``.
        gamma (float): the discount of the inner value iteration, in ``[0, 1]`` (default 0.95).
        laplace (float): ``α > 0``, the smoothing count (default 0.1).
        max_sweeps (int): the most value-iteration sweeps per step (default 10).
        tol (float or None): stop a row once a sweep changes its ``Q`` by less than ``tol`` (default 0.01).
        check_every (int): sweeps between convergence checks (one host sync each; default 10).
        warm_start (bool): start each step's value iteration from the previous ``Q`` rather than from zero.
        feature_scale (float): the divisor of every feature (default 10).
        write_q_values (bool): also write the raw ``Q(s, ·)`` under ``q_values_key``.
        reward_model (str): ``"transition"`` (the paper's, default) or ``"pair"`` (ours), see above.
        restart_features (str): ``"cached"`` (the paper's, default) or ``"fresh"`` (ours), see above.
        exploration_bonus (float): ``β ≥ 0``; adds ``β / sqrt(max(N(s, a), 1))`` to the estimated rewards (MBIE-EB),
            for optimistic tabular baselines (default 0: the plain certainty-equivalent estimate).
        abstraction (StateAbstraction, optional): a coarse abstraction (``"sparse"`` only).
        abstraction_radius (float or "auto", optional): build a :meth:`StateAbstraction.grid` abstraction for a
            square grid whose states are ``row·N + col``; ``"auto"`` takes the paper's radius for ``N``.
        n_states (int, optional): the number of states; default: the ``n`` of the ``Categorical`` or ``OneHot``
            state spec (required with ``state_fn``).
        state_fn (callable, optional): maps the ``state_key`` entry of a batch (``[N, *obs_shape]``) to one integer
            state index per row (int64 ``[N]``), for observations that are neither indices nor one-hot vectors
            (e.g. ``lambda obs: obs[:, 0] * 4 + obs[:, 1]`` for ``(row, col)`` pairs). Needs ``n_states``.
        dtype (torch.dtype): the float dtype of the model, float32 (default; counts exact up to 2**24 visits) or
            float64; half precision is refused (its counts would stop growing at 2048 or 256). The features are
            float32.
        device: where the model lives; default: the device of the data at the first reset.
        validate (bool, optional): check that state indices are in range and that rewards are finite (a NaN reward
            would make its row's features NaN for the rest of the meta-episode); one host sync per step on an
            accelerator, so the default (``None``) checks on CPU only. Off CPU, :class:`~rl3_torchrl.training.Trainer`
            checks the rewards of each collected batch once instead.
        state_key, action_key, reward_key (NestedKey): the inputs (``"state"``, ``"action"``, ``"reward"``).
            States are integer indices (a ``Categorical`` spec, ``[*B]``), one-hot vectors (a ``OneHot`` spec,
            ``[*B, n_states]``, any dtype) or anything ``state_fn`` maps to indices; a state of another width or
            dtype raises. Actions are indices or one-hot vectors (int or bool), read from the action spec.
        next_state_key (NestedKey, optional): the state reached by the transition; default ``"reached_<state_key>"``
            when the env writes it (``"reached_state"`` for our envs, ``"reached_observation"`` for a
            :class:`~rl3_torchrl.envs.TrialEnv` of a Gymnasium env), else ``state_key`` of ``"next"``.
        terminal_key (NestedKey, optional): the flag of a transition into a terminal state; default
            ``"inner_terminated"`` when the env writes it, else the env's ``"terminated"``, else no state is terminal.
        q_features_key, q_values_key (NestedKey): the outputs (``"q_features"``, ``"q_values"``).

    Examples:
        >>> from torchrl.envs import TransformedEnv
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = TransformedEnv(RandomMDPEnv(num_envs=8, horizon=50, seed=0),
        ...                      OnlineQEstimator.from_preset("random_mdp", write_q_values=True))
        >>> rollout = env.rollout(50)
        >>> rollout["next", "q_features"].shape
        torch.Size([8, 50, 11])
        >>> counts = rollout["next", "q_features"][..., 6:] * 10     # N(s, ·) of the current state
        >>> bool((counts.sum(-1) <= torch.arange(1, 51)).all())
        True
        >>> env.transform.gamma = 0.9                                   # takes effect at the next reset
        >>> env.transform                                               # doctest: +ELLIPSIS
        OnlineQEstimator(backup='dense', gamma=0.9, laplace=0.1, max_sweeps=10, ...)
    """

    _PAPER_RULES = dict(reward_model="transition", restart_features="cached")
    PRESETS = {
        "random_mdp": dict(
            backup="dense", laplace=0.1, max_sweeps=10, tol=0.01, check_every=10, warm_start=False, **_PAPER_RULES
        ),
        "gridworld": dict(
            backup="sparse", laplace=0.01, max_sweeps=2000, tol=0.1, check_every=4, warm_start=True, **_PAPER_RULES
        ),
        "toy_text": dict(
            backup="dense", laplace=0.01, max_sweeps=200, tol=0.01, check_every=5, warm_start=True, **_PAPER_RULES
        ),
        "gridworld_coarse": dict(
            backup="sparse",
            laplace=0.01,
            max_sweeps=2000,
            tol=0.1,
            check_every=4,
            warm_start=True,
            abstraction_radius="auto",
            **_PAPER_RULES,
        ),
    }

    def __init__(
        self,
        *,
        backup: str = "dense",
        gamma: float = 0.95,
        laplace: float = 0.1,
        max_sweeps: int = 10,
        tol: float | None = 0.01,
        check_every: int = 10,
        warm_start: bool = False,
        feature_scale: float = 10.0,
        write_q_values: bool = False,
        reward_model: str = "transition",
        restart_features: str = "cached",
        exploration_bonus: float = 0.0,
        abstraction: StateAbstraction | None = None,
        abstraction_radius: float | str | None = None,
        n_states: int | None = None,
        state_fn=None,
        dtype: torch.dtype = torch.float32,
        device=None,
        validate: bool | None = None,
        state_key="state",
        action_key="action",
        reward_key="reward",
        next_state_key=None,
        terminal_key=None,
        q_features_key="q_features",
        q_values_key="q_values",
    ):
        out_keys = [q_features_key] + ([q_values_key] if write_q_values else [])
        super().__init__(in_keys=[state_key], out_keys=out_keys)
        self.model, self._config, self._stale = None, None, None
        # each assignment is checked by __setattr__ (the same checks as a change after construction)
        self.backup, self.gamma, self.laplace, self.dtype = backup, gamma, laplace, dtype
        self.max_sweeps, self.tol, self.check_every, self.warm_start = max_sweeps, tol, check_every, warm_start
        self.feature_scale, self.exploration_bonus, self.validate = feature_scale, exploration_bonus, validate
        self.reward_model, self.restart_features = reward_model, restart_features
        self.abstraction, self.abstraction_radius, self.n_states = abstraction, abstraction_radius, n_states
        self.model_device = None if device is None else torch.device(device)
        self.write_q_values = bool(write_q_values)
        if state_fn is not None and not callable(state_fn):
            raise TypeError(f"state_fn must be callable (observation -> state index), got {type(state_fn).__name__}.")
        if state_fn is not None and n_states is None:
            raise ValueError("state_fn= needs n_states= (the number of state indices it maps to).")
        self.state_fn = state_fn
        self.state_key, self.action_key, self.reward_key = state_key, action_key, reward_key
        self.next_state_key, self.terminal_key = next_state_key, terminal_key
        self.q_features_key, self.q_values_key = q_features_key, q_values_key
        self._check_model_settings()
        self._fixed = True

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "OnlineQEstimator":
        """Build the estimator from a named preset of :attr:`PRESETS`; keyword arguments override it.

        Examples:
            >>> OnlineQEstimator.from_preset("gridworld").warm_start
            True
        """
        check_choice("preset", name, cls.PRESETS)
        return cls(**{**cls.PRESETS[name], **overrides})

    # ------------------------------------------------------------------ settings
    def __setattr__(self, name, value):
        check = _STEP_SETTINGS.get(name) or _MODEL_SETTINGS.get(name)
        if check is not None:
            value = check(name, value)
            if name in _MODEL_SETTINGS and self.__dict__.get("_fixed") and self._stale is None:
                self._stale = name
                self._config = None
        elif name in _FIXED_SETTINGS and self.__dict__.get("_fixed"):
            raise AttributeError(
                f"OnlineQEstimator.{name} is fixed at construction (it decides the env's keys and specs); build a "
                f"new estimator with {name}={value!r}."
            )
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        names = dict.fromkeys((*_SHOWN_FIRST, *_MODEL_SETTINGS, *_STEP_SETTINGS, *_FIXED_SETTINGS))
        return f"{type(self).__name__}({', '.join(f'{name}={getattr(self, name)!r}' for name in names)})"

    def _check_model_settings(self) -> None:
        """The checks that involve several settings (run at construction and before the model is rebuilt)."""
        if self.abstraction is not None and self.abstraction_radius is not None:
            raise ValueError("pass either abstraction= or abstraction_radius=, not both.")
        if (self.abstraction is not None or self.abstraction_radius is not None) and self.backup != "sparse":
            raise ValueError(
                f"a state abstraction needs backup='sparse' (states discovered online), got backup={self.backup!r}."
            )

    # ------------------------------------------------------------------ configuration from the specs
    def set_container(self, container) -> None:
        self._config = None
        return super().set_container(container)

    def _configure(self, observation_spec) -> dict:
        """Resolve the sizes and keys from the env specs (once), and build the model."""
        if self._config is not None:
            return self._config
        keys = list(observation_spec.keys(True, True))
        if self.state_key not in keys:
            raise KeyError(
                f"OnlineQEstimator: state_key={self.state_key!r} is not an observation of the env; available: "
                f"{sorted(map(str, keys))}."
            )
        next_state_key = self.next_state_key
        if next_state_key is None:
            next_state_key = reached_key(self.state_key)
            next_state_key = next_state_key if next_state_key in keys else self.state_key
        flags = keys + list(self.parent.full_done_spec.keys(True, True))
        terminal_key = self.terminal_key
        if terminal_key is None:
            terminal_key = next((key for key in _DEFAULT_TERMINAL_KEYS if key in flags), None)
        for argument, key, allowed in (("next_state_key", next_state_key, keys), ("terminal_key", terminal_key, flags)):
            if key is not None and key not in allowed:
                raise KeyError(
                    f"OnlineQEstimator: {argument}={key!r} is not an observation of the env; available: "
                    f"{sorted(map(str, allowed))}."
                )
        n_states, encoding = self._state_encoding(observation_spec[self.state_key])
        n_actions, one_hot = parent_action_size(self, self.action_key, "OnlineQEstimator")
        if self._stale is not None or self.model is None or (
            (self.model.n_states, self.model.n_actions) != (n_states, n_actions)
        ):
            self._check_model_settings()
            self.model = self._make_model(n_states, n_actions)
        self._config = dict(
            n_states=n_states,
            n_actions=n_actions,
            one_hot=one_hot,
            encoding=encoding,
            next_state_key=next_state_key,
            terminal_key=terminal_key,
        )
        return self._config

    def _state_encoding(self, spec) -> tuple[int, str]:
        """``(n_states, encoding)`` of the state spec: ``"index"``, ``"one_hot"`` or ``"fn"`` (``state_fn``)."""
        if self.state_fn is not None:
            return self.n_states, "fn"
        if isinstance(spec, OneHot):
            width = int(spec.space.n)
            if self.n_states is not None and self.n_states != width:
                raise ValueError(
                    f"OnlineQEstimator: n_states={self.n_states} does not match the one-hot states of "
                    f"state_key={self.state_key!r} (width {width}); allowed: n_states=None or {width}."
                )
            return width, "one_hot"
        if isinstance(spec, Categorical):
            return (int(spec.space.n) if self.n_states is None else self.n_states), "index"
        raise TypeError(
            f"OnlineQEstimator: state_key={self.state_key!r} has a {type(spec).__name__} spec of shape "
            f"{tuple(spec.shape)}; allowed: a Categorical spec (integer state indices), a OneHot spec (one-hot "
            "states), or pass state_fn= (observation -> state index) with n_states=."
        )

    def _make_model(self, n_states: int, n_actions: int):
        common = dict(laplace=self.laplace, gamma=self.gamma, dtype=self.dtype, reward_model=self.reward_model)
        if self.backup == "dense":
            return DenseCountModel(n_states, n_actions, **common)
        abstraction = self.abstraction
        if self.abstraction_radius is not None:
            side = math.isqrt(n_states)
            if side * side != n_states:
                raise ValueError(
                    f"abstraction_radius needs a square grid (n_states = N²), got n_states={n_states}; build a "
                    f"StateAbstraction(coordinates, radius) and pass abstraction= instead."
                )
            radius = None if self.abstraction_radius == "auto" else self.abstraction_radius
            abstraction = StateAbstraction.grid(side, radius)
        if abstraction is not None and abstraction.n_states != n_states:
            raise ValueError(
                f"the abstraction covers {abstraction.n_states} states but the env has n_states={n_states}."
            )
        return SparseCountModel(n_states, n_actions, abstraction=abstraction, **common)

    def transform_observation_spec(self, observation_spec):
        config = self._configure(observation_spec)
        shape, device = observation_spec.shape, observation_spec.device
        A = config["n_actions"]
        observation_spec[self.q_features_key] = Unbounded(
            shape=(*shape, q_feature_size(A)), dtype=torch.float32, device=device
        )
        if self.write_q_values:
            observation_spec[self.q_values_key] = Unbounded(shape=(*shape, A), dtype=torch.float32, device=device)
        return observation_spec

    # ------------------------------------------------------------------ torchrl hooks
    # Both hooks time themselves: torchrl's ``timeit.todict()["q_estimation"]`` (the Trainer logs it per iteration).
    @timeit("q_estimation")
    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        config = self._configure(self.parent.full_observation_spec)
        state = self._states(tensordict_reset, self.state_key, "state_key", config)
        device = self.model_device or state.device
        reset_key = self.parent.reset_keys[0]
        reset = _get_reset(reset_key, tensordict).reshape(-1).to(device)
        if self._stale is not None and not bool(reset.all()):
            raise RuntimeError(
                f"OnlineQEstimator.{self._stale} changed after the first reset: the model is rebuilt with it at the "
                "next reset of every row, but this reset is partial; reset the whole env (env.reset())."
            )
        if self.model.rows != state.shape[0] or self.model.q.device != device or self._stale is not None:
            self._stale = None
            if not bool(reset.all()):
                raise RuntimeError(
                    f"OnlineQEstimator holds {self.model.rows} rows but got a partial reset of "
                    f"{state.shape[0]} rows; the first reset of a new batch shape must reset every row."
                )
            self.model.allocate(state.shape[0], device)
            self.model.to(device)
        else:
            self.model.clear(reset)
        self.model.discover(state.to(device))
        return self._write(tensordict_reset, state.to(device))

    @timeit("q_estimation")
    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        if self._stale is not None:
            raise RuntimeError(
                f"OnlineQEstimator.{self._stale} changed after the reset: it takes effect at the next reset of every "
                "row (the model is rebuilt then); call env.reset() before stepping."
            )
        config = self._config
        device = self.model.q.device
        state = self._states(tensordict, self.state_key, "state_key", config, check=False).to(device)
        action = get_key(tensordict, self.action_key, "action_key", "OnlineQEstimator")
        action = action_index(action, config["one_hot"]).reshape(-1).to(device)
        reward = get_key(next_tensordict, self.reward_key, "reward_key", "OnlineQEstimator").reshape(-1).to(device)
        if self._validating(reward):
            self._check_rewards(reward)
        reached = self._states(next_tensordict, config["next_state_key"], "next_state_key", config).to(device)
        current = self._states(next_tensordict, self.state_key, "state_key", config).to(device)
        if config["terminal_key"] is None:
            terminal = torch.zeros_like(reached, dtype=torch.bool)
        else:
            terminal = get_key(next_tensordict, config["terminal_key"], "terminal_key", "OnlineQEstimator")
            terminal = terminal.reshape(-1).to(device=device, dtype=torch.bool)
        model = self.model
        model.record(state, action, reward, reached, terminal)
        model.discover(current)
        model.solve(
            max_sweeps=self.max_sweeps,
            tol=self.tol,
            check_every=self.check_every,
            warm_start=self.warm_start,
            bonus=self.exploration_bonus,
        )
        if self.restart_features == "cached":
            model.remember(reached, current)
        return self._write(next_tensordict, current)

    def _states(self, tensordict, key, argument, config, check=True) -> torch.Tensor:
        """One int64 state index per row of ``tensordict``, from indices, one-hot vectors or ``state_fn``."""
        value = get_key(tensordict, key, argument, "OnlineQEstimator")
        batch, S, encoding = tuple(tensordict.shape), config["n_states"], config["encoding"]
        if encoding == "fn":
            states = self.state_fn(value.reshape(-1, *value.shape[len(batch):]))
            what = "state_fn's output"
        else:
            states, what = value, f"{argument}={key!r}"
        if encoding == "one_hot":
            if value.shape != (*batch, S) or value.dtype.is_complex:
                raise ValueError(
                    f"OnlineQEstimator: {what} holds {value.dtype} states of shape {tuple(value.shape)}; allowed: "
                    f"one-hot states of shape {(*batch, S)} (n_states={S}), any real or bool dtype."
                )
            one_hot = value.reshape(-1, S)
            if check and self._validating(one_hot) and not bool(((one_hot != 0).sum(-1) == 1).all()):
                raise ValueError(
                    f"OnlineQEstimator: {what} holds rows that are not one-hot (exactly one nonzero entry each); "
                    f"first rows: {one_hot[(one_hot != 0).sum(-1) != 1][:2].tolist()}."
                )
            states = (one_hot.to(torch.uint8) if one_hot.dtype == torch.bool else one_hot).argmax(-1)
        elif states.dtype.is_floating_point or states.dtype.is_complex or states.dtype == torch.bool:
            raise TypeError(
                f"OnlineQEstimator: {what} holds {states.dtype} states; allowed: integer state indices "
                "(a float or bool observation needs a OneHot spec or state_fn=)."
            )
        else:
            allowed = [(math.prod(batch),)] if encoding == "fn" else [batch, (*batch, 1)]
            if tuple(states.shape) not in allowed:
                raise ValueError(
                    f"OnlineQEstimator: {what} holds states of shape {tuple(states.shape)}; allowed: one integer "
                    f"index per row, shape {' or '.join(map(str, allowed))} (one-hot states need a OneHot spec)."
                )
        states = states.reshape(-1)
        if check and self._validating(states):
            low, high = torch.stack([states.min(), states.max()]).tolist()
            if low < 0 or high >= S:
                bad = states[(states < 0) | (states >= S)][:5].tolist()
                raise ValueError(
                    f"OnlineQEstimator: {what} holds state indices {bad} out of range; allowed: "
                    f"[0, {S - 1}] (n_states={S})."
                )
        return states

    def _validating(self, data: torch.Tensor) -> bool:
        return data.device.type == "cpu" if self.validate is None else self.validate

    def _check_rewards(self, reward: torch.Tensor) -> None:
        bad = ~torch.isfinite(reward)
        if bool(bad.any()):
            rows = bad.nonzero().flatten()[:5]
            steps = self.model.counts[rows].flatten(1).sum(-1).long() + 1  # this transition, counted from 1
            raise ValueError(
                f"OnlineQEstimator: reward_key={self.reward_key!r} holds non-finite values "
                f"{reward[rows].tolist()} at rows {rows.tolist()} (their step {steps.tolist()} of the meta-episode); "
                "allowed: finite rewards. A NaN or inf reward would make those rows' features NaN for the rest of "
                "the meta-episode."
            )

    def _write(self, tensordict: TensorDictBase, states: torch.Tensor) -> TensorDictBase:
        if self.restart_features == "cached":
            q = self.model.shown_values(states)
        else:
            q = self.model.state_values(states)
        value = q.amax(-1, keepdim=True)
        features = torch.cat([q - value, value, self.model.state_counts(states)], -1) / self.feature_scale
        shape, device = tensordict.shape, tensordict.device
        tensordict.set(self.q_features_key, features.to(device=device, dtype=torch.float32).reshape(*shape, -1))
        if self.write_q_values:
            tensordict.set(self.q_values_key, q.to(device=device, dtype=torch.float32).reshape(*shape, -1))
        return tensordict

    def value_map(self) -> torch.Tensor:
        """The current estimate ``V(s) = max_a Q(s, a)`` of every env state, float ``[rows, n_states]`` (NaN for
        states not seen yet in a discovery-order model), e.g. to draw RL³'s value estimates on a grid.

        Examples:
            >>> from torchrl.envs import TransformedEnv
            >>> from rl3_torchrl.envs import RandomMDPEnv
            >>> env = TransformedEnv(RandomMDPEnv(num_envs=2, horizon=20), OnlineQEstimator())
            >>> _ = env.rollout(20)
            >>> env.transform.value_map().shape
            torch.Size([2, 10])
        """
        if self.model is None or self.model.rows is None:
            raise RuntimeError("OnlineQEstimator.value_map() is only available after the first reset.")
        return self.model.value_table()

    @property
    def sweeps(self) -> torch.Tensor:
        """The value-iteration sweeps of the last step, per row (int64 ``[rows]``), e.g. for profiling."""
        if self.model is None or self.model.rows is None:
            raise RuntimeError("OnlineQEstimator.sweeps is only available after the first reset.")
        return self.model.sweeps

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        raise NotImplementedError(
            "OnlineQEstimator is a stateful env transform (it accumulates a model along the meta-episode); use it "
            "inside a TransformedEnv, not on stored data."
        )
