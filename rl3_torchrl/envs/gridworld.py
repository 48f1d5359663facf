"""Procedurally generated gridworlds (the RL³ paper's navigation family) as one batched TorchRL env."""
from __future__ import annotations

import torch
from torchrl.data import Categorical

from rl3_torchrl._validation import check_int
from rl3_torchrl.envs.gridworld_generator import (
    N_MOVES,
    N_TILES,
    PERPENDICULAR,
    START,
    WATER,
    GridGenerator,
    centre_cell,
    grid_dynamics,
    move_probabilities,
)
from rl3_torchrl.envs.meta_env import MetaTaskEnv

TILES_KEY = "tiles"


class GridworldEnv(MetaTaskEnv):
    """A batch of procedurally generated gridworlds, one per row, as a TorchRL env.

    Every reset draws a new grid for each reset row (:class:`~rl3_torchrl.envs.gridworld_generator.GridGenerator`
    documents the generator and the tile codes). The agent starts at the centre and has 5 actions (0 noop, 1 N,
    2 E, 3 S, 4 W). Entering a tile pays −1 (empty or start), −2 (water), −10 (warning), −100 (danger, ends the
    inner episode) or +100 (goal, ends the inner episode); obstacles and the border cannot be crossed, and the agent
    then stays and pays its own tile's reward again (noop likewise). A move slips to one of its two perpendicular
    moves (50/50) with probability ``slip`` when leaving a dry tile and ``water_slip`` when leaving water; noop never
    slips. Inner episodes end only at a goal or a danger, after which the agent restarts at the centre; a
    meta-episode lasts ``horizon`` steps. The defaults are the paper's 13×13 family (the paper's settings,
    including the authors' grid layout rules); :attr:`PRESETS` adds 11×11 and the 13×13 out-of-distribution
    shifts, all with the paper's layout (pass ``layout="ours"`` for this project's first generator), and ``7x7``,
    a CPU-sized family of ours (not the paper's): the same tiles, rewards, slip and layout rules, with the counts,
    distances and horizons scaled down (see :attr:`PRESETS`).

    Args:
        num_envs (int): the number of grids held at once.

    Keyword Args:
        horizon (int): ``H``, the meta-episode length, default 350.
        observe_tiles (bool): also output ``"tiles"``, the ``[B, N * N]`` tile codes of each grid.
        split, seed, validate_actions, device: see :class:`~rl3_torchrl.envs.MetaTaskEnv`.
        **generator_kwargs: the task distribution, passed to
            :class:`~rl3_torchrl.envs.gridworld_generator.GridGenerator`: ``size`` (default 13), ``n_obstacles``,
            ``obstacle_length``, ``n_water``, ``water_length``, ``n_dangers``, ``goal_min_distance``, ``slip``,
            ``water_slip``, ``return_window``, ``acceptance_horizon``, ``max_rounds``, ``max_candidates`` and
            ``layout`` (``"paper"``, the default: the authors' order and placement of segments, goal and dangers;
            ``"ours"``: this project's first generator).

    Output keys: those of :class:`~rl3_torchrl.envs.MetaTaskEnv`, with ``observation`` = ``(row / N, col / N)`` of
    the current cell and ``state`` = ``row * N + col``.

    Examples:
        >>> from torchrl.envs import TransformedEnv, InitTracker
        >>> env = TransformedEnv(GridworldEnv.from_preset("11x11", num_envs=4, seed=0), InitTracker())
        >>> rollout = env.rollout(250)
        >>> rollout.batch_size, rollout["observation"].shape
        (torch.Size([4, 250]), torch.Size([4, 250, 2]))
        >>> env.base_env.tiles().shape
        torch.Size([4, 11, 11])
        >>> bool(rollout["next", "done"][:, -1].all())
        True
    """

    #: The paper's families and shifts, and ``7x7`` (ours, for CPU budgets): segment and danger counts scaled with
    #: the area (121 → 49 cells: 11 → 4 obstacles, 5 → 2 water, 2 → 1 danger), the goal distance and the acceptance
    #: DP's horizon with the side (8 → 5, i.e. about the same quarter of the cells far enough; 100 → 64), the
    #: acceptance window's lower end with the side (the paper's 50 steps of slack below 100 → 32) and ``H``
    #: (250 → 100) with the area, which leaves room for about 13 inner episodes of an optimal agent.
    PRESETS = {
        "7x7": {
            "size": 7,
            "horizon": 100,
            "n_obstacles": 4,
            "n_water": 2,
            "n_dangers": 1,
            "goal_min_distance": 5,
            "acceptance_horizon": 64,
            "return_window": (68.0, 100.0),
        },
        "11x11": {"size": 11, "horizon": 250},
        "13x13": {"size": 13, "horizon": 350},
        "13x13_dense": {"size": 13, "horizon": 350, "obstacle_length": 4},
        "13x13_deterministic": {"size": 13, "horizon": 350, "slip": 0.0},
        "13x13_watery": {"size": 13, "horizon": 350, "n_water": 8},
        "13x13_dangerous": {"size": 13, "horizon": 350, "n_dangers": 4},
        "13x13_corner": {"size": 13, "horizon": 350, "goal_min_distance": 12},
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        horizon: int = 350,
        observe_tiles: bool = False,
        split: str = "train",
        seed: int = 0,
        validate_actions: bool | None = None,
        device=None,
        **generator_kwargs,
    ):
        self.generator = GridGenerator(**generator_kwargs)
        self.size = self.generator.size
        self.observe_tiles = bool(observe_tiles)
        super().__init__(
            num_envs,
            self.size**2,
            N_MOVES,
            check_int("horizon", horizon, low=1),
            None,
            observation_dim=2,
            split=split,
            seed=seed,
            validate_actions=validate_actions,
            device=device,
        )
        B, S = self.batch_size[0], self.n_states
        self.register_buffer("_tiles", torch.zeros(B, S, dtype=torch.long, device=self.device))
        self.register_buffer("_destination", torch.zeros(B, S * N_MOVES, dtype=torch.long, device=self.device))
        self.register_buffer("_entry_reward", torch.zeros(B, S, device=self.device))
        self.register_buffer("_terminal", torch.zeros(B, S, dtype=torch.bool, device=self.device))
        self.register_buffer("_slip_p", torch.zeros(B, S, device=self.device))
        side = torch.tensor(PERPENDICULAR, device=self.device)
        self.register_buffer("_side_a", side[:, 0].contiguous())
        self.register_buffer("_side_b", side[:, 1].contiguous())
        cells = torch.arange(S, device=self.device)
        self.register_buffer("_coords", torch.stack([cells // self.size, cells % self.size], -1) / self.size)
        self._start_state.fill_(centre_cell(self.size))

    @property
    def slip(self) -> float:
        """The slip probability when leaving a dry tile."""
        return self.generator.slip

    @property
    def water_slip(self) -> float:
        """The slip probability when leaving water."""
        return self.generator.water_slip

    def tiles(self) -> torch.Tensor:
        """The current grids, ``[B, N, N]`` long tile codes (see
        :mod:`~rl3_torchrl.envs.gridworld_generator`).

        Examples:
            >>> env = GridworldEnv(num_envs=2, size=11, seed=0)
            >>> _ = env.reset()
            >>> int(env.tiles()[0, 5, 5])  # the start
            1
        """
        if not self._has_tasks:
            raise RuntimeError("tiles() needs grids: call env.reset() first.")
        return self._tiles.view(-1, self.size, self.size).clone()

    def set_tiles(self, tiles) -> None:
        """Replace the current grids by given ones (hand-built or saved) and put every agent on the start cell.

        Call it after :meth:`reset` (a later reset draws new grids); the meta-episode clock is unchanged.

        Args:
            tiles: ``[B, N, N]`` tile codes, or one ``[N, N]`` grid for every row; the centre must be the start.

        Examples:
            >>> from rl3_torchrl.envs.gridworld_generator import EMPTY, START, GOAL
            >>> env = GridworldEnv(num_envs=2, size=3, goal_min_distance=1, n_obstacles=0, n_water=0,
            ...                    n_dangers=0, slip=0.0)
            >>> td = env.reset()
            >>> env.set_tiles(torch.tensor([[EMPTY, GOAL, EMPTY], [EMPTY, START, EMPTY], [EMPTY] * 3]))
            >>> td = env.step(td.set("action", torch.tensor([1, 3])))  # north (into the goal), south
            >>> td["next", "reward"].flatten().tolist(), td["next", "inner_terminated"].flatten().tolist()
            ([100.0, -1.0], [True, False])
        """
        N, B = self.size, self.batch_size[0]
        tiles = torch.as_tensor(tiles, device=self.device)
        integer = not (tiles.dtype.is_floating_point or tiles.dtype.is_complex or tiles.dtype == torch.bool)
        if not integer or tuple(tiles.shape) not in ((B, N, N), (N, N)):
            raise ValueError(
                f"tiles must be integer codes of shape [{B}, {N}, {N}] or [{N}, {N}], got dtype={tiles.dtype}, "
                f"shape {tuple(tiles.shape)}."
            )
        tiles = tiles.long().expand(B, N, N).reshape(B, N * N)
        if bool(((tiles < 0) | (tiles >= N_TILES)).any()):
            raise ValueError(f"tile codes must be in [0, {N_TILES - 1}], got {sorted(set(tiles.unique().tolist()))}.")
        if bool((tiles[:, centre_cell(N)] != START).any()):
            raise ValueError(f"the centre cell ({N // 2}, {N // 2}) of every grid must be the start (code {START}).")
        self._write_tiles(tiles, torch.ones(B, dtype=torch.bool, device=self.device))
        self._state = self._start_state.clone()
        self._episode_t.zero_()
        self._has_tasks = True

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        super()._make_specs()
        if self.observe_tiles:
            self.observation_spec[TILES_KEY] = Categorical(
                N_TILES, shape=(*self.batch_size, self.n_states), dtype=torch.long, device=self.device
            )

    def _output(self, reached, inner_done, inner_terminated, done):
        out = super()._output(reached, inner_done, inner_terminated, done)
        if self.observe_tiles:
            out.set(TILES_KEY, self._tiles.clone())
        return out

    # ------------------------------------------------------------------ MetaTaskEnv hooks
    def _sample_tasks(self, mask: torch.Tensor) -> None:
        count = int(mask.sum())
        if count:
            self._write_tiles(self.generator.sample(count, self._task_rng, self.device), mask)

    def _write_tiles(self, tiles: torch.Tensor, mask: torch.Tensor) -> None:
        """Install ``tiles`` (``[mask.sum(), N * N]``) and their lookup tables in the rows where ``mask``."""
        destination, entry_reward, terminal = grid_dynamics(tiles, self.size)
        self._tiles[mask] = tiles
        self._destination[mask] = destination.flatten(1)
        self._entry_reward[mask] = entry_reward
        self._terminal[mask] = terminal
        self._slip_p[mask] = torch.where(tiles == WATER, self.water_slip, self.slip).to(self._slip_p.dtype)

    def _advance(self, state, action):
        draw = torch.rand(state.shape, generator=self._dynamics_rng, device=self.device)
        slip_p = self._slip_p.gather(1, state.unsqueeze(1)).squeeze(1)
        move = torch.where(
            draw < 0.5 * slip_p, self._side_a[action], torch.where(draw < slip_p, self._side_b[action], action)
        )
        reached = self._destination.gather(1, (state * N_MOVES + move).unsqueeze(1))
        reward = self._entry_reward.gather(1, reached).squeeze(1)
        terminal = self._terminal.gather(1, reached).squeeze(1)
        return reached.squeeze(1), reward, terminal

    def _observe(self, state):
        return self._coords[state]

    def _task_tensors(self) -> dict:
        B, S, A, M = self.batch_size[0], self.n_states, self.n_actions, N_MOVES
        table = move_probabilities(self.slip, self.water_slip, self.device)  # [2, A, M]
        probs = table[(self._tiles == WATER).long()]  # [B, S, A, M]
        destination = self._destination.view(B, S, 1, M).expand(B, S, A, M)
        transition = torch.zeros(B, S, A, S, device=self.device).scatter_add_(3, destination, probs)
        entry = self._entry_reward.gather(1, self._destination).view(B, S, 1, M)
        return {
            "transition": transition,
            "reward": (probs * entry).sum(-1),
            "terminal": self._terminal.clone(),
        }
