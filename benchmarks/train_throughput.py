"""End-to-end PPO meta-training throughput of RL² and RL³, in the same run, with the time split by phase.

For each config (the recipe's default and the paper's random-MDP setting) it trains RL² and RL³ for a few
iterations (one after the other, after one warm-up iteration each) and prints frames/s and the seconds per
iteration spent collecting (of which in the online Q estimator) and updating, plus the ratio RL³ / RL² of frames/s.

    python benchmarks/train_throughput.py                      # default config, 3 timed iterations
    python benchmarks/train_throughput.py --configs default paper_random_mdp --iterations 2
    python benchmarks/train_throughput.py --device cuda --configs paper_random_mdp
    python benchmarks/train_throughput.py --algos rl3 --backends single multiprocess --workers 1 2 --threads 1

``--backends`` and ``--workers`` select how meta-episodes are collected (``collector.backend`` / ``collector.workers``:
``single`` and ``async`` run only with 1 worker; ``multiprocess`` and ``ray`` with every count given). ``frames/s``
is the frames of the timed iterations over their total time, which counts the whole iteration (collection, also in
workers, and the update in the trainer process); the phase times are means per iteration. The Q-estimation time is
measured in the trainer process only, so it reads 0 when workers collect; with ``async`` the collection time is the
trainer's wait for a batch that the worker collected during the previous update.

    python benchmarks/train_throughput.py --backends single async --iterations 10 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
import torchrl

from rl3_torchrl.training import Trainer, load_config


def run(
    config: str, algo: str, iterations: int, device: str, extra: list[str], backend: str = "single", workers: int = 1
) -> tuple[list[dict], int]:
    overrides = [
        f"algo={algo}",
        f"collector.backend={backend}",
        f"collector.workers={workers}",
        f"iterations={iterations + 1}",
        f"device={device}",
        "eval.every=0",
        "logger.backend=''",
        "progress=false",
        f"checkpoint.every={iterations + 1}",
        f"output_dir={tempfile.mkdtemp()}",
        *extra,
    ]
    cfg = load_config(overrides, config=None if config == "default" else config)
    trainer = Trainer(cfg)
    return trainer.train()[1:], trainer.frames_per_batch  # the first iteration includes warm-up (allocation, resets)


def timing(rows: list[dict], frames: int) -> dict:
    """Frames/s of the timed iterations together (their frames over their total time), the mean seconds of each
    phase per iteration, and the mean number of minibatches per iteration on which the actor trained (the rest ran
    the critic alone, after the KL stop). With ``backend=async`` consecutive iterations alternate between a longer
    and a shorter wait for their batch, so the median of per-iteration rates would not be the run's rate."""
    keys = ("time_collection", "time_q_estimation", "time_update", "actor_updates")
    result = {k: statistics.mean(r[k] for r in rows) for k in keys}
    result["frames_per_s"] = frames * len(rows) / sum(frames / r["frames_per_s"] for r in rows)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["default"], help="default and/or named configs")
    parser.add_argument("--algos", nargs="+", default=["rl2", "rl3"])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", default=["single"], help="single, multiprocess, ray and/or async")
    parser.add_argument("--workers", nargs="+", type=int, default=[1], help="collection worker counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the trainer process")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setups = [(b, w) for b in args.backends for w in args.workers if b not in ("single", "async") or w == 1]
    threads = torch.get_num_threads()
    print(f"# torch {torch.__version__}, torchrl {torchrl.__version__}, {threads} threads, {args.device}")
    print(
        f"{'config':<18}{'algo':<6}{'backend':<14}{'workers':>8}"
        f"{'frames/it':>10}{'frames/s':>10}{'collect s':>11}{'of which Q s':>13}{'update s':>10}{'actor upd':>10}"
    )
    for config in args.configs:
        fps = {}
        for algo, (backend, workers) in ((a, s) for a in args.algos for s in setups):
            rows, frames = run(config, algo, args.iterations, args.device, args.overrides, backend, workers)
            times = timing(rows, frames)
            fps.setdefault(algo, times["frames_per_s"])
            print(
                f"{config:<18}{algo:<6}{backend:<14}{workers:>8}{frames:>10}{times['frames_per_s']:>10.0f}"
                f"{times['time_collection']:>11.2f}{times['time_q_estimation']:>13.2f}{times['time_update']:>10.2f}"
                f"{times['actor_updates']:>10.1f}"
            )
        if "rl2" in fps and "rl3" in fps:
            ratio = fps["rl3"] / fps["rl2"]
            print(f"{config:<18}RL³ / RL² frames/s = {ratio:.2f} ({setups[0][0]}, {setups[0][1]} worker)")


if __name__ == "__main__":
    main()
