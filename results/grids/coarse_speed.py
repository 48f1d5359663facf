"""Training speed of RL³ and RL³-coarse side by side (claim 6): short runs of the recipe's loop, interleaved.

For each grid family, ``--repeats`` rounds each train RL³ and then RL³-coarse for ``--iterations`` iterations (the
``grids`` study's settings, 32 meta-episodes of the family's ``H``, one torch thread) in a fresh output folder;
the first iteration of each run is dropped (start-up). Writes ``coarse_speed.csv`` (one row per run: the median
training frames/s and the median seconds per iteration spent in the Q estimator) and prints a markdown table of
the medians over runs. Interleaving puts both algorithms under the same background load.

Usage: ``python results/grids/coarse_speed.py [--tasks gridworld_7x7 gridworld_11x11] [--repeats 3]``
"""
from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import torch

from rl3_torchrl.training import Trainer, load_config

HERE = Path(__file__).parent


def timed_run(task: str, algo: str, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config([f"env={task}", f"algo={algo}", "horizon=null", "num_envs=32", f"iterations={iterations}",
                           "ppo.reward_scale=0.01", "eval.every=0", "checkpoint.every=1000", "progress=false",
                           "logger.backend=csv", f"output_dir={out}"])
        trainer = Trainer(cfg)
        trainer.train()
        scalars = trainer.log_dir() / "scalars"
        rows = {}
        for key in ("frames_per_s", "time_q_estimation"):
            with open(scalars / f"{key}.csv") as f:
                rows[key] = statistics.median(float(line.split(",")[1]) for line in list(f)[1:])
    return {"task": task, "algo": algo, "iterations": iterations, **rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["gridworld_7x7", "gridworld_11x11"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = [timed_run(task, algo, args.iterations)
            for task in args.tasks for _ in range(args.repeats) for algo in ("rl3", "rl3_coarse")]
    with open(HERE / "coarse_speed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    print("| task | algo | frames/s (median over runs) | Q estimator s / iteration |\n|---|---|---|---|")
    for task in args.tasks:
        for algo in ("rl3", "rl3_coarse"):
            mine = [r for r in runs if r["task"] == task and r["algo"] == algo]
            print(f"| {task} | {algo} | {statistics.median(r['frames_per_s'] for r in mine):,.0f} | "
                  f"{statistics.median(r['time_q_estimation'] for r in mine):.3f} |")


if __name__ == "__main__":
    main()
