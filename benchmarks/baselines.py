"""Evaluation cost of every baseline: seconds per 1000 random-MDP tasks at H = 500, against the random policy.

    python benchmarks/baselines.py --num-tasks 1000 --horizon 500

Each method runs :func:`~rl3_torchrl.evaluation.evaluate_baseline` on the same held-out tasks (batches of 250);
``ratio`` is its wall time over the random policy's, measured in the same run (the env's own cost is in both).
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from rl3_torchrl.evaluation import BASELINES, evaluate_baseline

TARGET_S = 60.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="random_mdp")
    parser.add_argument("--methods", nargs="*", default=[m for m in BASELINES if m != "random"])
    parser.add_argument("--horizon", type=int, default=500)
    parser.add_argument("--num-tasks", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"{args.task}, H = {args.horizon}, {args.num_tasks} tasks, batch {args.batch_size}, {args.device}")
    kwargs = dict(horizon=args.horizon, num_tasks=args.num_tasks, batch_size=args.batch_size, device=args.device)

    def timed(method):
        start = time.perf_counter()
        result = evaluate_baseline(method, args.task, **kwargs)
        return (time.perf_counter() - start) * 1000 / args.num_tasks, result

    base, _ = timed("random")
    print(f"{'random':12s} {base:7.2f} s / 1000 tasks  ratio 1.00")
    rows = {"random": base}
    for method in args.methods:
        seconds, result = timed(method)
        rows[method] = seconds
        verdict = "met" if seconds <= TARGET_S else "MISSED"
        print(f"{method:12s} {seconds:7.2f} s / 1000 tasks  ratio {seconds / base:5.2f}  "
              f"(normalised return {result['normalized_mean']:.3f})  target ≤ {TARGET_S:.0f} s: {verdict}", flush=True)
    return rows


if __name__ == "__main__":
    main()
