"""Grid search of the classical baselines' hyper-parameters on *training* tasks (never the held-out ones).

    python benchmarks/tune_baselines.py --num-tasks 500 --horizons 100 500

For every method and every point of its grid it runs :func:`~rl3_torchrl.evaluation.evaluate_baseline` with
``split="train"`` and prints the oracle-normalised return averaged over the horizons; the best point of each method
is the default of its row in :data:`~rl3_torchrl.evaluation.BASELINE_REGISTRY` (see docs/baselines.rst).
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch

from rl3_torchrl.evaluation import evaluate_baseline

GRIDS = {
    "eps_greedy": {"epsilon": [0.01, 0.02, 0.05, 0.1, 0.2]},
    "beb": {"beta": [0.1, 0.3, 1.0, 3.0, 10.0]},
    "ucrl2": {"scale": [0.01, 0.03, 0.1, 0.3, 1.0], "delta": [0.05, 0.5]},
    "opsrl": {"num_samples": [2, 4, 8, 16]},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="random_mdp")
    parser.add_argument("--methods", nargs="*", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--horizons", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--num-tasks", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="seed of the training task stream")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    best = {}
    for method in args.methods:
        names, values = zip(*GRIDS[method].items())
        for point in itertools.product(*values):
            params = dict(zip(names, point))
            start = time.perf_counter()
            scores = [
                evaluate_baseline(method, args.task, params=params, horizon=h, num_tasks=args.num_tasks,
                                  seed=args.seed, split="train")["normalized_mean"]
                for h in args.horizons
            ]
            score = sum(scores) / len(scores)
            detail = " ".join(f"H={h}: {s:.4f}" for h, s in zip(args.horizons, scores))
            print(f"{method:10s} {params}  mean {score:.4f}  ({detail})  {time.perf_counter() - start:.1f}s",
                  flush=True)
            if score > best.get(method, (-1.0, None))[0]:
                best[method] = (score, params)
    for method, (score, params) in best.items():
        print(f"best {method}: {params} (mean normalised return {score:.4f})")
    return best


if __name__ == "__main__":
    main()
