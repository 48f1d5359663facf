"""Batched value iteration on estimated tabular models.

Two backup operators share one driver, :func:`value_iteration`:

- :class:`DenseBackup`: ``Q(s, a) = R(s, a) + Σ_s' γP(s'|s, a) · max_a' Q(s', a')`` with a dense transition tensor
  laid out successor-first, ``[B, S', S·A]``, so that a sweep is one ``baddbmm`` (6× faster on CPU than
  ``(P * V).sum(-1)`` on ``[B, S, A, S]``, which itself beats ``einsum``). Use it when ``S`` is small (random MDPs).
- :class:`SparseBackup`: a sparse model whose cost follows the observed successors. Each row holds a list of
  observed edges ``(s·A + a, s', weight)``, plus a uniform "Laplace" mass spread over all known states, handled
  analytically: ``Q(s, a) = R(s, a) + Σ_edges W·V(s') + L[s, a]·Σ_s' V(s')``. Use it for gridworlds (≤ 4
  successors per cell and action, and few pairs visited), where a dense backup is memory-bound.

Terminal (absorbing, zero-reward) and unknown states are expressed by zero columns of ``P`` (dense) or zero edge
weights, ``L`` and ``R`` (sparse), so that their ``Q`` stays 0 and no value mask is needed in the sweep.

The driver sweeps a fixed number of times, or until ``max |ΔQ| < tol`` per row, checking convergence only every
``check_every`` sweeps (one host sync per check) and sweeping only the rows that have not converged. Tabular
baseline policies reuse the same operators, e.g. with sampled transitions (posterior sampling) or a reward bonus.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rl3_torchrl._validation import check_float, check_int


@dataclass
class DenseBackup:
    """The Bellman optimality backup of a batch of dense tabular models.

    Args:
        transition (Tensor): ``γ·P(s'|s, a)`` at ``[b, s', s·A + a]``, float ``[B, S, S·A]`` (the discount folded
            in; zero columns for absorbing states). :meth:`from_tabular` converts a ``[B, S, A, S]`` tensor.
        reward (Tensor): the expected reward ``R(s, a)``, ``[B, S, A]``.

    Examples:
        >>> P = torch.zeros(1, 2, 1, 2); P[0, 0, 0, 1] = P[0, 1, 0, 1] = 0.5   # γ = 0.5, state 1 absorbing
        >>> backup = DenseBackup.from_tabular(P, torch.tensor([[[1.0], [2.0]]]))
        >>> q, sweeps = value_iteration(backup, max_sweeps=100, tol=1e-6)
        >>> q.squeeze(-1)
        tensor([[3.0000, 4.0000]])
    """

    transition: torch.Tensor
    reward: torch.Tensor

    @classmethod
    def from_tabular(cls, transition: torch.Tensor, reward: torch.Tensor) -> "DenseBackup":
        """Build from ``γ·P`` as ``[B, S, A, S]`` (indexed ``[b, s, a, s']``)."""
        B, S, A, _ = transition.shape
        return cls(transition.reshape(B, S * A, S).transpose(1, 2).contiguous(), reward)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        B = q.shape[0]
        value = q.amax(-1).unsqueeze(1)
        return torch.baddbmm(self.reward.reshape(B, 1, -1), value, self.transition).view(q.shape)

    def rows(self, index: torch.Tensor) -> "DenseBackup":
        """The backup of the batch rows ``index`` only."""
        return DenseBackup(self.transition[index], self.reward[index])


@dataclass
class SparseBackup:
    """The Bellman optimality backup of a batch of sparse tabular models stored as lists of observed edges.

    Each row holds ``E`` edges ``(pair, successor, weight)`` with ``pair = s·A + a``; unused edges have weight 0.
    A sweep gathers ``V`` at the successors, scatters the weighted values onto the pairs and adds the uniform
    smoothing mass analytically, so its cost follows the number of observed successors, not ``S·A·S``.

    Args:
        pairs (Tensor): int64 ``[B, E]``, the ``s·A + a`` of each edge.
        successors (Tensor): int64 ``[B, E]``, the successor state of each edge.
        weights (Tensor): ``[B, E]``, ``γ·P`` carried by each edge.
        laplace (Tensor): ``[B, S, A]``, ``γ·P`` given to *every* state (the smoothing mass; 0 for absorbing and
            unknown states). States beyond the known ones must keep ``Q = 0`` (zero ``reward`` and ``laplace``).
        reward (Tensor): ``[B, S, A]``.

    Examples:
        >>> edges = torch.tensor([[0, 2]])                                     # (s=0, a=0) and (s=1, a=0)
        >>> backup = SparseBackup(edges, torch.tensor([[1, 1]]), torch.tensor([[0.5, 0.0]]),
        ...                       torch.zeros(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
        >>> value_iteration(backup, max_sweeps=5)[0]                          # state 1 absorbing
        tensor([[[1., 0.],
                 [0., 0.]]])
    """

    pairs: torch.Tensor
    successors: torch.Tensor
    weights: torch.Tensor
    laplace: torch.Tensor
    reward: torch.Tensor

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        value = q.amax(-1)
        base = self.reward + self.laplace * value.sum(-1)[:, None, None]
        edges = value.gather(1, self.successors) * self.weights
        return base.view(q.shape[0], -1).scatter_add(1, self.pairs, edges).view(q.shape)

    def rows(self, index: torch.Tensor) -> "SparseBackup":
        """The backup of the batch rows ``index`` only."""
        return SparseBackup(
            self.pairs[index], self.successors[index], self.weights[index], self.laplace[index], self.reward[index]
        )


def value_iteration(
    backup,
    q: torch.Tensor | None = None,
    *,
    max_sweeps: int,
    tol: float | None = None,
    check_every: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``backup`` repeatedly to ``q`` (``[B, S, A]``; ``None`` starts from zero).

    Args:
        backup (DenseBackup or SparseBackup): the operator; anything with ``__call__(q)``, ``rows(index)`` and a
            ``reward`` tensor works.
        q (Tensor, optional): the starting values (a warm start); ``None`` means zeros.

    Keyword Args:
        max_sweeps (int): the most sweeps done on any row.
        tol (float, optional): stop a row once a sweep changes none of its values by ``tol`` or more (sup-norm).
            ``None`` always does ``max_sweeps``.
        check_every (int): sweeps between convergence checks; each check is one host sync, and only the rows
            that have not converged are swept afterwards.

    Returns:
        ``(q, sweeps)``: the new values and the int64 ``[B]`` number of sweeps done on each row.

    Examples:
        >>> P = torch.full((3, 4, 8), 0.9 / 4)                                 # γ = 0.9, uniform transitions
        >>> q, sweeps = value_iteration(DenseBackup(P, torch.ones(3, 4, 2)), max_sweeps=500, tol=1e-4, check_every=8)
        >>> round(q.max().item(), 2), sweeps.tolist()
        (10.0, [89, 89, 89])
    """
    max_sweeps = check_int("max_sweeps", max_sweeps, low=1)
    check_every = check_int("check_every", check_every, low=1)
    if tol is not None:
        tol = check_float("tol", tol, low=0.0, low_inclusive=False)
    done = 0
    if q is None:  # one sweep from zero gives the reward
        q = backup.reward.clone()
        done = 1
    rows = q.shape[0]
    sweeps = torch.full((rows,), done, dtype=torch.long, device=q.device)
    active = None  # None: all rows
    sub, q_active = backup, q
    while done < max_sweeps:
        chunk = min(check_every if tol is not None else max_sweeps, max_sweeps - done)
        for _ in range(chunk - 1):
            q_active = sub(q_active)
        previous, q_active = q_active, sub(q_active)
        done += chunk
        if active is None:
            q = q_active
            sweeps += chunk
        else:
            q = q.index_copy(0, active, q_active)
            sweeps.index_add_(0, active, torch.full_like(active, chunk))
        if tol is None or done >= max_sweeps:
            break
        moving = (q_active - previous).abs().flatten(1).amax(-1) >= tol
        keep = moving.nonzero().squeeze(-1)  # the one host sync per check
        if keep.numel() == 0:
            break
        if keep.numel() < q_active.shape[0]:
            active = keep if active is None else active[keep]
            sub, q_active = backup.rows(active), q_active[keep]
    return q, sweeps
