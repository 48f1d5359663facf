"""Text and matplotlib renderings of gridworlds, rollouts and per-cell value maps.

Both functions take one grid of tile codes (see :mod:`~rl3_torchrl.envs.gridworld_generator`), as ``[N, N]`` or
flat ``[N * N]`` (a tensor, an array or nested lists), e.g. ``env.tiles()[i]``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rl3_torchrl.envs.gridworld_generator import EMPTY, OBSTACLE, TILE_CHARS, TILE_NAMES

TRAJECTORY_CHAR = "*"
# One colour per tile code: empty, start, obstacle, water, warning, danger, goal.
TILE_COLOURS = ("#f7f7f7", "#9ecae1", "#404040", "#3182bd", "#fdae6b", "#d62728", "#2ca02c")


def _as_grid(tiles) -> np.ndarray:
    grid = np.asarray(tiles.detach().cpu() if isinstance(tiles, torch.Tensor) else tiles)
    if grid.ndim == 1:
        size = math.isqrt(grid.size)
        if size * size != grid.size:
            raise ValueError(f"flat tiles must have a square number of cells, got {grid.size}.")
        grid = grid.reshape(size, size)
    if grid.ndim != 2 or grid.shape[0] != grid.shape[1]:
        raise ValueError(f"tiles must be one square grid, [N, N] or [N * N], got shape {tuple(grid.shape)}.")
    if grid.size and (grid.min() < 0 or grid.max() >= len(TILE_CHARS)):
        raise ValueError(f"tile codes must be in [0, {len(TILE_CHARS) - 1}], got {sorted(set(grid.flat))}.")
    return grid.astype(np.int64)


def render_text(tiles, trajectory=None) -> str:
    """One line per grid row, one character per tile: ``.`` empty, ``S`` start, ``#`` obstacle, ``W`` water,
    ``!`` warning, ``X`` danger, ``G`` goal.

    Args:
        tiles: one grid of tile codes, ``[N, N]`` or ``[N * N]``.
        trajectory (sequence of int, optional): visited cell indices (``row * N + col``, e.g. a rollout's
            ``"state"``); visited empty cells are drawn as ``*``.

    Examples:
        >>> from rl3_torchrl.envs.gridworld_generator import START, GOAL, WATER
        >>> print(render_text([[EMPTY, WATER, GOAL], [EMPTY, START, OBSTACLE], [EMPTY] * 3], trajectory=[4, 3, 0]))
        *WG
        *S#
        ...
    """
    chars = np.array(list(TILE_CHARS))[_as_grid(tiles)]
    if trajectory is not None:
        flat = chars.reshape(-1)
        cells = np.asarray(torch.as_tensor(trajectory).reshape(-1).cpu(), dtype=np.int64)
        visited = cells[flat[cells] == TILE_CHARS[EMPTY]]
        flat[visited] = TRAJECTORY_CHAR
    return "\n".join("".join(row) for row in chars)


def plot_grid(tiles, trajectory=None, values=None, ax=None, title: str | None = None):
    """Draw a grid with matplotlib, optionally with a trajectory and a per-cell value map.

    Args:
        tiles: one grid of tile codes, ``[N, N]`` or ``[N * N]``.
        trajectory (sequence of int, optional): cell indices drawn as a line from a circle (first) to a cross
            (last).
        values (optional): ``[N, N]`` or ``[N * N]`` per-cell values (e.g. value estimates); when given, the cells
            are coloured by value (obstacles stay grey) and the special tiles are labelled with their character.
        ax (matplotlib Axes, optional): where to draw; a new figure is made when ``None``.
        title (str, optional): the axes title.

    Returns:
        the matplotlib ``Axes``.

    Examples:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from rl3_torchrl.envs.gridworld_generator import START, GOAL
        >>> tiles = [[EMPTY, EMPTY, GOAL], [EMPTY, START, EMPTY], [EMPTY, EMPTY, EMPTY]]
        >>> ax = plot_grid(tiles, trajectory=[4, 5, 2], values=list(range(9)))
        >>> type(ax).__name__
        'Axes'
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    grid = _as_grid(tiles)
    size = grid.shape[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    tile_map = ListedColormap(TILE_COLOURS)
    if values is None:
        ax.imshow(grid, cmap=tile_map, vmin=-0.5, vmax=len(TILE_COLOURS) - 0.5)
        handles = [Patch(color=c, label=n) for c, n in zip(TILE_COLOURS, TILE_NAMES)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    else:
        value_grid = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=np.float64).reshape(size, size)
        image = ax.imshow(np.ma.masked_where(grid == OBSTACLE, value_grid), cmap="viridis")
        ax.imshow(np.ma.masked_where(grid != OBSTACLE, grid), cmap=ListedColormap([TILE_COLOURS[OBSTACLE]]))
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for (row, col), code in np.ndenumerate(grid):
            if code not in (EMPTY, OBSTACLE):
                ax.text(col, row, TILE_CHARS[code], ha="center", va="center", color="white", fontsize="small")
    if trajectory is not None:
        cells = np.asarray(torch.as_tensor(trajectory).reshape(-1).cpu(), dtype=np.int64)
        rows, cols = cells // size, cells % size
        ax.plot(cols, rows, color="black", linewidth=1.5, alpha=0.7)
        if cells.size:
            ax.plot(cols[0], rows[0], "o", color="black")
            ax.plot(cols[-1], rows[-1], "x", color="black", markersize=9)
    ax.set_xticks(np.arange(-0.5, size, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, size, 1), minor=True)
    ax.grid(which="minor", color="#bbbbbb", linewidth=0.5)
    ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
    if title is not None:
        ax.set_title(title)
    return ax
