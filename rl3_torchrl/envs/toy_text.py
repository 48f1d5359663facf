"""Task families on Gymnasium's toy-text envs (FrozenLake on random maps, Taxi with hidden action labels).

A family draws tasks and builds the Gymnasium env of a task; :func:`make_toy_text_env` turns a family into a
batched meta-RL env: a ``SerialEnv`` of ``GymWrapper`` rows inside a :class:`~rl3_torchrl.envs.TrialEnv`, with
:class:`ToyTextSampler` as its task sampler. The rows report the observation our own envs report (``observation``:
the one-hot state, float; ``state``: its index), so every transform, policy and baseline of the library applies.
The toy-text envs expose their exact transition table ``P``, so every task has an exact model
(:func:`toy_text_model`) and the exact oracle of :func:`~rl3_torchrl.envs.oracle_return`.

Gymnasium is an optional dependency (``pip install "rl3_torchrl[gym]"``): it is imported when a family is used.
Gymnasium envs step one row at a time in Python, so these envs cost ~0.1 ms per row and step, unlike our
vectorised task families.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from rl3_torchrl._validation import check_float, check_int
from rl3_torchrl.envs.trial import TrialEnv


def _gymnasium():
    try:
        import gymnasium
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            "the toy-text task families need gymnasium: pip install 'rl3_torchrl[gym]' (or pip install gymnasium)."
        ) from error
    return gymnasium


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (), generator=generator))


@dataclass(frozen=True)
class FrozenLakeFamily:
    """FrozenLake on random maps: each task is a map of ``generate_random_map(size, frozen_prob)`` (start top-left,
    goal bottom-right, a path between them guaranteed), with Gymnasium's dynamics (slippery: the intended move or
    either perpendicular one, 1/3 each) and rewards (1 on reaching the goal; the goal and the holes end the inner
    episode). Out of distribution: another ``frozen_prob`` (more holes) at the same size.

    Examples:
        >>> family = FrozenLakeFamily(size=4)
        >>> task = family.sample(torch.Generator().manual_seed(0))
        >>> len(task), task[0][0], task[-1][-1]
        (4, 'S', 'G')
    """

    size: int = 8
    frozen_prob: float = 0.8
    slippery: bool = True

    def __post_init__(self):
        check_int("size", self.size, low=2)
        check_float("frozen_prob", self.frozen_prob, low=0.0, high=1.0, low_inclusive=False)

    @property
    def n_states(self) -> int:
        return self.size * self.size

    @property
    def n_actions(self) -> int:
        return 4

    def sample(self, generator: torch.Generator) -> tuple[str, ...]:
        """A random map (a tuple of rows of ``S``, ``F``, ``H``, ``G``)."""
        from gymnasium.envs.toy_text.frozen_lake import generate_random_map

        return tuple(generate_random_map(self.size, self.frozen_prob, seed=_draw_seed(generator)))

    def build(self, task):
        """The Gymnasium env of a task (no time limit: the trial decides when inner episodes end)."""
        from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv

        return FrozenLakeEnv(desc=list(task), is_slippery=self.slippery)


@dataclass(frozen=True)
class TaxiFamily:
    """Taxi with hidden action labels: each task permutes the 6 actions (south, north, east, west, pickup,
    drop-off) at random, so the agent must find out which action does what, and fixes the start (taxi position,
    passenger location and destination, drawn from Gymnasium's start distribution) for all its inner episodes.
    Rewards are Gymnasium's (−1 per step, +20 for a delivery, which ends the inner episode, −10 for an illegal
    pickup or drop-off). Out of distribution: ``rainy=True`` (Gymnasium's rainy Taxi: a move goes sideways with
    probability 0.2).

    Examples:
        >>> family = TaxiFamily()
        >>> start, labels = family.sample(torch.Generator().manual_seed(0))
        >>> sorted(labels)
        [0, 1, 2, 3, 4, 5]
    """

    rainy: bool = False

    @property
    def n_states(self) -> int:
        return 500

    @property
    def n_actions(self) -> int:
        return 6

    def sample(self, generator: torch.Generator) -> tuple[int, tuple[int, ...]]:
        """``(start_state, labels)``: ``labels[a]`` is the Gymnasium action that action ``a`` performs."""
        starts = _taxi_starts()
        start = starts[int(torch.randint(len(starts), (), generator=generator))]
        return start, tuple(torch.randperm(6, generator=generator).tolist())

    def build(self, task):
        from gymnasium.envs.toy_text.taxi import TaxiEnv

        start, labels = task
        env = TaxiEnv(is_rainy=self.rainy)
        env.initial_state_distrib = np.eye(self.n_states)[start]
        return _gymnasium().wrappers.TransformAction(env, lambda a: labels[a], env.action_space)


@functools.lru_cache(maxsize=1)
def _taxi_starts() -> tuple[int, ...]:
    """The states of Gymnasium's Taxi start distribution (built once: a TaxiEnv computes its whole table)."""
    from gymnasium.envs.toy_text.taxi import TaxiEnv

    return tuple(np.flatnonzero(TaxiEnv().initial_state_distrib).tolist())


