import sys, torch, numpy as np
sys.path.insert(0, "tests")
import importlib.util
spec = importlib.util.spec_from_file_location("t", "tests/test_online_q.py"); t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
from rl3_torchrl.transforms import OnlineQEstimator
from torchrl.envs import TransformedEnv
from rl3_torchrl.envs import GridworldEnv
device = sys.argv[1]
fails = []
for seed in range(int(sys.argv[2]) if len(sys.argv) > 2 else 40):
    for paper in (True, False):
        est = OnlineQEstimator.from_preset("gridworld", dtype=torch.float64, tol=1e-11, max_sweeps=20000,
                                           abstraction_radius=0.25, **({} if paper else t.OURS))
        env = TransformedEnv(GridworldEnv(num_envs=3, size=5, horizon=40, goal_min_distance=1, n_obstacles=0, n_water=0,
                         n_dangers=0, seed=0, device=device), est)
        td = env.reset(); env.base_env.set_tiles(torch.tensor(t.GRID))
        torch.manual_seed(seed)
        rollout = env.rollout(70, auto_reset=False, tensordict=td, break_when_any_done=False).cpu()
        coordinates = np.array([[c // 5 / 5, c % 5 / 5] for c in range(25)])
        try:
            t.check_rollout_against_reference(rollout, lambda: t.ReferenceModel(25, 5, laplace=0.01, gamma=0.95, sparse=True, radius=0.25, coordinates=coordinates, reward_model="transition" if paper else "pair"), atol=1e-7, cached=paper)
        except AssertionError as e:
            fails.append((seed, paper, str(e).splitlines()[:6]))
print(device, len(fails), "failures of", 2 * int(sys.argv[2])); [print(f) for f in fails[:5]]
