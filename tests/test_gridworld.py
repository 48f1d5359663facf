"""Tests of the procedurally generated gridworlds: env contract, generator, dynamics, oracle and rendering."""
from __future__ import annotations


import matplotlib
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import InitTracker, TransformedEnv
from torchrl.envs.utils import check_env_specs

from rl3_torchrl.envs import GridGenerator, GridworldEnv, grid_values, oracle_return, plot_grid, render_text
from rl3_torchrl.envs.gridworld_generator import (
    DANGER,
    EMPTY,
    ENTRY_REWARDS,
    GOAL,
    MOVE_OFFSETS,
    OBSTACLE,
    START,
    TILE_CHARS,
    WARNING,
    WATER,
    centre_cell,
)

matplotlib.use("Agg")

PRESETS = list(GridworldEnv.PRESETS)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are small: on a shared 2-core machine, 2 intra-op threads spinning against other jobs made
    single tests up to 50x slower than 1 thread (measured). The setting is restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- helpers
def numpy_model(tiles: np.ndarray, slip: float, water_slip: float):
    """An independent dense model of one grid: P [S, A, S], R [S, A], terminal [S], built cell by cell."""
    N = tiles.shape[0]
    S = N * N
    P, R = np.zeros((S, 5, S)), np.zeros((S, 5))
    terminal = np.isin(tiles.reshape(-1), [DANGER, GOAL])
    sides = {1: (2, 4), 3: (2, 4), 2: (1, 3), 4: (1, 3)}
    for r in range(N):
        for c in range(N):
            s = r * N + c
            p = water_slip if tiles[r, c] == WATER else slip
            for a in range(5):
                outcomes = [(0, 1.0)] if a == 0 else [(a, 1 - p), (sides[a][0], p / 2), (sides[a][1], p / 2)]
                for move, prob in outcomes:
                    dr, dc = MOVE_OFFSETS[move]
                    rr, cc = r + dr, c + dc
                    if not (0 <= rr < N and 0 <= cc < N) or tiles[rr, cc] == OBSTACLE:
                        rr, cc = r, c
                    P[s, a, rr * N + cc] += prob
                    R[s, a] += prob * ENTRY_REWARDS[tiles[rr, cc]]
    return P, R, terminal


def numpy_episode_value(tiles: np.ndarray, slip: float, water_slip: float, horizon: int) -> np.ndarray:
    """Optimal undiscounted value of one inner episode (terminal states absorb), plain dense backward induction."""
    P, R, terminal = numpy_model(tiles, slip, water_slip)
    v = np.zeros(P.shape[0])
    for _ in range(horizon):
        v = (R + P @ np.where(terminal, 0.0, v)).max(1)
    return v


def grid(rows: list[str]) -> torch.Tensor:
    """A hand-built grid from its text rendering."""
    return torch.tensor([[TILE_CHARS.index(ch) for ch in row] for row in rows])


def hand_env(num_envs: int, rows, **kwargs) -> tuple[GridworldEnv, TensorDict]:
    """A reset env whose grids are all replaced by ``rows`` (text rows or an ``[N, N]`` tensor of codes); its own
    generator is kept trivial, so that the reset is cheap."""
    tiles = grid(rows) if isinstance(rows, list) else rows
    trivial = {"n_obstacles": 0, "n_water": 0, "n_dangers": 0, "goal_min_distance": 1}
    env = GridworldEnv(num_envs=num_envs, size=tiles.shape[-1], **{**trivial, **kwargs})
    td = env.reset()
    env.set_tiles(tiles)
    return env, td


def step(env, td, actions):
    td = env.step(td.set("action", torch.as_tensor(actions)))
    return td, env.step_mdp(td)


