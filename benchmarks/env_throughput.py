"""Env-steps per second of our batched task families, through TorchRL and as a plain torch loop.

For every case and batch size it times, in the same run and interleaved:

* ``torchrl``: ``TransformedEnv(env, InitTracker())`` driven by ``step_and_maybe_reset`` (what a collector does),
  with random integer actions written straight into the TensorDict;
* ``plain``: the same dynamics as a plain torch loop (:meth:`MetaTaskEnv.advance_tasks` plus the observation),
  i.e. our per-step work without TorchRL's TensorDict protocol.

It prints env-steps/s (``B`` tasks × batched steps / s) for both and their ratio (TorchRL's overhead).

    python benchmarks/env_throughput.py            # all cases
    python benchmarks/env_throughput.py --quick    # fewer steps
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torchrl
from torchrl.envs import InitTracker, TransformedEnv

from rl3_torchrl.envs import GridworldEnv, RandomMDPEnv


def _random_mdp(num_envs: int):
    return RandomMDPEnv(num_envs, horizon=512, validate_actions=False)


def _gridworld_13x13(num_envs: int, horizon: int = 1000):
    # horizon > the timed steps, so that no task reset (grid generation, timed on its own) falls in the timing
    return GridworldEnv.from_preset("13x13", num_envs, horizon=horizon, validate_actions=False)


# name -> (env factory, batch sizes)
CASES = {"random_mdp": (_random_mdp, (64, 4096)), "gridworld_13x13": (_gridworld_13x13, (96, 4096))}


def time_torchrl(tenv: TransformedEnv, steps: int, rng: torch.Generator) -> float:
    env = tenv.base_env
    td = tenv.reset()
    start = time.perf_counter()
    for _ in range(steps):
        td["action"] = torch.randint(env.n_actions, env.batch_size, generator=rng, device=env.device)
        _, td = tenv.step_and_maybe_reset(td)
    return time.perf_counter() - start


def time_plain(env, steps: int, rng: torch.Generator) -> float:
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        action = torch.randint(env.n_actions, env.batch_size, generator=rng, device=env.device)
        env.advance_tasks(action)
        env._observe(env._state)
    return time.perf_counter() - start


def measure(name: str, num_envs: int, steps: int, repeats: int) -> dict:
    factory, _ = CASES[name]
    env = factory(num_envs)
    tenv = TransformedEnv(env, InitTracker())
    rng = torch.Generator().manual_seed(0)
    time_torchrl(tenv, 20, rng), time_plain(env, 20, rng)  # warm-up
    torchrl_times, plain_times = [], []
    for _ in range(repeats):  # interleaved, so that machine noise hits both alike
        torchrl_times.append(time_torchrl(tenv, steps, rng))
        plain_times.append(time_plain(env, steps, rng))
    t_rl, t_plain = statistics.median(torchrl_times), statistics.median(plain_times)
    return {
        "case": name,
        "B": num_envs,
        "torchrl_steps_per_s": num_envs * steps / t_rl,
        "plain_steps_per_s": num_envs * steps / t_plain,
        "torchrl_ms_per_step": 1e3 * t_rl / steps,
        "plain_ms_per_step": 1e3 * t_plain / steps,
        "overhead": t_rl / t_plain,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, repeats = (100, 3) if args.quick else (500, 5)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, torchrl {torchrl.__version__}; {steps} steps, median of {repeats}"
    )
    header = (
        f"{'case':<22}{'B':>6}{'torchrl steps/s':>18}{'plain steps/s':>16}{'ms/step rl':>12}{'ms/step plain':>15}"
        f"{'ratio':>7}"
    )
    print(header)
    for name in args.cases:
        for num_envs in CASES[name][1]:
            r = measure(name, num_envs, steps, repeats)
            print(
                f"{r['case']:<22}{r['B']:>6}{r['torchrl_steps_per_s']:>18,.0f}{r['plain_steps_per_s']:>16,.0f}"
                f"{r['torchrl_ms_per_step']:>12.3f}{r['plain_ms_per_step']:>15.3f}{r['overhead']:>7.2f}"
            )
    if "gridworld_13x13" in args.cases:
        report_grid_generation(repeats)


def report_grid_generation(repeats: int, rollout_envs: int = 96, rollout_steps: int = 350) -> None:
    """Grids/s of the 13×13 generator, and one ``rollout_envs``-grid batch against a ``rollout_steps``-step rollout
    of ``rollout_envs`` envs through TorchRL (one paper meta-episode)."""
    env = _gridworld_13x13(rollout_envs)
    tenv = TransformedEnv(env, InitTracker())
    rng = torch.Generator().manual_seed(0)
    time_torchrl(tenv, 20, rng)  # warm-up
    print(f"\n# grid generation, preset 13x13 (rejection sampling incl. the exact 100-step DP), median of {repeats}")
    print(f"{'grids':>8}{'ms per batch':>14}{'grids/s':>10}")
    batch_time = {}
    for count in (rollout_envs, 4096):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            env.generator.sample(count, rng)
            times.append(time.perf_counter() - start)
        batch_time[count] = statistics.median(times)
        print(f"{count:>8}{1e3 * batch_time[count]:>14.1f}{count / batch_time[count]:>10,.0f}")
    rollout = statistics.median(time_torchrl(tenv, rollout_steps, rng) for _ in range(repeats))
    batch = batch_time[rollout_envs]
    print(
        f"{rollout_envs}-grid batch {1e3 * batch:.1f} ms vs a {rollout_steps}-step rollout at B={rollout_envs} "
        f"{1e3 * rollout:.1f} ms (ratio {batch / rollout:.3f})"
    )


if __name__ == "__main__":
    main()