@functools.lru_cache(maxsize=4096)
def toy_text_model(family, task) -> dict:
    """The exact model of one task from Gymnasium's transition table ``P`` (with the family's action labels).

    Returns a dict of ``transition`` (float64 ``[S, A, S]``), ``reward`` (the mean reward of ``(s, a)``,
    ``[S, A]``), ``terminal`` (bool ``[S]``: entering the state ends the inner episode) and ``start_state``
    (the single state of the env's start distribution).

    Examples:
        >>> model = toy_text_model(FrozenLakeFamily(size=4), ("SFFF", "FHFH", "FFFH", "HFFG"))
        >>> model["transition"].sum(-1).allclose(torch.ones(16, 4, dtype=torch.float64)), int(model["start_state"])
        (True, 0)
        >>> model["terminal"].nonzero().flatten().tolist()       # the holes and the goal
        [5, 7, 11, 12, 15]
    """
    env = family.build(task)
    labels = [env.action(a) if hasattr(env, "action") else a for a in range(family.n_actions)]
    raw = env.unwrapped
    S, A = family.n_states, family.n_actions
    transition = np.zeros((S, A, S))
    reward = np.zeros((S, A))
    terminal = np.zeros(S, dtype=bool)
    for s in range(S):  # built once per task (cached), not per step
        for a in range(A):
            for p, s_next, r, done in raw.P[s][labels[a]]:
                transition[s, a, s_next] += p
                reward[s, a] += p * r
                terminal[s_next] |= bool(done)
    starts = np.flatnonzero(raw.initial_state_distrib)
    if len(starts) != 1:
        raise ValueError(f"the task has {len(starts)} start states; the exact oracle needs one.")
    return {
        "transition": torch.from_numpy(transition),
        "reward": torch.from_numpy(reward),
        "terminal": torch.from_numpy(terminal),
        "start_state": torch.tensor(int(starts[0])),
    }


class _TaskRow:
    """One batch row: a Gymnasium env whose task can be swapped, observed as our envs are (one-hot + index)."""

    def __init__(self, family, task):
        gymnasium = _gymnasium()
        self.family, self.task = family, task
        self.env = family.build(task)
        n = family.n_states
        self.observation_space = gymnasium.spaces.Dict(
            {"observation": gymnasium.spaces.Box(0.0, 1.0, (n,), np.float32), "state": gymnasium.spaces.Discrete(n)}
        )

    def gym_env(self):
        """A Gymnasium env that delegates to this row's current task."""
        gymnasium = _gymnasium()
        row = self

        class Row(gymnasium.Env):
            observation_space = row.observation_space
            action_space = row.env.action_space

            def reset(self, *, seed=None, options=None):
                state, info = row.env.reset(seed=seed, options=options)
                return row.observe(state), info

            def step(self, action):
                state, reward, terminated, truncated, info = row.env.step(action)
                return row.observe(state), reward, terminated, truncated, info

        return Row()

    def observe(self, state):
        one_hot = np.zeros(self.family.n_states, np.float32)
        one_hot[state] = 1.0
        return {"observation": one_hot, "state": int(state)}

    def set_task(self, task):
        """Rebuild the env for ``task``; the dynamics' random stream carries on."""
        env = self.family.build(task)
        env.unwrapped.np_random = self.env.unwrapped.np_random
        self.env, self.task = env, task


