"""What ``model.positions=none`` costs at the trained H and gives at 2H (issue #15).

Trains RL³ on random MDPs at H = 50 twice, with the paper's learned positions and with none (order from the causal
mask and the t/H input), same seed and budget; evaluates both on the same 500 held-out tasks at H = 50 and at
H = 100, beside the random policy and greedy_q. The learned-positions actor cannot act at H = 100 (its embedding
has 51 positions): ``load_actor`` refuses, and the table says so.

    python results/positions/experiment.py    # ≈ 4 CPU-minutes; writes results.csv, results.md, MANIFEST
                                              # (finished runs in runs/ are evaluated again, not retrained)
"""
import csv
import platform
import subprocess
import sys
import time
from pathlib import Path

import tensordict
import torch
import torchrl

from rl3_torchrl.evaluation import evaluate_actor, evaluate_baseline
from rl3_torchrl.study import EVAL_SEED
from rl3_torchrl.training import Trainer, load_actor, load_config

OUT = Path(__file__).parent
H, ITERATIONS, NUM_TASKS = 50, 300, 500
TRAIN = [f"horizon={H}", f"iterations={ITERATIONS}", "num_envs=16", "ppo.minibatch_episodes=4", "eval.every=0",
         "progress=false", "seed=0"]


def main():
    torch.set_num_threads(1)
    start, rows = time.time(), []
    for positions in ("learned", "none"):
        run = OUT / "runs" / positions
        seconds = run / "train_s.txt"  # a finished run is evaluated again, not retrained
        if not seconds.exists():
            trained = time.time()
            Trainer(load_config([*TRAIN, f"model.positions={positions}", f"output_dir={run}",
                                 "checkpoint.overwrite=true"])).train()
            seconds.write_text(f"{time.time() - trained:.0f}\n")
        train_s = int(seconds.read_text())
        for horizon in (H, 2 * H):
            try:
                actor, _ = load_actor(run / "checkpoint.pt", horizon=horizon)
            except ValueError as err:  # learned positions: "... cannot act at horizon=100; allowed: [1, 50]."
                note = "load_actor refuses: " + str(err).split("its actor ")[-1]
                rows.append(dict(method=f"rl3 positions={positions}", horizon=horizon, note=note))
                continue
            torch.manual_seed(0)  # the actor samples its actions from the global stream
            result = evaluate_actor(actor, "random_mdp", "rl3", horizon=horizon, num_tasks=NUM_TASKS, seed=EVAL_SEED)
            rows.append({**result, "method": f"rl3 positions={positions}", "horizon": horizon, "train_s": round(train_s)})
    for name in ("random", "greedy_q"):
        for horizon in (H, 2 * H):
            result = evaluate_baseline(name, "random_mdp", horizon=horizon, num_tasks=NUM_TASKS, seed=EVAL_SEED)
            rows.append({**result, "method": name, "horizon": horizon})
    columns = ["method", "horizon", "return_mean", "return_stderr", "normalized_mean", "normalized_stderr", "train_s",
               "note"]
    with open(OUT / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = ["| method | H | return | oracle-normalised |", "|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            table.append(f"| {r['method']} | {r['horizon']} | {r['note']} | — |")
        else:
            table.append(f"| {r['method']} | {r['horizon']} | {r['return_mean']:.2f} ± {r['return_stderr']:.2f} | "
                         f"{r['normalized_mean']:.3f} ± {r['normalized_stderr']:.3f} |")
    (OUT / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (OUT / "MANIFEST").write_text("\n".join([
        "command: python results/positions/experiment.py",
        f"training: {' '.join(TRAIN)} model.positions=learned|none (each {ITERATIONS * 16 * H} frames)",
        f"evaluation: {NUM_TASKS} held-out random_mdp tasks (seed {EVAL_SEED}) at H = {H} and {2 * H}",
        f"commit: {commit} (+ uncommitted changes of that session)",
        f"python {platform.python_version()}, torch {torch.__version__}, torchrl {torchrl.__version__}, "
        f"tensordict {tensordict.__version__}",
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPU cores shared with a running study, 1 torch thread",
        "training wall time per run (its first invocation): "
        + ", ".join(f"{p} {(OUT / 'runs' / p / 'train_s.txt').read_text().strip()} s" for p in ("learned", "none")),
        f"wall time of this invocation: {time.time() - start:.0f} s",
    ]) + "\n")


if __name__ == "__main__":
    sys.exit(main())
