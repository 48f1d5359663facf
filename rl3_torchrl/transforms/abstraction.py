"""Online coarse state abstraction: newly seen states join a nearby, not yet full group.

A state seen for the first time joins the group (abstract state) of the nearest already-seen state within
``radius`` whose group has fewer than ``max_group_size`` members (ties: the oldest group); if there is none it opens
a new group. Groups get ids in order of creation. With the paper's settings (radius 0.08 on 13×13 grids, 0.1 on
11×11, in ``(row/N, col/N)`` coordinates, groups of 2) only orthogonal neighbours are within the radius, so the
abstraction pairs up orthogonal neighbours in discovery order and roughly halves the number of model states.
"""
from __future__ import annotations

import math

import torch

from rl3_torchrl._validation import check_float, check_int

#: The radius for each grid side (normalised coordinates): the paper's for 11 and 13; ours for the 7×7 family of
#: :attr:`~rl3_torchrl.envs.GridworldEnv.PRESETS`, by the same rule (orthogonal neighbours at 1/7 ≈ 0.143 are
#: within it, diagonal ones at ≈ 0.202 are not).
GRID_RADIUS = {7: 0.15, 11: 0.1, 13: 0.08}
#: Distances closer than this count as equal (ties go to the oldest group, not to rounding noise); coordinates
#: coarser than float64 widen it to their precision (see :class:`StateAbstraction`).
TIE_TOLERANCE = 1e-9