class ToyTextSampler:
    """The task sampler of a :class:`~rl3_torchrl.envs.TrialEnv` of toy-text rows: at a meta-episode reset it
    draws a task of ``family`` for each reset row and rebuilds that row's Gymnasium env; :meth:`task_mdp` gives the
    exact model of the rows' current tasks.

    Args:
        family: a task family (:class:`FrozenLakeFamily`, :class:`TaxiFamily` or any object with ``n_states``,
            ``n_actions``, ``sample(generator)`` and ``build(task)``).
        rows (list): the rows, in batch order (see :func:`make_toy_text_env`).
    """

    def __init__(self, family, rows):
        self.family, self.rows = family, rows
        self.n_states = family.n_states

    def __call__(self, env, mask, generator):
        for row in mask.nonzero().flatten().tolist():  # Gymnasium envs are rebuilt one by one
            self.rows[row].set_task(self.family.sample(generator))

    def rng_state(self) -> list:
        """The rows' Gymnasium dynamics streams (``np_random`` states), for :meth:`TrialEnv.rng_state`."""
        return [row.env.unwrapped.np_random.bit_generator.state for row in self.rows]

    def set_rng_state(self, states: list) -> None:
        """Restore the streams of :meth:`rng_state`."""
        if len(states) != len(self.rows):
            raise ValueError(f"got dynamics states of {len(states)} rows for a sampler of {len(self.rows)} rows.")
        for row, state in zip(self.rows, states):
            row.env.unwrapped.np_random.bit_generator.state = state

    def task_mdp(self) -> dict:
        models = [toy_text_model(self.family, row.task) for row in self.rows]
        return {key: torch.stack([model[key] for model in models]) for key in models[0]}


def make_toy_text_env(
    family,
    num_envs: int = 1,
    *,
    horizon: int = 100,
    episode_length: int | None = None,
    split: str = "train",
    seed: int = 0,
    device=None,
) -> TrialEnv:
    """A batch of ``num_envs`` toy-text tasks of ``family`` as one meta-RL env.

    A ``SerialEnv`` of ``GymWrapper`` rows (integer actions) in a :class:`~rl3_torchrl.envs.TrialEnv` with a
    :class:`ToyTextSampler`; it writes ``observation`` (one-hot, float), ``state``, ``reached_state`` and the
    trial's keys, like :class:`~rl3_torchrl.envs.RandomMDPEnv`.

    Examples:
        >>> env = make_toy_text_env(FrozenLakeFamily(size=4), 2, horizon=20)
        >>> rollout = env.rollout(20)
        >>> rollout["next", "observation"].shape, bool(rollout["next", "done"][:, -1].all())
        (torch.Size([2, 20, 16]), True)
        >>> from rl3_torchrl.envs import oracle_return
        >>> bool((oracle_return(env) > 0).all())
        True
    """
    from torchrl.envs import GymWrapper, SerialEnv

    num_envs = check_int("num_envs", num_envs, low=1)
    placeholder = family.sample(torch.Generator().manual_seed(0))  # replaced at the first reset
    rows = [_TaskRow(family, placeholder) for _ in range(num_envs)]
    makers = [functools.partial(GymWrapper, row.gym_env(), categorical_action_encoding=True) for row in rows]
    inner = SerialEnv(num_envs, makers, device=device)
    return TrialEnv(
        inner,
        horizon,
        ToyTextSampler(family, rows),
        episode_length=episode_length,
        reached_keys=["state"],
        split=split,
        seed=seed,
        device=device,
    )
