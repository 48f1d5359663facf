"""Batched procedural generation and exact tabular dynamics of the RL³ gridworlds.

A grid of side ``N`` has ``N * N`` cells indexed ``row * N + col``; each holds one tile code:

===========  ====  ======  ==============================================================
tile         code  char    entering it
===========  ====  ======  ==============================================================
empty        0     ``.``   −1
start        1     ``S``   −1 (the centre cell, where every inner episode starts)
obstacle     2     ``#``   cannot be entered
water        3     ``W``   −2 (moves out of water always slip)
warning      4     ``!``   −10
danger       5     ``X``   −100, ends the inner episode
goal         6     ``G``   +100, ends the inner episode
===========  ====  ======  ==============================================================

Actions and moves share one code: 0 noop, 1 north, 2 east, 3 south, 4 west. A move into an obstacle or off the
grid leaves the agent in place (it pays its own tile's entry reward again). A move slips to one of the two
perpendicular directions (50/50) with a probability that depends on the tile being left; noop never slips.

Everything here works on whole batches of grids at once: :func:`grid_dynamics` precomputes, per grid, the
destination of every (cell, move), the entry reward and the terminal flag of every cell; :func:`grid_values` is an
exact finite-horizon DP whose cost is proportional to the 5 successors of each (cell, action); and
:class:`GridGenerator` draws grids by batched rejection sampling.
"""
from __future__ import annotations

import math

import torch

from rl3_torchrl._validation import check_choice, check_float, check_int

EMPTY, START, OBSTACLE, WATER, WARNING, DANGER, GOAL = range(7)
TILE_NAMES = ("empty", "start", "obstacle", "water", "warning", "danger", "goal")
TILE_CHARS = ".S#W!XG"
N_TILES = len(TILE_NAMES)
# The reward for entering a tile of each code (obstacles are never entered).
ENTRY_REWARDS = (-1.0, -1.0, 0.0, -2.0, -10.0, -100.0, 100.0)

# The parameters that define a grid distribution (GridGenerator's arguments, besides the rejection budget).
GENERATOR_PARAMETERS = (
    "size", "n_obstacles", "obstacle_length", "n_water", "water_length", "n_dangers", "goal_min_distance",
    "slip", "water_slip", "return_window", "acceptance_horizon", "layout",
)  # fmt: skip
#: How segments, the goal and the dangers are placed: ``"paper"`` (the authors' rules) or ``"ours"`` (this
#: project's first generator); see :class:`GridGenerator`.
LAYOUTS = ("paper", "ours")

N_MOVES = 5
MOVE_OFFSETS = ((0, 0), (-1, 0), (0, 1), (1, 0), (0, -1))  # (d_row, d_col) of noop, N, E, S, W
# The two perpendicular moves of each move (noop "slips" onto itself, so it never moves).
PERPENDICULAR = ((0, 0), (2, 4), (1, 3), (2, 4), (1, 3))


