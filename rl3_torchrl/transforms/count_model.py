"""Count-based estimates of a batch of tabular tasks, updated one transition per row at a time.

Both models keep, per batch row: visit counts ``N(s, a)``, successor counts ``N(s, a, s')``, running mean rewards,
the states observed to be terminal, and the current action-values ``Q`` (refreshed by :meth:`solve`). The estimated
model is ``P̂(s'|s, a) = (N(s, a, s') + α) / (N(s, a) + α·|S_known|)`` over the known states, reward 0 for unseen
pairs, and terminal states absorbing with reward 0.

The expected reward ``R̂(s, a)`` that value iteration uses follows ``reward_model`` (see :data:`REWARD_MODELS`):

- ``"transition"`` (the paper's rule, from the authors' code): ``R̂(s, a, s')`` is the running mean of the rewards
  seen for the triple (0 for an unseen ``s'``) and ``R̂(s, a) = Σ_s' P̂(s'|s, a)·R̂(s, a, s')`` under the *smoothed*
  ``P̂``, i.e. ``(Σ_s' r-sum(s, a, s') + α·Σ_s' R̂(s, a, s')) / (N(s, a) + α·|S_known|)``: shrunk towards 0 at low
  counts (``(1 + α)/(1 + α·|S|)·r`` after one visit).
- ``"pair"`` (ours, before the paper's rule was known): the plain mean of the rewards seen for ``(s, a)``.

Both models can also cache ``Q(s', ·)`` of the state each transition reached (:meth:`remember`), for the paper's
features after an inner-episode restart (see :class:`~rl3_torchrl.transforms.OnlineQEstimator`).

- :class:`DenseCountModel`: every state is known from the start; ``γ·P̂`` is stored densely (``[B, S', S·A]``, the
  layout of :class:`DenseBackup`) and only the ``(s, a)`` column that changed is rewritten at each step.
- :class:`SparseCountModel`: states get ids in order of discovery (optionally through a coarse
  :class:`~rl3_torchrl.transforms.StateAbstraction`), ``|S_known|`` grows, and each row keeps the list of distinct
  transitions ``(s, a, s')`` it has seen, so that a backup costs ``O(edges + S·A)`` rather than ``O(S·A·S)``.

All updates are vectorised over rows, with no Python loop over the batch.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from rl3_torchrl.transforms.abstraction import discover_states
from rl3_torchrl._validation import check_choice
from rl3_torchrl.transforms.value_iteration import DenseBackup, SparseBackup, value_iteration

#: The reward estimates: ``"transition"`` (the paper's: per-``(s, a, s')`` means under the smoothed ``P̂``) and
#: ``"pair"`` (ours: the plain per-``(s, a)`` mean).
REWARD_MODELS = ("transition", "pair")
# The float dtypes of the models: their counts stay exact up to 2**24 (float32) or 2**53 visits, whereas float16 and
# bfloat16 would silently stop counting at 2048 and 256.
_COUNT_DTYPES = (torch.float32, torch.float64)


def _check_count_dtype(dtype) -> torch.dtype:
    """Return ``dtype`` after checking it holds the models' counts exactly; half precision is refused."""
    if dtype not in _COUNT_DTYPES:
        half = dtype in (torch.float16, torch.bfloat16)
        why = " (its counts would stop growing at 2048 / 256 visits)" if half else ""
        raise ValueError(f"dtype={dtype!r} is not allowed{why}; allowed: {list(_COUNT_DTYPES)}.")
    return dtype


