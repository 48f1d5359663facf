"""How training cost grows: frames/s against ``num_envs`` and against ``H`` for RL² and RL³, and memory.

For each point it trains a few iterations of the default config (``rl3_torchrl/configs/ppo.yaml``) with one
override changed (``benchmarks/train_throughput.py``'s runs, after one warm-up iteration) and records frames/s and
the seconds per iteration spent collecting and updating. Then, each in a fresh subprocess, the peak RSS of two
training iterations of the default and the paper random-MDP configs, and the bytes a collected batch stores per
frame. Writes ``scaling.json`` and ``scaling.png`` into ``--out``.

    python benchmarks/scaling.py --threads 1                 # num_envs 8…512 (H = 100), H 64…2048 (32 envs)
    python benchmarks/scaling.py --quick                     # a smoke run: two points per sweep, tiny sizes
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import run as train_run  # noqa: E402

NUM_ENVS = [8, 32, 128, 512]
HORIZONS = [64, 256, 1024, 2048]
MEMORY_CONFIGS = {"default": [], "paper_random_mdp": []}


def sweep(name: str, values: list[int], algos: list[str], iterations: int, extra: list[str]) -> list[dict]:
    """Frames/s and phase times at each value of one override (``num_envs`` or ``horizon``)."""
    rows = []
    for value in values:
        for algo in algos:
            overrides = [f"{name}={value}", *extra]
            if name == "num_envs":  # keep 4 minibatches per epoch: the same number of optimiser steps per batch
                overrides.append(f"ppo.minibatch_episodes={max(1, value // 4)}")
            timed, frames = train_run("default", algo, iterations, "cpu", overrides)
            med = lambda key: sorted(r[key] for r in timed)[len(timed) // 2]  # noqa: E731
            rows.append({"sweep": name, "value": value, "algo": algo, "frames_per_iteration": frames,
                         "frames_per_s": med("frames_per_s"), "collection_s": med("time_collection"),
                         "update_s": med("time_update")})
            r = rows[-1]
            print(f"{name}={value:<6}{algo:<5}{frames:>9} frames/it {r['frames_per_s']:>9.0f} frames/s  "
                  f"collect {r['collection_s']:.2f} s  update {r['update_s']:.2f} s", flush=True)
    return rows


_MEMORY_CHILD = """
import resource, sys, tempfile, torch
torch.set_num_threads(1)
from rl3_torchrl.training import Trainer, load_config
config, extra = sys.argv[1], sys.argv[2:]
cfg = load_config(["iterations=2", "eval.every=0", "logger.backend=''", "progress=false",
                   f"output_dir={tempfile.mkdtemp()}", *extra], config=None if config == "default" else config)
trainer = Trainer(cfg)
with trainer.run() as batches:
    for data in batches:
        trainer.advantages(data)
        trainer.end_iteration(data, trainer.update(data))
# VmHWM: this process's peak RSS (ru_maxrss would also count the parent's, inherited across fork and exec)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
peak = int(status["VmHWM"].split()[0]) if "VmHWM" in status else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak, data.bytes() / data.numel())
"""


def memory(config: str, extra: list[str]) -> dict:
    """Peak RSS of two training iterations in a fresh process, and the stored bytes per collected frame."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, config, *extra], capture_output=True, text=True,
                         check=True).stdout.split()
    peak_kib, per_frame = float(out[-2]), float(out[-1])
    return {"config": config, "overrides": extra, "peak_rss_mib": peak_kib / 1024, "bytes_per_frame": per_frame}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, name, xlabel in zip(axes, ("num_envs", "horizon"), ("num_envs (H = 100)", "H (32 envs)")):
        for algo in dict.fromkeys(r["algo"] for r in rows):
            points = [r for r in rows if r["sweep"] == name and r["algo"] == algo]
            ax.plot([r["value"] for r in points], [r["frames_per_s"] for r in points], "o-", label=algo)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="training frames/s")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=["rl2", "rl3"])
    parser.add_argument("--iterations", type=int, default=1, help="timed iterations per point")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="two points per sweep, tiny sizes")
    parser.add_argument("--out", default="benchmarks", help="folder of scaling.json and scaling.png")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quick = ["ppo.epochs=1", "ppo.minibatch_episodes=2", "model.d_model=8", "model.hidden_sizes=[8]", "model.ffn_dim=8"] if args.quick else []
    envs, horizons = ([4, 8], [8, 16]) if args.quick else (NUM_ENVS, HORIZONS)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; default config, {args.iterations} timed "
          "iteration(s) per point after one warm-up", flush=True)
    rows = sweep("num_envs", envs, args.algos, args.iterations, ["horizon=16"] * args.quick + quick)
    rows += sweep("horizon", horizons, args.algos, args.iterations, ["num_envs=32" if not args.quick else "num_envs=4",
                                                                     *quick])
    configs = {"default": quick + ["horizon=16", "num_envs=4"] * args.quick,
               "paper_random_mdp": quick + ["horizon=16", "num_envs=4"] * args.quick}
    mem = [memory(config, extra) for config, extra in configs.items()]
    for m in mem:
        print(f"memory {m['config']:<17} peak RSS {m['peak_rss_mib']:.0f} MiB, {m['bytes_per_frame']:.0f} bytes "
              "stored per frame", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows, "memory": mem}
    (out / "scaling.json").write_text(json.dumps(report, indent=2))
    plot(rows, out / "scaling.png")
    return report


if __name__ == "__main__":
    main()