def centre_cell(size: int) -> int:
    """The index of the start cell, ``(size // 2, size // 2)``.

    Examples:
        >>> centre_cell(13)
        84
    """
    return (size // 2) * size + size // 2


def max_goal_distance(size: int) -> int:
    """The largest Manhattan distance from the centre of a ``size × size`` grid (reached at the corners).

    Examples:
        >>> max_goal_distance(13), max_goal_distance(11)
        (12, 10)
    """
    return 2 * (size // 2)


def move_probabilities(slip: float, water_slip: float, device=None) -> torch.Tensor:
    """The move distribution of every action, ``[2, 5, 5]`` indexed ``[left tile is water, action, move]``.

    Examples:
        >>> move_probabilities(0.2, 1.0)[0, 1].tolist()  # north from a dry tile
        [0.0, 0.800000011920929, 0.10000000149011612, 0.0, 0.10000000149011612]
    """
    table = torch.zeros(2, N_MOVES, N_MOVES, device=device)
    for row, p in enumerate((slip, water_slip)):
        table[row, 0, 0] = 1.0
        for move in range(1, N_MOVES):
            table[row, move, move] += 1.0 - p
            for side in PERPENDICULAR[move]:
                table[row, move, side] += p / 2
    return table


def neighbour_table(size: int, device=None) -> torch.Tensor:
    """``[N * N, 5]`` long: the cell each move leads to on an empty grid (the cell itself at the border).

    Examples:
        >>> neighbour_table(3)[0].tolist()  # top-left corner: noop, N (blocked), E, S, W (blocked)
        [0, 0, 1, 3, 0]
    """
    rows = torch.arange(size, device=device).repeat_interleave(size)
    cols = torch.arange(size, device=device).repeat(size)
    offsets = torch.tensor(MOVE_OFFSETS, device=device)
    r = rows[:, None] + offsets[:, 0]
    c = cols[:, None] + offsets[:, 1]
    inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    return torch.where(inside, r * size + c, (rows * size + cols)[:, None])


def grid_dynamics(tiles: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-grid lookup tables of the deterministic part of the dynamics.

    Args:
        tiles (Tensor): ``[B, N * N]`` tile codes.
        size (int): ``N``.

    Returns:
        ``destination`` ``[B, N * N, 5]`` long (the cell each move from each cell reaches: itself when the move hits
        an obstacle or the border), ``entry_reward`` ``[B, N * N]`` float32 and ``terminal`` ``[B, N * N]`` bool.

    Examples:
        >>> tiles = torch.tensor([[GOAL, EMPTY, OBSTACLE, START]])  # a 2 × 2 grid
        >>> dest, reward, terminal = grid_dynamics(tiles, 2)
        >>> dest[0, 1].tolist(), reward.tolist(), terminal.tolist()
        ([1, 1, 1, 3, 0], [[100.0, -1.0, 0.0, -1.0]], [[True, False, False, False]])
    """
    B, S = tiles.shape
    nbr = neighbour_table(size, tiles.device).view(1, S * N_MOVES).expand(B, -1)
    blocked = tiles.gather(1, nbr) == OBSTACLE
    itself = torch.arange(S, device=tiles.device).repeat_interleave(N_MOVES).view(1, -1)
    destination = torch.where(blocked, itself, nbr).view(B, S, N_MOVES)
    entry_reward = torch.tensor(ENTRY_REWARDS, device=tiles.device)[tiles]
    terminal = (tiles == DANGER) | (tiles == GOAL)
    return destination, entry_reward, terminal


def grid_values(
    tiles: torch.Tensor,
    size: int,
    horizon: int,
    slip: float,
    water_slip: float,
    dtype=torch.float32,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Optimal undiscounted values of **one inner episode** of at most ``horizon`` steps (terminal tiles absorb).

    Exact backward induction, ``V_{k+1}(s) = max_a Σ_m p(m | s, a) X_k(s, m)`` with ``X_k(s, m) = r(s'_m) +
    (1 − terminal(s'_m)) V_k(s'_m)`` and ``s'_m`` the destination of move ``m``. The slip model makes the action
    maximum cheap: north and south share their side moves (east + west), as do east and west (north + south), so
    ``max_a`` needs only ``max(X_N, X_S)`` and ``max(X_E, X_W)``; each sweep is a few ``[B, N * N]`` operations.
    Grids are processed ``chunk_size`` at a time, which keeps each sweep's data in cache.

    Returns:
        ``[B, N * N]`` values with ``horizon`` steps to go (those of terminal and obstacle cells, which the agent
        never occupies, are computed as if it stood there).

    Examples:
        >>> tiles = torch.tensor([[START, GOAL, EMPTY, EMPTY]])  # a 2 × 2 grid, G to the east of S
        >>> grid_values(tiles, 2, horizon=5, slip=0.0, water_slip=1.0)[0].tolist()
        [100.0, 100.0, 99.0, 100.0]
    """
    if tiles.shape[0] > chunk_size:
        chunks = tiles.split(chunk_size)
        return torch.cat([grid_values(c, size, horizon, slip, water_slip, dtype, chunk_size) for c in chunks])
    destination, entry_reward, terminal = grid_dynamics(tiles, size)
    B, S, M = destination.shape
    flat = destination.transpose(1, 2).reshape(B, M * S)  # move-major: X[:, m] is contiguous
    reward = entry_reward.to(dtype).gather(1, flat).view(B, M, S)
    goes_on = (~terminal).to(dtype).gather(1, flat).view(B, M, S)
    slip_p = torch.where(tiles == WATER, water_slip, slip).to(dtype)
    keep, half = 1.0 - slip_p, 0.5 * slip_p
    value = torch.zeros(B, S, dtype=dtype, device=tiles.device)
    for _ in range(horizon):
        x = torch.addcmul(reward, goes_on, value.gather(1, flat).view(B, M, S))
        noop, north, east, south, west = x.unbind(1)
        vertical = keep * torch.maximum(north, south) + half * (east + west)
        horizontal = keep * torch.maximum(east, west) + half * (north + south)
        value = torch.maximum(noop, torch.maximum(vertical, horizontal))
    return value


class GridGenerator:
    """Draws batches of procedurally generated grids by batched rejection sampling.

    With ``layout="paper"`` (the default: the paper's settings, the order and placement of the authors' code) a
    candidate grid is built as follows. First the ``n_obstacles`` obstacle segments, then the ``n_water`` water
    segments (water overwrites obstacles). Each segment is vertical or horizontal with probability ½; its
    coordinate along the segment, ``a1``, is uniform over ``0 … N−1`` and the segment extends ``L − 1`` cells from
    ``a1`` *towards the centre line* (a random direction when ``a1`` is the centre line), so it always fits; the
    other coordinate is uniform over ``0 … N−1``. Then the centre cell becomes the start; the goal is uniform over
    *all* cells at Manhattan distance ≥ ``goal_min_distance`` from the centre, whatever tile was there; then each
    of the ``n_dangers`` dangers is uniform over the interior cells (``1 … N−2`` in both coordinates) that are empty
    and whose 4 neighbours are empty or obstacles (the authors redraw an interior cell until it qualifies, which is
    the same distribution); it becomes ``X`` and its 4 neighbours become warnings ``!`` (overwriting obstacles).

    With ``layout="ours"`` (this project's first generator): the water segments first, then the obstacle segments
    (obstacles overwrite water), each placed uniformly among the positions where the whole segment fits; the goal
    is uniform over the empty or water cells far enough from the centre; a danger needs an empty interior cell
    whose 4 neighbours are empty.

    Either way a candidate is kept when every placement succeeded and the optimal undiscounted return of one
    inner episode of ``acceptance_horizon`` steps from the start (:func:`grid_values`) lies in ``return_window``.
    Rounds of candidates are generated until enough grids are kept; after ``max_rounds`` a ``RuntimeError`` names
    the parameters.

    Args:
        size (int): ``N``, the side of the grid (``N * N`` states), default 13.

    Keyword Args:
        n_obstacles (int): obstacle segments per grid, default 11.
        obstacle_length (int): cells per obstacle segment, default 3.
        n_water (int): water segments per grid, default 5.
        water_length (int): cells per water segment, default 2.
        n_dangers (int): dangers (each ringed by 4 warnings), default 2.
        goal_min_distance (int): the goal's minimum Manhattan distance from the centre, default 8.
        slip (float): the slip probability when leaving an empty, start or warning tile, default 0.2.
        water_slip (float): the slip probability when leaving water, default 1.0.
        return_window (tuple): a grid is kept only if the optimal undiscounted return of one inner episode of
            ``acceptance_horizon`` steps from the start lies in ``[low, high]``, default ``(50, 100)``.
        acceptance_horizon (int): default 100.
        max_rounds (int): rounds of rejection sampling before a reset gives up with an error, default 20.
        max_candidates (int): the largest number of candidate grids drawn in one round, default 4096.
        layout (str): ``"paper"`` (default) or ``"ours"``, see above (:data:`LAYOUTS`). With ``"paper"`` a segment
            length may be at most ``N − N // 2`` (the room from the centre line to the far edge).

    Examples:
        >>> gen = GridGenerator(size=11)
        >>> tiles = gen.sample(4, torch.Generator().manual_seed(0))
        >>> tiles.shape, int((tiles == GOAL).sum()), int((tiles == DANGER).sum())
        (torch.Size([4, 121]), 4, 8)
    """

    def __init__(
        self,
        size: int = 13,
        *,
        n_obstacles: int = 11,
        obstacle_length: int = 3,
        n_water: int = 5,
        water_length: int = 2,
        n_dangers: int = 2,
        goal_min_distance: int = 8,
        slip: float = 0.2,
        water_slip: float = 1.0,
        return_window: tuple[float, float] = (50.0, 100.0),
        acceptance_horizon: int = 100,
        max_rounds: int = 20,
        max_candidates: int = 4096,
        layout: str = "paper",
    ):
        self.layout = check_choice("layout", layout, LAYOUTS)
        self.size = check_int("size", size, low=3)
        self.n_obstacles = check_int("n_obstacles", n_obstacles, low=0)
        self.obstacle_length = check_int("obstacle_length", obstacle_length, low=1, high=size)
        self.n_water = check_int("n_water", n_water, low=0)
        self.water_length = check_int("water_length", water_length, low=1, high=size)
        self.n_dangers = check_int("n_dangers", n_dangers, low=0)
        room = size - size // 2
        segments = (("obstacle_length", n_obstacles, obstacle_length), ("water_length", n_water, water_length))
        for name, count, length in segments:
            if self.layout == "paper" and count > 0 and length > room:
                raise ValueError(
                    f"{name}={length!r} does not fit layout='paper' on a {size}x{size} grid: a segment grows from "
                    f"the centre line towards an edge, so it may have at most {room} cells; allowed: [1, {room}] "
                    "(or layout='ours')."
                )
        far = max_goal_distance(size)
        if isinstance(goal_min_distance, int) and goal_min_distance > far:
            raise ValueError(
                f"goal_min_distance={goal_min_distance!r} is impossible on a {size}x{size} grid: the farthest cell "
                f"(a corner) is at Manhattan distance {far} from the centre; allowed: [1, {far}]."
            )
        self.goal_min_distance = check_int("goal_min_distance", goal_min_distance, low=1, high=far)
        self.slip = check_float("slip", slip, low=0.0, high=1.0)
        self.water_slip = check_float("water_slip", water_slip, low=0.0, high=1.0)
        if not isinstance(return_window, (tuple, list)) or len(return_window) != 2:
            raise ValueError(f"return_window must be a (low, high) pair, got {return_window!r}.")
        low = check_float("return_window[0]", return_window[0])
        self.return_window = (low, check_float("return_window[1]", return_window[1], low=low))
        self.acceptance_horizon = check_int("acceptance_horizon", acceptance_horizon, low=1)
        self.max_rounds = check_int("max_rounds", max_rounds, low=1)
        self.max_candidates = check_int("max_candidates", max_candidates, low=1)

    def sample(self, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """``n`` valid grids, ``[n, N * N]`` long tile codes, drawn with ``generator`` (on its device).

        The result depends only on ``n`` and the generator's state. Each round draws enough candidates for the
        grids still missing at the acceptance rate seen so far in this call (a prior of 90% before the first
        round, 10 pseudo-candidates strong), at most ``max_candidates``.
        """
        n = check_int("n", n, low=0)
        device = generator.device if device is None else torch.device(device)
        kept, remaining, generated, accepted = [], n, 0, 0
        for _ in range(self.max_rounds):
            if remaining == 0:
                break
            rate = (accepted + 9.0) / (generated + 10.0)
            count = min(self.max_candidates, math.ceil(1.25 * remaining / rate) + 8)
            tiles, valid = self.candidates(count, generator, device)
            generated += count
            accepted += int(valid.sum())
            good = tiles[valid][:remaining]
            kept.append(good)
            remaining -= good.shape[0]
        if remaining:
            raise RuntimeError(
                f"GridGenerator could not produce {n} valid grids in max_rounds={self.max_rounds} rounds "
                f"({accepted} of {generated} candidates kept) with {self.describe()}. Loosen the parameters "
                "(fewer or shorter segments, fewer dangers, a wider return_window) or raise max_rounds."
            )
        return torch.cat(kept) if kept else torch.zeros(0, self.size**2, dtype=torch.long, device=device)

    def describe(self) -> str:
        """The generator parameters as ``name=value`` pairs, for messages."""
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in GENERATOR_PARAMETERS)

    def candidates(self, count: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """One round: ``count`` candidate grids ``[count, N * N]`` and whether each is valid ``[count]``."""
        N = self.size
        paper = self.layout == "paper"
        tiles = torch.full((count, N * N), EMPTY, dtype=torch.long, device=device)
        layers = ((self.n_water, self.water_length, WATER), (self.n_obstacles, self.obstacle_length, OBSTACLE))
        for n_segments, length, code in layers[::-1] if paper else layers:
            segments = self._paper_segments if paper else self._segments
            cells = segments(count, n_segments, length, generator, device)
            tiles.scatter_(1, cells, code)
        tiles[:, centre_cell(N)] = START
        rows = torch.arange(N, device=device).repeat_interleave(N)
        cols = torch.arange(N, device=device).repeat(N)
        distance = (rows - N // 2).abs() + (cols - N // 2).abs()
        far = (distance >= self.goal_min_distance).view(1, -1)
        goal_cells = far.expand(count, -1) if paper else far & ((tiles == EMPTY) | (tiles == WATER))
        valid = self._place(tiles, goal_cells, GOAL, generator)
        interior = ((rows > 0) & (rows < N - 1) & (cols > 0) & (cols < N - 1)).view(1, -1)
        ring = neighbour_table(N, device)[:, 1:]  # the 4 neighbours of each cell
        for _ in range(self.n_dangers):
            empty = tiles == EMPTY
            around = tiles[:, ring]
            clear = ((around == EMPTY) | (around == OBSTACLE)) if paper else (around == EMPTY)
            valid &= self._place(tiles, empty & clear.all(-1) & interior, DANGER, generator, ring)
        value = grid_values(tiles, N, self.acceptance_horizon, self.slip, self.water_slip)[:, centre_cell(N)]
        low, high = self.return_window
        valid &= (value >= low) & (value <= high)
        return tiles, valid

    def _segments(self, count, n_segments, length, generator, device) -> torch.Tensor:
        """``[count, n_segments * length]`` cell indices of random horizontal/vertical segments."""
        N = self.size
        shape = (count, n_segments, 1)
        vertical = torch.rand(shape, generator=generator, device=device) < 0.5
        along = torch.randint(0, N - length + 1, shape, generator=generator, device=device)
        across = torch.randint(0, N, shape, generator=generator, device=device)
        step = torch.arange(length, device=device)
        row = torch.where(vertical, along + step, across)
        col = torch.where(vertical, across, along + step)
        return (row * N + col).view(count, -1)

    def _paper_segments(self, count, n_segments, length, generator, device) -> torch.Tensor:
        """``[count, n_segments * length]`` cell indices of segments grown from ``a1`` towards the centre line."""
        N, centre = self.size, self.size // 2
        shape = (count, n_segments, 1)
        vertical = torch.rand(shape, generator=generator, device=device) < 0.5
        start = torch.randint(0, N, shape, generator=generator, device=device)
        across = torch.randint(0, N, shape, generator=generator, device=device)
        coin = torch.randint(0, 2, shape, generator=generator, device=device) * 2 - 1  # used on the centre line
        direction = torch.where(start < centre, 1, torch.where(start > centre, -1, coin))
        along = start + direction * torch.arange(length, device=device)
        row = torch.where(vertical, along, across)
        col = torch.where(vertical, across, along)
        return (row * N + col).view(count, -1)

    @staticmethod
    def _place(tiles, eligible, code, generator, ring=None) -> torch.Tensor:
        """Write ``code`` on one cell drawn uniformly among ``eligible`` ones in each row (and ``WARNING`` on its
        ``ring`` neighbours); returns whether each row had an eligible cell (rows without one are left as is)."""
        score = torch.rand(tiles.shape, generator=generator, device=tiles.device)
        score = torch.where(eligible, score, -1.0)
        cell = score.argmax(1, keepdim=True)
        found = eligible.any(1)
        if ring is not None:
            around = ring[cell.squeeze(1)]
            tiles.scatter_(1, around, torch.where(found.view(-1, 1), WARNING, tiles.gather(1, around)))
        tiles.scatter_(1, cell, torch.where(found.view(-1, 1), code, tiles.gather(1, cell)))
        return found