class _CountModel(nn.Module):
    """Buffer bookkeeping shared by the models: lazy allocation and masked clearing."""

    def __init__(
        self,
        n_states: int,
        n_actions: int,
        *,
        laplace: float,
        gamma: float,
        dtype=torch.float32,
        reward_model: str = "transition",
    ):
        super().__init__()
        self.n_states, self.n_actions = n_states, n_actions
        self.laplace, self.gamma, self.dtype = laplace, gamma, _check_count_dtype(dtype)
        self.reward_model = check_choice("reward_model", reward_model, REWARD_MODELS)
        for name in self._layout():
            self.register_buffer(name, nn.parameter.UninitializedBuffer())
        self.register_buffer("sweeps", nn.parameter.UninitializedBuffer())

    def _layout(self) -> dict:
        """``{buffer name: (shape after the row dim, dtype, value of a cleared row)}``."""
        raise NotImplementedError

    @property
    def rows(self) -> int | None:
        """The number of rows held, ``None`` before :meth:`allocate`."""
        return None if isinstance(self.q, nn.parameter.UninitializedBuffer) else self.q.shape[0]

    def allocate(self, rows: int, device) -> None:
        """Size every buffer for ``rows`` batch rows on ``device`` (all rows cleared)."""
        for name, (shape, dtype, fill) in self._layout().items():
            setattr(self, name, torch.full((rows, *shape), fill, dtype=dtype, device=device))
        self.sweeps = torch.zeros(rows, dtype=torch.long, device=device)

    def clear(self, mask: torch.Tensor) -> None:
        """Forget the rows where ``mask`` (bool ``[rows]``) is True."""
        for name, (shape, _, fill) in self._layout().items():
            getattr(self, name).masked_fill_(mask.view(-1, *[1] * len(shape)), fill)
        self.sweeps.masked_fill_(mask, 0)

    def ids(self, states: torch.Tensor) -> torch.Tensor:
        """The model ids of known env ``states`` (``[rows]``)."""
        return states

    def state_values(self, states: torch.Tensor) -> torch.Tensor:
        """``Q(s, ·)`` of one env state per row, ``[rows, A]``."""
        return self.q[torch.arange(states.shape[0], device=states.device), self.ids(states)]

    def state_counts(self, states: torch.Tensor) -> torch.Tensor:
        """``N(s, ·)`` of one env state per row, ``[rows, A]``."""
        return self.counts[torch.arange(states.shape[0], device=states.device), states]

    def remember(self, reached: torch.Tensor, current: torch.Tensor) -> None:
        """Cache ``Q(s', ·)`` of the ``reached`` states (call after :meth:`solve`) and flag the rows whose
        ``current`` state is not the reached one (an inner-episode restart); see :meth:`shown_values`.

        Examples:
            >>> model = DenseCountModel(2, 1, laplace=0.1, gamma=0.0)
            >>> model.allocate(1, "cpu")
            >>> model.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([2.0]), torch.tensor([1]),
            ...              torch.tensor([False]))
            >>> model.solve(max_sweeps=1, tol=None, check_every=1, warm_start=False)
            >>> model.remember(torch.tensor([1]), torch.tensor([0]))   # reached 1, restarted at 0: never reached
            >>> model.shown_values(torch.tensor([0])).tolist(), round(model.state_values(torch.tensor([0])).item(), 4)
            ([[0.0]], 1.8333)
        """
        rows = torch.arange(reached.shape[0], device=reached.device)
        self.entered_q[rows, reached] = self.state_values(reached)
        self.restarted = current != reached

    def shown_values(self, states: torch.Tensor) -> torch.Tensor:
        """``Q(s, ·)`` of one env state per row, ``[rows, A]``, except on rows flagged by :meth:`remember` as
        restarted, which get the values cached the last time ``s`` was reached (zeros if never)."""
        rows = torch.arange(states.shape[0], device=states.device)
        return torch.where(self.restarted[:, None], self.entered_q[rows, states], self.state_values(states))

    def _cache_layout(self) -> dict:
        S, A = self.n_states, self.n_actions
        return {"entered_q": ((S, A), self.dtype, 0.0), "restarted": ((), torch.bool, False)}

    def known(self, n: int) -> torch.Tensor:
        """Bool ``[rows, n]``: which of the first ``n`` model ids are in use (all of them here)."""
        return torch.ones(self.q.shape[0], n, dtype=torch.bool, device=self.q.device)

    def value_table(self) -> torch.Tensor:
        """``V(s) = max_a Q(s, a)`` of every env state, ``[rows, n_states]`` (NaN for states not seen yet)."""
        return self.q.amax(-1)

    def solve(
        self, *, max_sweeps: int, tol: float | None, check_every: int, warm_start: bool, bonus: float = 0.0
    ) -> None:
        """Refresh :attr:`q` by value iteration (see :func:`value_iteration`); :attr:`sweeps` gets the sweeps.

        With ``bonus = β > 0`` the rewards of live known pairs get ``β / sqrt(max(N(s, a), 1))`` (MBIE-EB's
        optimism), so that greedy actions on :attr:`q` explore.
        """
        backup, q = self.backup()
        if bonus:
            n = backup.reward.shape[1]
            live = (self.known(n) & ~self.terminal[:, :n]).unsqueeze(-1)
            optimism = bonus * live / self.counts[:, :n].clamp_min(1).sqrt()
            backup = dataclasses.replace(backup, reward=backup.reward + optimism)
        q, self.sweeps = value_iteration(
            backup, q if warm_start else None, max_sweeps=max_sweeps, tol=tol, check_every=check_every
        )
        self._store_q(q)