def displacement(before: torch.Tensor, after: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """The (d_row, d_col) of each move from cell ``before`` to cell ``after``."""
    rows, cols = (after // size - before // size).tolist(), (after % size - before % size).tolist()
    return list(zip(rows, cols))


# ---------------------------------------------------------------------------------------------- env contract
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("num_envs", [1, 3])
def test_check_env_specs(preset, num_envs):
    env = GridworldEnv.from_preset(preset, num_envs=num_envs, seed=1)
    check_env_specs(env)
    check_env_specs(env, break_when_any_done="both")


def test_specs_with_tiles_and_init_tracker():
    env = GridworldEnv.from_preset("11x11", num_envs=2, horizon=5, observe_tiles=True)
    check_env_specs(env, break_when_any_done="both")
    rollout = TransformedEnv(env, InitTracker()).rollout(12, break_when_any_done=False)
    assert rollout["tiles"].shape == (2, 12, 121)
    assert torch.equal(rollout["tiles"][:, -1], env.tiles().flatten(1))
    assert rollout["is_init"][:, [0, 5, 10]].all() and rollout["next", "done"][:, [4, 9]].all()


def test_observation_is_normalised_position():
    env = GridworldEnv(num_envs=4, seed=0)
    rollout = env.rollout(100)
    state = rollout["next", "state"]
    expected = torch.stack([state // 13, state % 13], -1) / 13
    assert torch.allclose(rollout["next", "observation"], expected)
    assert (rollout["state"][:, 0] == centre_cell(13)).all()


# ---------------------------------------------------------------------------------------------- generator
@pytest.mark.parametrize("preset", PRESETS)
def test_generator_invariants(preset):
    env = GridworldEnv.from_preset(preset, num_envs=128, seed=7)
    env.reset()
    gen, N = env.generator, env.size
    tiles = env.tiles()
    flat = tiles.flatten(1)
    c = N // 2
    assert (tiles[:, c, c] == START).all() and ((flat == START).sum(1) == 1).all()
    assert ((flat == GOAL).sum(1) == 1).all()
    goal = (flat == GOAL).long().argmax(1)
    assert ((goal // N - c).abs() + (goal % N - c).abs() >= gen.goal_min_distance).all()
    assert ((flat == DANGER).sum(1) == gen.n_dangers).all()
    assert ((flat == WARNING).sum(1) == 4 * gen.n_dangers).all()
    assert ((flat == OBSTACLE).sum(1) <= gen.n_obstacles * gen.obstacle_length).all()
    if gen.layout == "ours":  # obstacles go last there; in the paper's layout water, goal and warnings overwrite them
        assert ((flat == OBSTACLE).sum(1) >= gen.obstacle_length - 1).all()
    assert ((flat == WATER).sum(1) <= gen.n_water * gen.water_length).all()
    padded = torch.nn.functional.pad(tiles, (1, 1, 1, 1), value=-1)
    b, r, col = (tiles == DANGER).nonzero(as_tuple=True)
    assert ((r > 0) & (r < N - 1) & (col > 0) & (col < N - 1)).all()
    for dr, dc in MOVE_OFFSETS[1:]:
        assert (padded[b, r + 1 + dr, col + 1 + dc] == WARNING).all()
    # the acceptance criterion, re-checked by an independent dense DP on a subset
    values = grid_values(flat, N, gen.acceptance_horizon, gen.slip, gen.water_slip)[:, centre_cell(N)]
    low, high = gen.return_window
    assert ((values >= low) & (values <= high)).all()
    for i in range(3):
        v = numpy_episode_value(tiles[i].numpy(), gen.slip, gen.water_slip, gen.acceptance_horizon)
        assert v[centre_cell(N)] == pytest.approx(float(values[i]), abs=1e-3)
        assert low <= v[centre_cell(N)] <= high


def test_grid_values_rejected_candidates_match_numpy():
    gen = GridGenerator(size=11, n_obstacles=25)  # a dense setting where many candidates are rejected
    tiles, valid = gen.candidates(60, torch.Generator().manual_seed(3), "cpu")
    assert 0 < int(valid.sum()) < 60
    values = grid_values(tiles, 11, 100, 0.2, 1.0)[:, centre_cell(11)]
    for i in range(8):
        v = numpy_episode_value(tiles[i].view(11, 11).numpy(), 0.2, 1.0, 100)[centre_cell(11)]
        assert v == pytest.approx(float(values[i]), abs=1e-3)
        placed = int((tiles[i] == GOAL).sum()) == 1 and int((tiles[i] == DANGER).sum()) == 2
        assert bool(valid[i]) == (placed and 50 <= v <= 100)


def paper_segment_coverage(N, length):
    """P(one segment of the paper's rules covers cell (r, c)), ``[N, N]``, by enumerating its placements."""
    centre, p = N // 2, np.zeros((N, N))
    for vertical in (True, False):
        for a1 in range(N):
            directions = [1] if a1 < centre else [-1] if a1 > centre else [1, -1]
            for d in directions:
                for other in range(N):
                    for k in range(length):
                        r, c = (a1 + d * k, other) if vertical else (other, a1 + d * k)
                        p[r, c] += 0.5 / N / N / len(directions)
    return p


def expected_water_cells(N, n_obstacles, obstacle_length, n_water, water_length, goal_min_distance):
    """The exact mean number of water cells of a candidate grid under the paper's rules (before acceptance).

    A cell is water iff some water segment covers it (water goes on last) and neither the start (the centre) nor
    the goal (uniform over the far cells, independent of the segments) was put there; dangers and warnings never
    land on water.
    """
    water = 1 - (1 - paper_segment_coverage(N, water_length)) ** n_water
    rows, cols = np.indices((N, N))
    far = np.abs(rows - N // 2) + np.abs(cols - N // 2) >= goal_min_distance
    water[N // 2, N // 2] = 0.0
    return water.sum() - water[far].mean()


def numpy_paper_grid(rng, N=13, n_obstacles=11, obstacle_length=3, n_water=5, water_length=2, n_dangers=2,
                     goal_min_distance=8):  # fmt: skip
    """One candidate grid drawn by the paper's rules with plain numpy, one decision at a time."""
    grid, centre = np.full((N, N), EMPTY), N // 2
    for n, length, code in ((n_obstacles, obstacle_length, OBSTACLE), (n_water, water_length, WATER)):
        for _ in range(n):
            vertical, a1, other = rng.random() < 0.5, rng.integers(N), rng.integers(N)
            d = 1 if a1 < centre else -1 if a1 > centre else rng.choice([-1, 1])
            for k in range(length):
                grid[(a1 + d * k, other) if vertical else (other, a1 + d * k)] = code
    grid[centre, centre] = START
    far = [(r, c) for r in range(N) for c in range(N) if abs(r - centre) + abs(c - centre) >= goal_min_distance]
    grid[far[rng.integers(len(far))]] = GOAL
    for _ in range(n_dangers):
        for _ in range(100_000):  # draw an interior cell until it qualifies
            r, c = rng.integers(1, N - 1, size=2)
            around = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
            if grid[r, c] == EMPTY and all(grid[x] in (EMPTY, OBSTACLE) for x in around):
                break
        grid[r, c] = DANGER
        for x in around:
            grid[x] = WARNING
    return grid


def test_paper_layout_tile_counts_match_the_rules():
    """Mean tile counts of 2000 candidate grids (before the acceptance filter) against figures derived from the
    rules: the exact mean of water cells, and an independent numpy Monte Carlo of 6000 grids for the obstacles."""
    gen = GridGenerator()  # the paper's 13×13 family
    tiles, _ = gen.candidates(2000, torch.Generator().manual_seed(11), "cpu")
    n_water, n_obstacle = (tiles == WATER).sum(1).double().numpy(), (tiles == OBSTACLE).sum(1).double().numpy()
    rng = np.random.default_rng(0)
    reference = np.stack([numpy_paper_grid(rng) for _ in range(6000)])
    ref_water = (reference == WATER).sum((1, 2)).astype(float)
    ref_obstacle = (reference == OBSTACLE).sum((1, 2)).astype(float)
    exact_water = expected_water_cells(13, 11, 3, 5, 2, 8)

    def se(x):
        return x.std(ddof=1) / np.sqrt(len(x))

    assert abs(n_water.mean() - exact_water) < 4 * se(n_water), (n_water.mean(), exact_water)
    assert abs(ref_water.mean() - exact_water) < 4 * se(ref_water)  # the Monte Carlo agrees with the exact figure
    tolerance = 4 * np.hypot(se(n_obstacle), se(ref_obstacle))
    assert abs(n_obstacle.mean() - ref_obstacle.mean()) < tolerance, (n_obstacle.mean(), ref_obstacle.mean())
    # every rule-fixed count is exact, and the layout is really the paper's (ours has ≈ 7.8 water, 29.9 obstacles)
    for code, count in ((START, 1), (GOAL, 1), (DANGER, 2), (WARNING, 8)):
        assert bool(((tiles == code).sum(1) == count).all()) and bool(((reference == code).sum((1, 2)) == count).all())
    assert abs(exact_water - 7.8) > 1.0


def test_our_layout_reproduces_the_previous_generator():
    """``layout="ours"``: the grids of this project's first generator (a checksum of 16 grids per size, recorded
    from it before the paper's layout was added)."""
    for size, checksum in ((11, 119920), (13, 180029)):
        tiles = GridGenerator(size=size, layout="ours").sample(16, torch.Generator().manual_seed(0))
        assert int((tiles * torch.arange(size * size)).sum()) == checksum


def test_corner_goals_and_presets():
    env = GridworldEnv.from_preset("13x13_corner", num_envs=50, seed=0)
    env.reset()
    goal = (env.tiles().flatten(1) == GOAL).long().argmax(1)
    assert set(goal.tolist()) <= {0, 12, 156, 168}
    assert GridworldEnv.from_preset("13x13_deterministic").slip == 0.0
    assert GridworldEnv.from_preset("13x13_deterministic").water_slip == 1.0
    assert GridworldEnv.from_preset("11x11").horizon == 250 and GridworldEnv.from_preset("13x13").horizon == 350



def test_small_preset_is_the_paper_rules_scaled_down():
    """``7x7`` (ours): the paper's rules with scaled counts. Its candidates have the tile counts of an independent
    numpy draw by the paper's rules with the same parameters, the acceptance decision of a dense numpy DP, and the
    coarse abstraction has a default radius that pairs orthogonal neighbours only."""
    from rl3_torchrl.transforms import StateAbstraction

    env = GridworldEnv.from_preset("7x7")
    gen = env.generator
    assert (env.size, env.horizon, gen.acceptance_horizon, gen.return_window) == (7, 100, 64, (68.0, 100.0))
    counts = (gen.n_obstacles, gen.obstacle_length, gen.n_water, gen.water_length, gen.n_dangers)
    assert counts == (4, 3, 2, 2, 1) and gen.goal_min_distance == 5 and gen.layout == "paper"
    tiles, valid = gen.candidates(400, torch.Generator().manual_seed(5), "cpu")
    rng = np.random.default_rng(1)
    reference = np.stack([numpy_paper_grid(rng, 7, 4, 3, 2, 2, 1, 5) for _ in range(2000)])
    for code in (OBSTACLE, WATER, WARNING, GOAL):
        ours, ref = (tiles == code).sum(1).double().numpy(), (reference == code).sum((1, 2)).astype(float)
        se = np.hypot(ours.std(ddof=1) / np.sqrt(len(ours)), ref.std(ddof=1) / np.sqrt(len(ref)))
        assert abs(ours.mean() - ref.mean()) <= 4 * se + 1e-9, (TILE_CHARS[code], ours.mean(), ref.mean())
    for i in range(40):
        value = numpy_episode_value(tiles[i].view(7, 7).numpy(), 0.2, 1.0, 64)[centre_cell(7)]
        assert bool(valid[i]) == (68 <= value <= 100), (i, value)
    assert 0.5 < float(valid.float().mean()) < 1.0  # the window does reject grids
    neighbours = StateAbstraction.grid(7).radius * 7
    assert 1.0 < neighbours < 2**0.5



def test_goal_rate_of_an_evaluation_counts_goals_in_inner_episodes():
    """The oracle on hand-checkable numbers: on 7×7 grids it reaches the goal in almost every inner episode (only
    the one cut off at H, and slips into a danger, are lost), the random policy rarely; random MDPs have no rate."""
    from rl3_torchrl.evaluation import evaluate_baseline, inner_episode_goals

    oracle = evaluate_baseline("oracle", "gridworld_7x7", num_tasks=16)
    random = evaluate_baseline("random", "gridworld_7x7", num_tasks=16)
    assert 0.85 < oracle["goal_rate"] < 1.0 and random["goal_rate"] < 0.3
    assert "goal_rate" not in evaluate_baseline("random", "random_mdp", horizon=5, num_tasks=2)
    reward = torch.tensor([[-1.0, 100.0, -100.0, 100.0]])
    reached, started = inner_episode_goals(reward, torch.tensor([[False, True, True, True]]), 100.0)
    assert (reached.item(), started.item()) == (2, 3)  # the last step ended an episode: no fourth one started


# ---------------------------------------------------------------------------------------------- dynamics
@pytest.mark.parametrize("slip,water_slip", [(0.2, 1.0), (0.3, 0.6)])
def test_slip_frequencies(slip, water_slip):
    """From the dry start (step 1) and from water (step 2), displacements follow the slip model."""
    B = 4000
    env, td = hand_env(B, ["G....", "..W..", ".WSW.", "..W..", "....."], slip=slip, water_slip=water_slip)
    for source, tile_slip in (("start", slip), ("water", water_slip)):
        before = env._state.clone()
        actions = torch.arange(B) % 5
        out, td = step(env, td, actions)
        moved = displacement(before, out["next", "reached_state"], 5)
        for action in range(5):
            rows = (actions == action).nonzero().flatten().tolist()
            counts = {}
            for i in rows:
                counts[moved[i]] = counts.get(moved[i], 0) + 1
            intended = MOVE_OFFSETS[action]
            if action == 0:
                assert counts == {(0, 0): len(rows)}, source
                continue
            backwards = (-intended[0], -intended[1])
            assert counts.get(backwards, 0) == 0 and counts.get((0, 0), 0) == 0, (source, counts)
            n = len(rows)
            for move, p in ((intended, 1 - tile_slip),) + tuple(
                (side, tile_slip / 2) for side in MOVE_OFFSETS[1:] if side not in (intended, backwards)
            ):
                k = counts.get(move, 0)
                assert abs(k - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1e-9, (source, action, move, k, n, p)


def test_task_mdp_matches_dynamics_and_numpy():
    source = GridworldEnv(num_envs=1, size=11, seed=3, layout="ours")  # a grid whose random walks cover > 50 cells
    source.reset()
    one = source.tiles()[0]
    mdp = source.task_mdp()
    P, R, terminal = numpy_model(one.numpy(), 0.2, 1.0)
    assert np.allclose(mdp["transition"][0].numpy(), P, atol=1e-6)
    assert np.allclose(mdp["reward"][0].numpy(), R, atol=1e-5)
    assert np.array_equal(mdp["terminal"][0].numpy(), terminal)
    assert (mdp["start_state"] == centre_cell(11)).all() and (mdp["episode_length"] == 0).all()
    # empirical transitions of many random steps on the same grid
    B, S = 1000, source.n_states
    env, td = hand_env(B, one)
    counts = torch.zeros(S, 5, S)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        s = env._state.clone()
        a = torch.randint(0, 5, (B,), generator=gen)
        out, td = step(env, td, a)
        reached = out["next", "reached_state"]
        counts.index_put_((s, a, reached), torch.ones(B), accumulate=True)
        expected_reward = torch.tensor(ENTRY_REWARDS)[one.flatten()[reached]]
        assert torch.equal(out["next", "reward"].flatten(), expected_reward)
    P = torch.as_tensor(P, dtype=torch.float32)
    assert (P[counts > 0] > 0).all()  # every observed transition is possible
    n = counts.sum(-1, keepdim=True)
    seen = (n >= 200).expand_as(counts)
    empirical = counts / n.clamp(min=1)
    bound = 5 * torch.sqrt(P * (1 - P) / n.clamp(min=1)) + 1e-3
    assert int(seen[..., 0].sum()) > 50
    assert ((empirical - P).abs() <= bound)[seen].all()


def test_hand_built_grid_bumps_noop_and_restarts():
    env, td = hand_env(1, [".....", "..#..", "GWS.X", ".....", "....."], slip=0.0, water_slip=0.0, horizon=50)
    centre = centre_cell(5)
    expected = [
        # action, reward, reached, inner_terminated
        (1, -1.0, centre, False),  # north into the obstacle: stays, pays the start tile's -1
        (0, -1.0, centre, False),  # noop pays its own tile again
        (4, -2.0, centre - 1, False),  # west into water
        (0, -2.0, centre - 1, False),  # noop on water pays water again
        (4, 100.0, centre - 2, True),  # into the goal: the inner episode ends, back at the centre
        (2, -1.0, centre + 1, False),
        (2, -100.0, centre + 2, True),  # into the danger
        (3, -1.0, centre + 5, False),
        (3, -1.0, centre + 10, False),
        (3, -1.0, centre + 10, False),  # south off the grid: stays on an empty tile
    ]
    for t, (action, reward, reached, ended) in enumerate(expected):
        out, td = step(env, td, [action])
        nxt = out["next"]
        assert nxt["reward"].item() == reward, t
        assert nxt["reached_state"].item() == reached, t
        assert nxt["inner_terminated"].item() == ended and nxt["inner_done"].item() == ended, t
        assert nxt["state"].item() == (centre if ended else reached), t
        assert nxt["meta_step"].item() == pytest.approx((t + 1) / 50)
        assert not nxt["done"].item()
        if ended:
            assert nxt["episode_step"].item() == 0.0
            assert torch.allclose(nxt["observation"], torch.tensor([[2 / 5, 2 / 5]]))


def test_oracle_return_on_hand_built_grid():
    rows = ["..G..", ".....", "..S..", ".....", "....."]
    env, _ = hand_env(2, rows, slip=0.0, horizon=10)
    # north, north (+100) and restart: 99 every 2 steps
    assert oracle_return(env).tolist() == pytest.approx([495.0, 495.0])
    slippery, _ = hand_env(1, rows, horizon=10)
    assert float(oracle_return(slippery)) < 495.0


# ---------------------------------------------------------------------------------------------- seeding and resets
def test_reproducible_and_split():
    def run(**kwargs):
        env = GridworldEnv.from_preset("11x11", num_envs=3, **kwargs)
        torch.manual_seed(0)
        rollout = env.rollout(260, break_when_any_done=False)
        return env.tiles(), rollout

    tiles_a, roll_a = run(seed=5)
    tiles_b, roll_b = run(seed=5)
    assert torch.equal(tiles_a, tiles_b)
    assert (roll_a == roll_b).all()
    tiles_test, _ = run(seed=5, split="test")
    tiles_other, _ = run(seed=6)
    assert not torch.equal(tiles_a, tiles_test) and not torch.equal(tiles_a, tiles_other)


def test_reseeding_restarts_the_task_stream():
    env = GridworldEnv(num_envs=4, seed=3)
    env.reset()
    first = env.tiles()
    env.reset()
    assert not torch.equal(first, env.tiles())
    env.set_seed(3)
    env.reset()
    assert torch.equal(first, env.tiles())


def test_partial_reset_regenerates_only_masked_rows():
    env = GridworldEnv(num_envs=6, seed=0)
    td = env.reset()
    for _ in range(5):
        td = env.rand_step(td)
        td = env.step_mdp(td)
    tiles, mdp = env.tiles(), env.task_mdp()
    states = env._state.clone()
    mask = torch.tensor([True, False, True, False, False, True])
    out = env.reset(TensorDict({"_reset": mask.unsqueeze(-1)}, batch_size=[6]))
    new_tiles, new_mdp = env.tiles(), env.task_mdp()
    assert torch.equal(new_tiles[~mask], tiles[~mask])
    assert (new_tiles[mask] != tiles[mask]).flatten(1).any(1).all()
    assert (new_mdp[~mask] == mdp[~mask]).all()
    assert (out["state"][mask] == centre_cell(13)).all() and (out["meta_step"][mask] == 0).all()
    assert torch.equal(env._state[~mask], states[~mask]) and (env._meta_t[~mask] == 5).all()


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"size": 2}, ValueError, "size=2"),
        ({"size": 13.0}, TypeError, "size"),
        ({"obstacle_length": 14}, ValueError, "obstacle_length=14"),
        ({"goal_min_distance": 13}, ValueError, "farthest"),
        ({"size": 11, "goal_min_distance": 11}, ValueError, "allowed: \\[1, 10\\]"),
        ({"slip": 1.5}, ValueError, "slip=1.5"),
        ({"water_slip": -0.1}, ValueError, "water_slip"),
        ({"return_window": (100, 50)}, ValueError, "return_window"),
        ({"return_window": 50}, ValueError, "return_window"),
        ({"n_dangers": -1}, ValueError, "n_dangers"),
        ({"max_rounds": 0}, ValueError, "max_rounds"),
        ({"horizon": 0}, ValueError, "horizon"),
        ({"layout": "authors"}, ValueError, r"layout='authors' is not allowed; choose one of \['paper', 'ours'\]"),
        ({"size": 5, "obstacle_length": 4}, ValueError, r"obstacle_length=4 does not fit layout='paper'.*\[1, 3\]"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GridworldEnv(num_envs=2, **kwargs)


@pytest.mark.parametrize("kwargs", [{"n_obstacles": 200}, {"n_dangers": 30}, {"return_window": (101.0, 200.0)}])
def test_impossible_generator_settings_raise_after_bounded_rounds(kwargs):
    env = GridworldEnv(num_envs=2, max_rounds=2, max_candidates=64, **kwargs)
    name = next(iter(kwargs))
    with pytest.raises(RuntimeError, match=f"max_rounds=2.*{name}="):
        env.reset()


def test_unknown_preset_and_bad_tiles():
    with pytest.raises(ValueError, match="preset='12x12'.*13x13_dense"):
        GridworldEnv.from_preset("12x12")
    with pytest.raises(RuntimeError, match="reset"):
        GridworldEnv(num_envs=2).tiles()
    env, _ = hand_env(2, ["G....", ".....", "..S..", ".....", "....."])
    with pytest.raises(ValueError, match="shape"):
        env.set_tiles(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="centre"):
        env.set_tiles(torch.zeros(5, 5, dtype=torch.long))
    bad = torch.full((5, 5), 9)
    bad[2, 2] = START
    with pytest.raises(ValueError, match="codes"):
        env.set_tiles(bad)


# ---------------------------------------------------------------------------------------------- rendering
def test_render_text_characters_and_counts():
    env = GridworldEnv(num_envs=2, seed=0)
    env.reset()
    tiles = env.tiles()[1]
    text = render_text(tiles)
    lines = text.splitlines()
    assert len(lines) == 13 and all(len(line) == 13 for line in lines)
    for code, char in enumerate(TILE_CHARS):
        assert text.count(char) == int((tiles == code).sum()), char
    assert lines[6][6] == "S" and text.count("G") == 1 and text.count("X") == 2 and text.count("!") == 8
    assert render_text(tiles.flatten()) == text
    path = render_text(tiles, trajectory=torch.arange(169))
    assert path.count("*") == int((tiles == EMPTY).sum()) and path.count(".") == 0


def test_plot_grid_with_trajectory_and_values():
    import matplotlib.pyplot as plt

    env = GridworldEnv(num_envs=1, seed=0)
    rollout = env.rollout(50)
    tiles = env.tiles()[0]
    ax = plot_grid(tiles, trajectory=rollout["next", "reached_state"][0], values=torch.randn(13, 13), title="t")
    assert isinstance(ax, matplotlib.axes.Axes) and ax.get_title() == "t"
    fig, axes = plt.subplots(1, 2)
    assert plot_grid(tiles.flatten(), ax=axes[0]) is axes[0]
    plt.close("all")
    with pytest.raises(ValueError, match="square"):
        render_text(torch.zeros(10, dtype=torch.long))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    env = GridworldEnv.from_preset("13x13", num_envs=8, device="cuda", observe_tiles=True)
    check_env_specs(env, break_when_any_done="both")
    rollout = TransformedEnv(env, InitTracker()).rollout(400, break_when_any_done=False)
    assert rollout.device.type == "cuda" and rollout["next", "done"].sum() == 8
    assert oracle_return(env).device.type == "cuda"
