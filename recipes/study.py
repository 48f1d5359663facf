"""Run a named study end to end: train every (algo, H, seed) cell, evaluate, and write ``results/<study>/``.

    python recipes/study.py cpu --workers 2                 # the CPU study (≤ 6 CPU-hours on 2 cores)
    python recipes/study.py cpu --stage train --algos rl2   # only some stages or algorithms
    python recipes/study.py cpu --stage train --seeds 0 1   # only some seeds
    python recipes/study.py cpu --stage report              # tables and figures from what is finished
    python recipes/study.py paper --workers 8 --device cuda # the paper's budgets (a GPU machine or a cluster)
    python recipes/study.py cpu --list                      # each cell's status and command
    python recipes/study.py --compare cpu rl3_torchrl/configs/studies/ablation/one_layer.yaml:results/ablation/one_layer \
        --algos rl2 --horizon 100 --out results/ablation
                                                            # studies that differ in one setting, at equal frames

Every stage resumes: cells with a finished checkpoint are skipped, killed cells continue from their last
checkpoint, evaluated rows are kept. Each cell is an ordinary ``recipes/ppo_rl3.py`` run (its command is in
``MANIFEST`` and in ``runs/<cell>/cell.json``). The studies live in ``rl3_torchrl/configs/studies/``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rl3_torchrl.study import (
    compare_studies,
    evaluate_study,
    load_study,
    named_studies,
    report_study,
    study_cells,
    train_study,
    write_manifest,
)

STAGES = ("train", "evaluate", "report")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?",
                        help=f"a named study ({', '.join(named_studies())}) or the path of a study YAML file")
    parser.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workers", type=int, default=1, help="cells trained or evaluated at once (one process each)")
    parser.add_argument("--algos", nargs="+", default=None, help="train (or compare) only these algorithms' cells")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="train only these seeds' cells")
    parser.add_argument("--num-tasks", type=int, default=None, help="held-out tasks (default: the study's)")
    parser.add_argument("--device", default="cpu", help="device of the evaluation")
    parser.add_argument("--out", default=None, help="results folder (default results/<study>)")
    parser.add_argument("--list", action="store_true", help="print each cell's status and command, then stop")
    parser.add_argument("--compare", nargs="+", metavar="STUDY[:ROOT]", default=None,
                        help="compare these studies' learning curves at equal frames, one group per study (per "
                             "study and algorithm where --algos selects several; ROOT defaults to "
                             "results/<study>); writes comparison.md and comparison.png into --out")
    parser.add_argument("--horizon", type=int, default=None, help="with --compare: only the cells of this H")
    args = parser.parse_args(argv)
    if (args.study is None) == (args.compare is None):
        parser.error("give either a study or --compare STUDY[:ROOT] ...")
    if args.compare is not None and args.out is None:
        parser.error("--compare needs --out, the folder of comparison.md and comparison.png")
    return args


def compare(args) -> None:
    selected = {}
    for entry in args.compare:
        name, _, root = entry.partition(":")
        study = load_study(name)
        cells = study_cells(study, root or f"results/{study.name}", algos=args.algos)
        selected[study.name] = [c for c in cells if args.horizon is None or c.horizon == args.horizon]
    # one group per study, or per (study, algorithm) where the selection holds several: seeds of different
    # algorithms are never pooled
    several = len({c.algo for cells in selected.values() for c in cells}) > 1
    groups = {}
    for name, cells in selected.items():
        for algo in dict.fromkeys(c.algo for c in cells) if several else [None]:
            groups[f"{name} {algo}" if several else name] = [c for c in cells if algo in (None, c.algo)]
    print(compare_studies(groups, args.out))


def main(argv=None):
    args = parse_args(argv)
    if args.compare is not None:
        return compare(args)
    study = load_study(args.study)
    root = Path(args.out or f"results/{args.study}")
    if args.list:
        for cell in study_cells(study, root):
            print(f"{cell.name:16s} {cell.status():8s} {cell.command}")
        return
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if "train" in args.stage:
        train_study(study, root, workers=args.workers, algos=args.algos, seeds=args.seeds)
    if "evaluate" in args.stage:
        evaluate_study(study, root, num_tasks=args.num_tasks, device=args.device, workers=args.workers)
    if "report" in args.stage:
        print(report_study(study, root))
    write_manifest(study, root, command="python recipes/study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   wall_s=time.time() - start)
    print(f"results in {root}")


if __name__ == "__main__":
    main()