class DenseCountModel(_CountModel):
    """A count model over a fixed set of ``n_states`` states, with ``γ·P̂`` kept dense and updated incrementally.

    Keyword Args:
        laplace (float): ``α``; gamma (float): ``γ``; dtype: the float dtype, float32 or float64.
        reward_model (str): ``"transition"`` (the paper's, default) or ``"pair"`` (ours); see :data:`REWARD_MODELS`.

    Examples:
        >>> model = DenseCountModel(2, 1, laplace=0.1, gamma=0.9)
        >>> model.allocate(1, "cpu")
        >>> model.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([1]),
        ...              torch.tensor([False]))
        >>> [round(p, 4) for p in (model.transition[0, :, 0] / 0.9).tolist()]  # [0.1, 1.1] / (1 + 0.1·2)
        [0.0833, 0.9167]
        >>> round(model.reward[0, 0, 0].item(), 4)  # P̂(1|0, 0)·R̂(0, 0, 1) = 1.1/1.2 · 1; "pair" would give 1
        0.9167
    """

    def _layout(self) -> dict:
        S, A, f = self.n_states, self.n_actions, self.dtype
        layout = {
            "successor_counts": ((S, A, S), f, 0.0),
            "counts": ((S, A), f, 0.0),
            "reward": ((S, A), f, 0.0),
            "transition": ((S, S * A), f, self.gamma / S),
            "terminal": ((S,), torch.bool, False),
            "q": ((S, A), f, 0.0),
            **self._cache_layout(),
        }
        if self.reward_model == "transition":
            layout["transition_reward"] = ((S, A, S), f, 0.0)  # R̂(s, a, s'), the running mean per triple
        return layout

    def discover(self, states: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
        """The model ids of ``states``: the states themselves (all states are known)."""
        return states

    def record(self, states, actions, rewards, next_states, terminal) -> None:
        """Count one transition ``(s, a, r, s', terminal)`` per row (``[rows]`` each)."""
        ids, next_ids = states, next_states
        R, S, A = ids.shape[0], self.n_states, self.n_actions
        rows = torch.arange(R, device=ids.device)
        pair = ids * A + actions
        triple_index, pair_index = (rows, pair, next_ids), (rows, pair)
        one = torch.ones((), dtype=self.dtype, device=ids.device)
        successor_counts = self.successor_counts.view(R, S * A, S)
        successor_counts.index_put_(triple_index, one, accumulate=True)
        counts, reward = self.counts.view(R, S * A), self.reward.view(R, S * A)
        counts.index_put_(pair_index, one, accumulate=True)
        n = counts[pair_index]
        live = (~self.terminal[rows, ids]).to(self.dtype)  # a terminal state stays absorbing with reward 0
        rewards = rewards.to(self.dtype)
        smoothed = successor_counts[pair_index] + self.laplace  # [R, S'], (N(s, a, s') + α)
        total = n + self.laplace * S
        if self.reward_model == "pair":
            reward[pair_index] += live * (rewards - reward[pair_index]) / n
        else:
            means = self.transition_reward.view(R, S * A, S)
            mean = means[triple_index]
            means[triple_index] = mean + (rewards - mean) / successor_counts[triple_index]
            reward[pair_index] = live * (smoothed * means[pair_index]).sum(-1) / total
        self.transition[rows, :, pair] = smoothed * (self.gamma * live / total)[:, None]
        # a host read of a CPU tensor is no device sync: skip the terminal bookkeeping when no row ended (always the
        # case in tasks without terminal states); on accelerators it runs unconditionally
        if terminal.device.type != "cpu" or bool(terminal.any()):
            self.terminal[rows, next_ids] |= terminal
            keep = (~terminal).to(self.dtype)
            self.transition.view(R, S, S, A)[rows, :, next_ids] *= keep[:, None, None]
            self.reward[rows, next_ids] *= keep[:, None]

    def backup(self):
        return DenseBackup(self.transition, self.reward), self.q

    def _store_q(self, q):
        self.q = q


class SparseCountModel(_CountModel):
    """A count model over states discovered online, storing each row's observed transitions as an edge list.

    Each row keeps ``(s·A + a, s', N(s, a, s'))`` for every distinct transition seen (at most one new edge per
    step; the edge capacity grows as needed), so value iteration (:class:`SparseBackup`) costs
    ``O(edges + S·A)`` per sweep rather than ``O(S·A·S)``.

    Args:
        n_states (int): the number of env states (cells); model ids never exceed it.
        n_actions (int): the number of actions.

    Keyword Args:
        laplace (float): ``α``; gamma (float): ``γ``; dtype: the float dtype, float32 or float64.
        reward_model (str): ``"transition"`` (the paper's, default) or ``"pair"`` (ours); see :data:`REWARD_MODELS`.
            Each edge keeps the sum of its rewards, so ``R̂(s, a, s')`` is one division.
        abstraction (StateAbstraction, optional): group states online; the model then runs on group ids while
            :meth:`state_counts` stays per state. Terminal states always get a group of their own.
        capacity (int): the initial number of edges per row (doubles when full).

    Examples:
        >>> model = SparseCountModel(3, 1, laplace=0.1, gamma=0.9, capacity=1)
        >>> model.allocate(1, "cpu")
        >>> _ = model.discover(torch.tensor([2]))
        >>> for nxt in (0, 2, 0):
        ...     model.record(torch.tensor([2]), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([nxt]),
        ...                  torch.tensor([False]))
        >>> model.state_to_id[0, :3].tolist(), model.n_edges.tolist(), model.edge_count[0, :2].tolist()
        ([1, -1, 0], [2], [2.0, 1.0])
    """

    def __init__(
        self,
        n_states,
        n_actions,
        *,
        laplace,
        gamma,
        dtype=torch.float32,
        reward_model="transition",
        abstraction=None,
        capacity=64,
    ):
        self.capacity = capacity
        super().__init__(n_states, n_actions, laplace=laplace, gamma=gamma, dtype=dtype, reward_model=reward_model)
        self.abstraction = abstraction
        self.edges_max = 0  # an upper bound of n_edges.max(), kept on the host
        self.known_max = 0  # an upper bound of n_known.max(), kept on the host

    def _layout(self) -> dict:
        S, A, E, f, i64 = self.n_states, self.n_actions, self.capacity, self.dtype, torch.long
        return {
            "state_to_id": ((S + 1,), i64, -1),
            "group_size": ((S,), i64, 0),
            "n_known": ((), i64, 0),
            "terminal": ((S,), torch.bool, False),
            "state_action_counts": ((S, A), f, 0.0),
            "counts": ((S, A), f, 0.0),
            "reward": ((S, A), f, 0.0),
            "edge_pair": ((E,), i64, 0),
            "edge_successor": ((E,), i64, 0),
            "edge_count": ((E,), f, 0.0),
            "edge_reward": ((E,), f, 0.0),  # the sum of the rewards seen on each edge
            "n_edges": ((), i64, 0),
            "q": ((S, A), f, 0.0),
            **self._cache_layout(),
        }

    def discover(self, states: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
        """Give ``states`` model ids (new ones in order of discovery) and return them."""
        isolate = terminal if self.abstraction is not None else None
        self.known_max = min(self.known_max + 1, self.n_states)  # at most one new id per row and call
        return discover_states(self.abstraction, states, self.state_to_id, self.group_size, self.n_known, isolate)

    def record(self, states, actions, rewards, next_states, terminal) -> None:
        """Count one transition ``(s, a, r, s', terminal)`` per row (``s`` known; ``s'`` is discovered here)."""
        R, S, A = states.shape[0], self.n_states, self.n_actions
        rows = torch.arange(R, device=states.device)
        self.state_action_counts[rows, states, actions] += 1
        ids, next_ids = self.ids(states), self.discover(next_states, terminal)
        pair = ids * A + actions
        counts, reward = self.counts.view(R, S * A), self.reward.view(R, S * A)
        counts[rows, pair] += 1
        live = (~self.terminal[rows, ids]).to(self.dtype)
        reward[rows, pair] += live * (rewards.to(self.dtype) - reward[rows, pair]) / counts[rows, pair]
        if self.edges_max >= self.capacity:  # room for one new edge per row, without a host sync
            self._grow()
        E = max(self.edges_max, 1)
        match = (self.edge_pair[:, :E] == pair[:, None]) & (self.edge_successor[:, :E] == next_ids[:, None])
        match &= torch.arange(E, device=states.device) < self.n_edges[:, None]
        found = match.any(-1)
        edge = torch.where(found, match.to(torch.int8).argmax(-1), self.n_edges)
        self.edge_pair[rows, edge] = pair
        self.edge_successor[rows, edge] = next_ids
        self.edge_count[rows, edge] += 1
        self.edge_reward[rows, edge] += rewards.to(self.dtype)
        self.n_edges += ~found
        self.edges_max += 1
        self.terminal[rows, next_ids] |= terminal
        self.reward[rows, next_ids] *= (~terminal).to(self.dtype)[:, None]

    def clear(self, mask: torch.Tensor) -> None:
        super().clear(mask)
        self.edges_max = int(self.n_edges.max())

    def allocate(self, rows: int, device) -> None:
        super().allocate(rows, device)
        self.edges_max = self.known_max = 0
        # on CPU reading the exact sizes is no device sync; elsewhere the host-side upper bounds avoid one per step
        self.exact_sizes = torch.device(device).type == "cpu"

    def state_counts(self, states: torch.Tensor) -> torch.Tensor:
        """``N(s, ·)`` per env state (not per group), ``[rows, A]``."""
        return self.state_action_counts[torch.arange(states.shape[0], device=states.device), states]

    def ids(self, states: torch.Tensor) -> torch.Tensor:
        """The model ids (groups) of known env ``states``."""
        return self.state_to_id[torch.arange(states.shape[0], device=states.device), states]

    def known(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.q.device) < self.n_known[:, None]

    def value_table(self) -> torch.Tensor:
        ids = self.state_to_id[:, : self.n_states]
        values = self.q.amax(-1).gather(1, ids.clamp_min(0))
        return values.masked_fill(ids < 0, float("nan"))

    def _grow(self) -> None:
        for name in ("edge_pair", "edge_successor", "edge_count", "edge_reward"):
            setattr(self, name, torch.nn.functional.pad(getattr(self, name), (0, self.capacity)))
        self.capacity *= 2

    def backup(self):
        if self.exact_sizes:
            self.known_max, self.edges_max = torch.stack([self.n_known.max(), self.n_edges.max()]).tolist()
        # with upper bounds, the extra ids (beyond n_known) and edges (count 0) carry no reward nor mass: Q stays 0
        n, E = max(self.known_max, 1), max(self.edges_max, 1)
        live = (self.known(n) & ~self.terminal[:, :n]).to(self.dtype)
        known_mass = self.laplace * self.n_known.to(self.dtype)[:, None, None]
        inverse = live[..., None] / (self.counts[:, :n] + known_mass)  # 1 / (N(s,a) + α·|S_known|), 0 if absorbing
        scale = self.gamma * inverse
        pairs, edge_count = self.edge_pair[:, :E], self.edge_count[:, :E]
        reward = self.reward[:, :n]
        if self.reward_model == "transition":  # Σ_s' (N(s,a,s') + α)·R̂(s,a,s'), unused edges add 0
            weighted = self.edge_reward[:, :E] / edge_count.clamp_min(1) * (edge_count + self.laplace)
            reward = torch.zeros_like(inverse).view(inverse.shape[0], -1).scatter_add(1, pairs, weighted)
            reward = reward.view_as(inverse) * inverse
        backup = SparseBackup(
            pairs,
            self.edge_successor[:, :E],
            edge_count * scale.view(scale.shape[0], -1).gather(1, pairs),
            self.laplace * scale,
            reward,
        )
        return backup, self.q[:, :n]

    def _store_q(self, q):
        self.q[:, : q.shape[1]] = q
