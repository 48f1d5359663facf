"""Evaluate baselines and trained checkpoints on held-out tasks, in and out of distribution, for several H.

    python recipes/evaluate.py --task random_mdp --horizons 32 64 128 --num-tasks 200
    python recipes/evaluate.py --task random_mdp --horizons 100 --checkpoints rl3=runs/random_mdp_rl3_s0/checkpoint.pt
    python recipes/evaluate.py --task gridworld_13x13 --methods random oracle greedy_q --num-tasks 100
    python recipes/evaluate.py --methods random psrl opsrl ucrl2 beb eps_greedy greedy --horizons 100 500 \
        --baseline-params ucrl2.scale=0.1 opsrl.num_samples=8   # Duan et al.'s baselines, tuned defaults overridden
    python recipes/evaluate.py --horizons 128 512 --checkpoints "rl3=runs/rl3_H{H}/checkpoint.pt"  # one model per H

Every method sees the same test tasks. Every requested H, method and checkpoint is checked before any work (a
checkpoint acts at most at the H it was trained at). Writes ``results.csv`` (each row as soon as it is finished, so a
later failure loses nothing), ``results.md``, ``return_vs_horizon.png``, ``inner_episode_returns.png``, the
meta-training curves of the checkpoints (``training_curves.png``) and, for gridworlds, ``value_map.png`` (one
meta-episode with the online Q estimator's values drawn on the grid) to ``--out``.
"""
from __future__ import annotations

import argparse
import ast
import csv
from functools import partial
from pathlib import Path

from rl3_torchrl.evaluation import (
    BASELINE_REGISTRY,
    BASELINES,
    baseline_policy,
    evaluate_actor,
    evaluate_baseline,
    return_vs_horizon,
    value_map_episode,
)
from rl3_torchrl.plotting import (
    plot_inner_episode_returns,
    plot_return_vs_horizon,
    plot_training_curves,
    plot_value_map,
)
from rl3_torchrl.tasks import TASKS, make_task_env, task_family
from rl3_torchrl.training import load_actor

COLUMNS = ("method", "task", "horizon", "num_tasks", "return_mean", "return_stderr", "normalized_mean",
           "normalized_stderr", "oracle_mean")


def parse_args(argv=None):
    methods = "\n".join(f"  {name:13s} {spec.summary} {spec.params or ''}" for name, spec in BASELINE_REGISTRY.items())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="baselines:\n" + methods,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="random_mdp", choices=sorted(TASKS), help="in-distribution task")
    parser.add_argument("--in-distribution-only", action="store_true", help="skip the task's OOD presets")
    parser.add_argument("--horizons", type=int, nargs="+", default=[100])
    parser.add_argument("--methods", nargs="*", default=["random", "oracle", "greedy_q", "mbie_eb"],
                        choices=BASELINES)
    parser.add_argument("--baseline-params", nargs="*", default=[], metavar="METHOD.NAME=VALUE",
                        help="override a baseline's tuned hyper-parameter, e.g. beb.beta=0.5")
    parser.add_argument("--checkpoints", nargs="*", default=[], metavar="NAME=PATH",
                        help="trained actors to evaluate, e.g. rl3=runs/random_mdp_rl3_s0/checkpoint.pt; a {H} in "
                             "PATH is replaced by each horizon (one checkpoint per H)")
    parser.add_argument("--num-tasks", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250, help="tasks run at once")
    parser.add_argument("--greedy", action="store_true", help="deterministic actions for the learned actors")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test task stream")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="eval_results")
    args = parser.parse_args(argv)
    bad = [c for c in args.checkpoints if "=" not in c]
    if bad:
        parser.error(f"--checkpoints takes NAME=PATH pairs, got {bad}")
    for option, values in (("--horizons", args.horizons), ("--num-tasks", [args.num_tasks]),
                           ("--batch-size", [args.batch_size])):
        if min(values) < 1:
            parser.error(f"{option} takes positive integers, got {min(values)}")
    args.params = {}
    for item in args.baseline_params:
        method, _, assignment = item.partition(".")
        key, equals, value = assignment.partition("=")
        if not (equals and key) or method not in BASELINES:
            parser.error(f"--baseline-params takes METHOD.NAME=VALUE with METHOD in {list(BASELINES)}, got {item!r}")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string, e.g. estimate=empirical
        args.params.setdefault(method, {})[key] = value
    return args


def evaluate_checkpoint(pattern, args, common, log_dirs, name, *, task, horizon):
    """Evaluate the checkpoint ``pattern.format(H=horizon)`` on ``task``; remember its training logs."""
    actor, cfg = load_actor(pattern.format(H=horizon), task=args.task, horizon=horizon, device=args.device)
    log_dir = Path(cfg.output_dir) / "logs" / cfg.logger.exp_name
    if log_dir.is_dir():
        log_dirs[f"{name} (H={horizon})" if "{H}" in pattern else name] = log_dir
    return evaluate_actor(actor, task, cfg.algo, horizon=horizon, greedy=args.greedy, **common)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    common = dict(num_tasks=args.num_tasks, batch_size=args.batch_size, seed=args.seed, device=args.device,
                  max_inner_episodes=50)
    methods = {name: partial(evaluate_baseline, name, params=args.params.get(name), **common) for name in args.methods}
    log_dirs = {}
    for item in args.checkpoints:
        name, pattern = item.split("=", 1)
        for horizon in args.horizons:  # fail fast on a missing, corrupt or mismatched checkpoint, or too long an H
            load_actor(pattern.format(H=horizon), task=args.task, horizon=horizon)
        methods[name] = partial(evaluate_checkpoint, pattern, args, common, log_dirs, name)
    tasks = [args.task] if args.in_distribution_only else task_family(args.task)
    for task in tasks:  # fail fast: an H a task refuses, a bad hyper-parameter, a method that cannot run on a task
        for horizon in args.horizons:
            env = make_task_env(task, 1, horizon=horizon)
            for name in args.methods:
                baseline_policy(name, env, **args.params.get(name, {}))

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:  # each row as soon as it is finished
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()

        def write(row):
            writer.writerow(row)
            f.flush()

        rows = return_vs_horizon(methods, tasks, args.horizons, on_row=write)
    table = ["| method | task | H | return | oracle-normalised |", "|---|---|---|---|---|"]
    table += [
        f"| {r['method']} | {r['task']} | {r['horizon']} | {r['return_mean']:.2f} ± {r['return_stderr']:.2f} "
        f"| {r['normalized_mean']:.3f} ± {r['normalized_stderr']:.3f} |"
        for r in rows
    ]
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))

    plot_return_vs_horizon(rows, ood_tasks=tasks[1:]).savefig(out / "return_vs_horizon.png", dpi=120)
    plot_inner_episode_returns(rows, args.task, max(args.horizons)).savefig(out / "inner_episode_returns.png", dpi=120)
    if log_dirs:
        plot_training_curves(log_dirs).savefig(out / "training_curves.png", dpi=120)
    if args.task.startswith("gridworld"):
        episode = value_map_episode(args.task, horizon=max(args.horizons), seed=args.seed)
        plot_value_map(episode).savefig(out / "value_map.png", dpi=120)
    print(f"results in {out}")
    return rows


if __name__ == "__main__":
    main()