def grid_coordinates(side: int) -> torch.Tensor:
    """``(row/side, col/side)`` of the cells ``row * side + col`` of a square grid, float64 ``[side², 2]``.

    Float64, so that equal distances between cells stay equal within :data:`TIE_TOLERANCE` (in float32 the
    rounding of ``k/side`` makes some orthogonal neighbours look nearer than others, and decides ties).

    Examples:
        >>> grid_coordinates(2)
        tensor([[0.0000, 0.0000],
                [0.0000, 0.5000],
                [0.5000, 0.0000],
                [0.5000, 0.5000]], dtype=torch.float64)
    """
    side = check_int("side", side, low=1)
    cells = torch.arange(side * side)
    return torch.stack([cells // side, cells % side], -1).to(torch.float64) / side


class StateAbstraction(torch.nn.Module):
    """The coarse abstraction rule, with the neighbours within ``radius`` of every state precomputed.

    Args:
        coordinates (Tensor): float ``[n_states, D]``, the position of every state.
        radius (float): states within this Euclidean distance may share a group.

    Distances equal within ``tie_tolerance`` (an attribute) tie: :data:`TIE_TOLERANCE` for float64 (or integer)
    coordinates, widened to the precision of coarser floats (``32·eps·max|coordinate|``), so that rounding does not
    break ties.

    Keyword Args:
        max_group_size (int): a group accepts new members while it has fewer than this many (default 2).

    Examples:
        >>> abstraction = StateAbstraction.grid(13)            # radius 0.08: the 4 orthogonal neighbours
        >>> abstraction.neighbours.shape
        torch.Size([169, 4])
        >>> cell_to_id = torch.full((1, 170), -1); size = torch.zeros(1, 169, dtype=torch.long)
        >>> count = torch.zeros(1, dtype=torch.long)
        >>> for cell in (84, 85, 86, 71):                      # centre, east, east again, north of the centre
        ...     _ = abstraction.discover(torch.tensor([cell]), cell_to_id, size, count)
        >>> cell_to_id[0, [84, 85, 86, 71]].tolist()
        [0, 0, 1, 2]
    """

    def __init__(self, coordinates: torch.Tensor, radius: float, *, max_group_size: int = 2):
        super().__init__()
        if not isinstance(coordinates, torch.Tensor) or coordinates.ndim != 2:
            raise ValueError(
                f"coordinates must be a float tensor [n_states, D], got "
                f"{getattr(coordinates, 'shape', type(coordinates).__name__)}."
            )
        self.radius = check_float("radius", radius, low=0.0)
        self.max_group_size = check_int("max_group_size", max_group_size, low=1)
        self.n_states = coordinates.shape[0]
        precision = torch.finfo(coordinates.dtype).eps if coordinates.is_floating_point() else 0.0
        scale = float(coordinates.abs().max()) if coordinates.numel() else 0.0
        self.tie_tolerance = max(TIE_TOLERANCE, 32 * precision * scale)
        coordinates = coordinates.to(torch.float64)
        distance = torch.cdist(coordinates, coordinates)
        distance.fill_diagonal_(math.inf)
        within = distance <= self.radius
        width = int(within.sum(-1).max()) if self.n_states else 0
        # neighbours sorted by distance, padded with the dummy state n_states at distance inf
        order = torch.where(within, distance, math.inf).argsort(dim=-1, stable=True)[:, :width]
        near = within.gather(1, order)
        self.register_buffer("neighbours", torch.where(near, order, self.n_states))
        self.register_buffer("distances", torch.where(near, distance.gather(1, order), math.inf))

    @classmethod
    def grid(cls, side: int, radius: float | None = None, **kwargs) -> "StateAbstraction":
        """The abstraction of a ``side × side`` grid in ``(row/side, col/side)`` coordinates.

        ``radius=None`` takes the value for the side in :data:`GRID_RADIUS`.
        """
        if radius is None:
            if side not in GRID_RADIUS:
                raise ValueError(
                    f"no default abstraction radius for side={side}; pass radius= (defaults exist for sides "
                    f"{sorted(GRID_RADIUS)})."
                )
            radius = GRID_RADIUS[side]
        return cls(grid_coordinates(side), radius, **kwargs)

    def discover(
        self,
        states: torch.Tensor,
        state_to_id: torch.Tensor,
        group_size: torch.Tensor,
        n_groups: torch.Tensor,
        isolate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Give every state of ``states`` (int64 ``[R]``, one per row) a group id, in place; return the ids.

        Args:
            states (Tensor): the state of each row.
            state_to_id (Tensor): int64 ``[R, n_states + 1]``, the group of each state, -1 while unseen (the last
                column is a dummy that stays -1).
            group_size (Tensor): int64 ``[R, max_groups]``, members per group.
            n_groups (Tensor): int64 ``[R]``, groups opened so far.
            isolate (Tensor, optional): bool ``[R]``; a new state of such a row gets a group of its own that stays
                closed (used for terminal states).
        """
        return discover_states(self, states, state_to_id, group_size, n_groups, isolate)


def discover_states(abstraction, states, state_to_id, group_size, n_groups, isolate=None) -> torch.Tensor:
    """The discovery rule of :class:`StateAbstraction`; ``abstraction=None`` gives every new state its own id.

    Vectorised over the rows, with no host sync. See :meth:`StateAbstraction.discover` for the arguments.

    Examples:
        >>> state_to_id = torch.full((2, 4), -1); size = torch.zeros(2, 3, dtype=torch.long)
        >>> count = torch.zeros(2, dtype=torch.long)
        >>> discover_states(None, torch.tensor([2, 0]), state_to_id, size, count).tolist()
        [0, 0]
        >>> discover_states(None, torch.tensor([1, 0]), state_to_id, size, count).tolist()
        [1, 0]
    """
    rows = torch.arange(states.shape[0], device=states.device)
    current = state_to_id[rows, states]
    new = current < 0
    group = n_groups
    if abstraction is not None and abstraction.neighbours.shape[1] > 0:
        neighbours = abstraction.neighbours[states]  # [R, M]
        neighbour_group = state_to_id.gather(1, neighbours)
        size = group_size.gather(1, neighbour_group.clamp(min=0))
        open_ = (neighbour_group >= 0) & (size < abstraction.max_group_size)
        if isolate is not None:
            open_ = open_ & ~isolate[:, None]
        distance = torch.where(open_, abstraction.distances[states], math.inf)
        nearest = open_ & (distance <= distance.amin(-1, keepdim=True) + abstraction.tie_tolerance)
        oldest = torch.where(nearest, neighbour_group, group_size.shape[1]).amin(-1)
        group = torch.where(open_.any(-1), oldest, n_groups)
    group = torch.where(new, group, current)
    opened = new & (group == n_groups)
    state_to_id[rows, states] = group
    full = group_size.new_full((), abstraction.max_group_size if abstraction is not None else 1)
    grow = torch.where(opened & isolate, full, 1) if isolate is not None else torch.ones_like(group)
    group_size[rows, group] += torch.where(new, grow, 0)
    n_groups += opened
    return group
