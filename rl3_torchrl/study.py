"""Named meta-training studies: train every (algo, H, seed) cell, evaluate it beside the baselines, report.

A *study* (``rl3_torchrl/configs/studies/<name>.yaml``) names a task, the algorithms, the horizons (each with its
own overrides, e.g. ``num_envs``) and the seeds; every combination is a *cell*, an ordinary run of
``recipes/ppo_rl3.py`` whose ``output_dir`` is ``<root>/runs/<algo>_H<H>_s<seed>``. Three stages, each resumable:

1. :func:`train_study`: trains the cells that have no finished checkpoint (a killed cell resumes from its last
   checkpoint), on a pool of worker processes with one torch thread each;
2. :func:`evaluate_study`: evaluates every finished cell on the same held-out tasks, in distribution and out of
   distribution, and the baselines at every ``H`` on those tasks (rows already in the CSVs are kept);
3. :func:`report_study`: the markdown table with the claims, return vs ``H``, learning curves against frames
   (mean ± SE over seeds) and the ``MANIFEST`` (commands, versions, machine, wall time and frames per cell).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rl3_torchrl._validation import check_choice, check_int
from rl3_torchrl.checkpoint import load_checkpoint
from rl3_torchrl.evaluation import BASELINE_REGISTRY
from rl3_torchrl.tasks import ALGOS, TASKS, task_family
from rl3_torchrl.training import CHECKPOINT_NAME, CONFIG_DIR, flat_config, load_config, named_configs

__all__ = [
    "Cell",
    "EVAL_SEED",
    "aggregate_cells",
    "compare_studies",
    "evaluate_study",
    "frames_to_reach",
    "git_revision",
    "learning_curves",
    "load_study",
    "named_studies",
    "report_study",
    "study_cells",
    "train_cell",
    "train_study",
    "validate_study",
    "write_manifest",
]

STUDY_DIR = CONFIG_DIR / "studies"
#: Per cell, beside its checkpoint: the command, accumulated wall time and frames.
CELL_RECORD = "cell.json"
#: The seed of the held-out task stream of the final evaluation (the same tasks for every cell and baseline).
EVAL_SEED = 2306
# goal_rate: gridworlds only (the fraction of inner episodes that reached the goal), empty otherwise
CELL_COLUMNS = ("algo", "horizon", "seed", "task", "num_tasks", "return_mean", "return_stderr", "normalized_mean",
                "normalized_stderr", "oracle_mean", "frames", "goal_rate")
BASELINE_COLUMNS = ("method", "horizon", "task", "num_tasks", "return_mean", "return_stderr", "normalized_mean",
                    "normalized_stderr", "oracle_mean", "goal_rate")


def named_studies() -> list[str]:
    """The studies shipped with the package.

    Examples:
        >>> named_studies()
        ['cpu', 'grids', 'paper']
    """
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def load_study(name: str) -> DictConfig:
    """Read and check a study: a name of :func:`named_studies` or the path of a study YAML file of your own.

    Examples:
        >>> study = load_study("cpu")
        >>> study.env, list(study.algos), sorted(study.horizons)
        ('random_mdp', ['rl2', 'rl3'], [100, 256, 512])
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        study = OmegaConf.load(path)
        study.name, study.source = path.stem, str(path)
    else:
        study = OmegaConf.load(STUDY_DIR / f"{check_choice('study', name, named_studies())}.yaml")
        study.name, study.source = name, f"rl3_torchrl/configs/studies/{name}.yaml"
    return validate_study(study)


def validate_study(study: DictConfig) -> DictConfig:
    """Check a study's keys and choices, naming the key, the value and what is allowed; returns the study.

    Examples:
        >>> validate_study(OmegaConf.create(dict(name="s", env="random_mdp", algos=["rl4"], seeds=[0],
        ...                                      horizons={8: {}}, train={}, evaluation={})))
        Traceback (most recent call last):
        ...
        ValueError: s.algos='rl4' is not allowed; choose one of ['rl2', 'rl3', 'rl3_coarse'].
    """
    name = study.get("name", "study")
    missing = [k for k in ("env", "algos", "seeds", "horizons", "train", "evaluation") if k not in study]
    if missing:
        raise ValueError(f"study {name!r} lacks the keys {missing} (see rl3_torchrl/configs/studies/cpu.yaml).")
    check_choice(f"{name}.env", study.env, TASKS)
    if study.get("config") is not None:
        check_choice(f"{name}.config", study.config, named_configs())
    for algo in study.algos:
        check_choice(f"{name}.algos", algo, ALGOS)
    for seed in study.seeds:
        check_int(f"{name}.seeds", seed, low=0)
    for horizon in study.horizons:
        check_int(f"{name}.horizons", horizon, low=1)
    study.evaluation.setdefault("num_tasks", 1000)
    study.evaluation.setdefault("baselines", ["random"])
    check_int(f"{name}.evaluation.num_tasks", study.evaluation.num_tasks, low=1)
    for method in study.evaluation.baselines:
        check_choice(f"{name}.evaluation.baselines", method, BASELINE_REGISTRY)
    return study


def _dotlist(node) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in flat_config(node).items()]


@dataclass(frozen=True)
class Cell:
    """One training run of a study: an algorithm, a horizon and a seed, with its ``ppo_rl3.py`` overrides.

    Examples:
        >>> cell = study_cells(load_study("cpu"), "results/cpu")[0]
        >>> cell.name, cell.output_dir
        ('rl2_H100_s0', PosixPath('results/cpu/runs/rl2_H100_s0'))
        >>> "model.num_layers=2" in cell.overrides
        True
    """

    algo: str
    horizon: int
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.algo}_H{self.horizon}_s{self.seed}"

    @property
    def output_dir(self) -> Path:
        return Path(next(o for o in self.overrides if o.startswith("output_dir=")).split("=", 1)[1])

    @property
    def command(self) -> str:
        """The equivalent recipe command line."""
        return "python recipes/ppo_rl3.py " + " ".join(f"'{o}'" if " " in o else o for o in self.overrides)

    def config(self, **extra) -> DictConfig:
        return load_config([*self.overrides, *(f"{k}={v}" for k, v in extra.items())])

    def checkpoint_iteration(self) -> int:
        """The iteration of the cell's checkpoint (0 without one)."""
        path = self.output_dir / CHECKPOINT_NAME
        return load_checkpoint(path)["iteration"] if path.exists() else 0

    def status(self) -> str:
        """``"done"`` (finished checkpoint), ``"partial"`` (a checkpoint to resume) or ``"todo"``."""
        iteration = self.checkpoint_iteration()
        return "todo" if iteration == 0 else "done" if iteration >= self.config().iterations else "partial"

    def frames(self, iteration: int | None = None) -> int:
        cfg = self.config()
        return (cfg.iterations if iteration is None else iteration) * cfg.num_envs * self.horizon


def study_cells(
    study: DictConfig, root, *, algos: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> list[Cell]:
    """Every cell of ``study`` (optionally only those of ``algos`` and ``seeds``), whose runs live under
    ``root/runs``.

    Examples:
        >>> import tempfile
        >>> [c.name for c in study_cells(load_study("cpu"), tempfile.mkdtemp(), algos=["rl3"], seeds=[1])]
        ['rl3_H100_s1', 'rl3_H256_s1', 'rl3_H512_s1']
        >>> study_cells(load_study("cpu"), tempfile.mkdtemp(), seeds=[7])
        Traceback (most recent call last):
        ...
        ValueError: seeds=[7] names seeds that study 'cpu' lacks; its seeds: [0, 1, 2].
    """
    if seeds is not None and set(seeds) - set(study.seeds):
        raise ValueError(f"seeds={list(seeds)} names seeds that study {study.name!r} lacks; its seeds: "
                         f"{list(study.seeds)}.")
    cells = []
    for algo in study.algos:
        if algos is not None and algo not in algos:
            continue
        for horizon, per_h in study.horizons.items():
            for seed in study.seeds:
                if seeds is not None and seed not in seeds:
                    continue
                overrides = [f"config={study.config}"] if study.get("config") else []
                overrides += _dotlist(study.train) + _dotlist(per_h)
                name = f"{algo}_H{horizon}_s{seed}"
                overrides += [f"env={study.env}", f"algo={algo}", f"horizon={horizon}", f"seed={seed}",
                              f"output_dir={Path(root) / 'runs' / name}", "progress=false"]
                cells.append(Cell(algo, int(horizon), int(seed), tuple(overrides)))
    return cells


def train_cell(cell: Cell, threads: int = 1) -> dict:
    """Train (or resume) one cell in this process; its output goes to ``train.log`` in the cell's folder.

    Returns the cell's record (``command``, ``wall_s`` accumulated over resumes, ``frames``, ``iterations``).
    """
    from rl3_torchrl.training import Trainer

    torch.set_num_threads(threads)
    out = cell.output_dir
    out.mkdir(parents=True, exist_ok=True)
    resume = (out / CHECKPOINT_NAME).exists()
    code = _process_code()
    start = time.perf_counter()
    with open(out / "train.log", "a") as log, redirect_stdout(log), redirect_stderr(log):
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: {cell.command}", flush=True)
        # without a checkpoint, the logs of a cell killed before its first one are deleted: the cell starts over
        trainer = Trainer(cell.config(**{"checkpoint.resume": str(resume).lower(),
                                         "checkpoint.overwrite": str(not resume).lower()}))
        trainer.train()
    record_path = out / CELL_RECORD
    record = json.loads(record_path.read_text()) if record_path.exists() else {"wall_s": 0.0}
    record.update(command=cell.command, iterations=trainer.iteration, frames=cell.frames(trainer.iteration))
    record.setdefault("code", []).append(code)
    record["wall_s"] += time.perf_counter() - start
    _write_atomically(record_path, json.dumps(record, indent=1))
    return record


@functools.cache
def _process_code() -> str:
    """:func:`git_revision` when this process first asked, i.e. when its worker started and imported the package:
    the code a cell trains with, even if the tree changes while the study runs."""
    return git_revision()


def _worker_init(parent: int) -> None:
    """Pool initializer: one torch thread, and end this worker once the study process is gone (killed), instead of
    working on as an orphan beside the study that resumes the same cell; a cell keeps its last checkpoint."""
    torch.set_num_threads(1)
    _process_code()

    def watch():
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes with one torch thread each, which end with this one (:func:`_worker_init`)."""
    workers = check_int("workers", workers, low=1)
    return ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(os.getpid(),)
    )


def train_study(study: DictConfig, root, *, workers: int = 1, algos: Sequence[str] | None = None,
                seeds: Sequence[int] | None = None) -> list[Cell]:
    """Train every unfinished cell (of ``algos`` and ``seeds`` if given), ``workers`` at a time (separate
    processes, one torch thread each).

    Cells with a finished checkpoint are skipped; partly trained ones resume. Cells start in the order
    (H, seed, algorithm), so that a study stopped part-way has whole seeds of every algorithm at the smaller H.
    Returns the cells trained.
    """
    pending = [c for c in study_cells(study, root, algos=algos, seeds=seeds) if c.status() != "done"]
    pending.sort(key=lambda c: (c.horizon, c.seed, list(study.algos).index(c.algo)))
    if not pending:
        return []
    with _process_pool(workers) as pool, tqdm(
        total=len(pending), desc=f"{study.name}: training cells"
    ) as bar:
        futures = {pool.submit(train_cell, cell): cell for cell in pending}
        try:
            for future in as_completed(futures):
                record = future.result()  # a failed cell raises here, with its train.log beside its checkpoint
                bar.set_postfix(cell=futures[future].name, wall=f"{record['wall_s'] / 60:.0f}min")
                bar.update()
        except BaseException:  # a failed cell or an interrupt (Ctrl-C, SIGINT): stop the whole study now
            _stop(pool)
            raise
    return pending


def _stop(pool: ProcessPoolExecutor) -> None:
    """Start no further cell and end the running ones (they resume from their last checkpoint): otherwise leaving
    the pool would wait for every queued cell to be trained."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public API before Python 3.14
        process.terminate()


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [_typed(r) for r in csv.DictReader(f)]


def _typed(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a kill leaves the old or the new file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _append_row(path: Path, columns: Sequence[str], row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` under its header. A file written by an earlier version, whose header
    lacks some of ``columns``, is first rewritten (atomically) with them added, its rows left empty there."""
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            missing = [c for c in columns if c not in header]
            rows = list(reader) if missing else []
        if missing:
            header += missing
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
            _write_atomically(path, text.getvalue())
        columns = header
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _cell_row(cell: Cell, task: str, common: dict) -> dict:
    from rl3_torchrl.evaluation import evaluate_actor
    from rl3_torchrl.training import load_actor

    actor, _ = load_actor(cell.output_dir / CHECKPOINT_NAME, task=task, device=common["device"])
    result = evaluate_actor(actor, task, cell.algo, horizon=cell.horizon, **common)
    return dict(result, algo=cell.algo, seed=cell.seed, task=task, frames=cell.frames())


def _baseline_row(method: str, horizon: int, task: str, common: dict) -> dict:
    from rl3_torchrl.evaluation import evaluate_baseline

    return dict(evaluate_baseline(method, task, horizon=horizon, **common), method=method, task=task)


def evaluate_study(study: DictConfig, root, *, num_tasks: int | None = None, device="cpu", workers: int = 1) -> None:
    """Evaluate every finished cell and the baselines on the same held-out tasks, ``workers`` runs at a time;
    append each row to its CSV as it finishes.

    ``cells.csv`` has one row per (cell, task of the family), ``baselines.csv`` one per (method, H, task).
    Rows already written are not recomputed, so an interrupted evaluation continues where it stopped.
    """
    root = Path(root)
    num_tasks = check_int("num_tasks", num_tasks or study.evaluation.num_tasks, low=1)
    common = dict(num_tasks=num_tasks, seed=EVAL_SEED, device=device)
    tasks = task_family(study.env)
    cells_csv, baselines_csv = root / "cells.csv", root / "baselines.csv"
    done = {(r["algo"], r["horizon"], r["seed"], r["task"]) for r in _read_rows(cells_csv) if r["num_tasks"] == num_tasks}
    finished = [c for c in study_cells(study, root) if c.status() == "done"]
    jobs = [(cells_csv, CELL_COLUMNS, _cell_row, (c, t, common))
            for c in finished for t in tasks if (c.algo, c.horizon, c.seed, t) not in done]
    done = {(r["method"], r["horizon"], r["task"]) for r in _read_rows(baselines_csv) if r["num_tasks"] == num_tasks}
    jobs += [(baselines_csv, BASELINE_COLUMNS, _baseline_row, (m, int(h), t, common))
             for m in study.evaluation.baselines for h in study.horizons for t in tasks if (m, int(h), t) not in done]
    if not jobs:
        return
    with _process_pool(workers) as pool:
        futures = {pool.submit(fn, *args): (path, columns) for path, columns, fn, args in jobs}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"{study.name}: evaluating"):
            _append_row(*futures[future], future.result())


def _seed_stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (SE 0 for one seed)."""
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return mean, se


def aggregate_cells(rows: Sequence[dict], key: str = "normalized_mean") -> dict[tuple[str, int, str], dict]:
    """A column of ``cells.csv`` per ``(algo, H, task)`` (default the oracle-normalised return): the mean over seeds
    of each seed's mean over tasks, with the standard error over seeds (with a single seed, that seed's standard
    error over tasks, if the row has it: the ``_stderr`` column beside a ``_mean`` one).

    Examples:
        >>> rows = [dict(algo="rl3", horizon=8, task="t", seed=s, normalized_mean=v) for s, v in enumerate([.5, .7])]
        >>> agg = aggregate_cells(rows)[("rl3", 8, "t")]
        >>> round(agg["mean"], 3), round(agg["se"], 3), agg["seeds"]
        (0.6, 0.1, 2)
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["algo"], int(r["horizon"]), r["task"]), []).append(r)
    out = {}
    for group_key, group in groups.items():
        mean, se = _seed_stats([float(r[key]) for r in group])
        if len(group) == 1:
            se = float(group[0].get(key.removesuffix("_mean") + "_stderr", 0.0)) if key.endswith("_mean") else 0.0
        out[group_key] = dict(mean=mean, se=se, seeds=len(group))
    return out


def learning_curves(cells: Sequence[Cell], key: str = "eval_normalized_return") -> dict[tuple[str, int], tuple]:
    """Per ``(algo, H)``: ``(frames, mean, se)`` of a logged scalar over the seeds, at the iterations every
    seed has logged.
    """
    from rl3_torchrl.plotting import read_scalars

    by_group: dict = {}
    for cell in cells:
        log_dir = cell.output_dir / "logs" / cell.config().logger.exp_name
        try:
            steps, values = read_scalars(log_dir).get(key, ([], []))
        except FileNotFoundError:
            continue
        if steps:
            by_group.setdefault((cell.algo, cell.horizon), []).append((cell, dict(zip(steps, values))))
    curves = {}
    for group, runs in by_group.items():
        common = sorted(set.intersection(*(set(series) for _, series in runs)))
        stats = [_seed_stats([series[s] for _, series in runs]) for s in common]
        frames = [runs[0][0].frames(s) for s in common]
        curves[group] = (frames, [m for m, _ in stats], [e for _, e in stats], len(runs))
    return curves


def frames_to_reach(frames: Sequence[int], values: Sequence[float], target: float) -> int | None:
    """The first number of frames at which a learning curve reaches ``target`` (None if it never does).

    Examples:
        >>> frames_to_reach([10, 20, 30], [0.1, 0.5, 0.6], 0.5)
        20
    """
    return next((f for f, v in zip(frames, values) if v >= target), None)


def _fmt(mean: float, se: float) -> str:
    return f"{mean:.3f} ± {se:.3f}"


def report_study(study: DictConfig, root) -> str:
    """Write ``table.md``, ``return_vs_horizon.png``, ``learning_curves.png`` and ``entropy_curves.png`` (the
    policy's entropy during training, mean ± SE over seeds) under ``root``; returns the table.

    The table holds every (method, H) in distribution and out of distribution, then each claim of issue #12 with
    the figure that tests it. Everything is computed from ``cells.csv``, ``baselines.csv`` and the cells' logs.
    """
    from rl3_torchrl.plotting import plot_learning_curves, plot_return_vs_horizon

    root = Path(root)
    tasks = task_family(study.env)
    in_task, ood_tasks = tasks[0], tasks[1:]
    rows = _read_rows(root / "cells.csv")
    agg = aggregate_cells(rows)
    grid = _is_gridworld(study)
    returns, goals = (aggregate_cells(rows, "return_mean"), aggregate_cells(rows, "goal_rate")) if grid else ({}, {})
    base = {(r["method"], int(r["horizon"]), r["task"]): r for r in _read_rows(root / "baselines.csv")}
    horizons = sorted(int(h) for h in study.horizons)
    header = ["method", "H", "seeds", "in-dist", *(f"OOD ({t})" for t in ood_tasks)]
    header += ["OOD / in-dist"] if ood_tasks else []
    header += ["return (in-dist)", "goal rate (in-dist)"] if grid else []
    lines = [f"# Study `{study.name}`: {study.env}, oracle-normalised return on held-out tasks", "",
             "Learned methods: mean ± SE over seeds of each seed's mean over the held-out tasks; baselines: mean ± "
             "SE over tasks." + (" Goal rate: the fraction of inner episodes that reached the goal." if grid else ""),
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    plot_rows = []
    for algo in study.algos:
        for h in horizons:
            if (algo, h, in_task) not in agg:
                continue
            stats = [agg.get((algo, h, t)) for t in tasks]
            row = [algo, h, stats[0]["seeds"], *(_fmt(a["mean"], a["se"]) if a else "" for a in stats)]
            row += [f"{stats[1]['mean'] / stats[0]['mean']:.3f}" if stats[1] else ""] if ood_tasks else []
            if grid:
                ret, goal = returns[(algo, h, in_task)], goals[(algo, h, in_task)]
                row += [f"{ret['mean']:.1f} ± {ret['se']:.1f}", _fmt(goal["mean"], goal["se"])]
            lines.append("| " + " | ".join(map(str, row)) + " |")
            plot_rows += [dict(method=algo, task=t, horizon=h, normalized_mean=a["mean"], normalized_stderr=a["se"])
                          for t, a in zip(tasks, stats) if a]
    for method in study.evaluation.baselines:
        for h in horizons:
            cols = [base.get((method, h, t)) for t in tasks]
            if cols[0] is None:
                continue
            row = [method, h, "–", *(_fmt(c["normalized_mean"], c["normalized_stderr"]) if c else "" for c in cols)]
            row += [f"{cols[1]['normalized_mean'] / cols[0]['normalized_mean']:.3f}" if cols[1] else ""] if ood_tasks else []
            if grid:
                row += [f"{cols[0]['return_mean']:.1f} ± {cols[0]['return_stderr']:.1f}", f"{cols[0]['goal_rate']:.3f}"]
            lines.append("| " + " | ".join(map(str, row)) + " |")
            plot_rows += [dict(method=method, **{k: c[k] for k in ("task", "normalized_mean", "normalized_stderr")},
                               horizon=h) for c in cols if c]
    lines += ["", *_claims(study, root, agg, base, horizons, in_task, ood_tasks)]
    if grid:
        lines += _grid_claim(study, root, returns, goals, base, horizons, in_task)
    text = "\n".join(lines) + "\n"
    (root / "table.md").write_text(text)
    if plot_rows:
        fig = plot_return_vs_horizon(plot_rows, ood_tasks=ood_tasks, reference_methods=study.evaluation.baselines)
        fig.savefig(root / "return_vs_horizon.png", dpi=120)
    cells = study_cells(study, root)
    for key, figure, ylabel in (("eval_normalized_return", "learning_curves.png", None),
                                ("entropy", "entropy_curves.png", "policy entropy (nats)")):
        curves = learning_curves(cells, key)
        if curves:
            fig = plot_learning_curves(
                {f"{a} (H={h}, {c[3]} seeds)": c[:3] for (a, h), c in sorted(curves.items())},
                panel=lambda label: label.split("(")[1].split(",")[0], **({"ylabel": ylabel} if ylabel else {}))
            fig.savefig(root / figure, dpi=120)
    return text


def _claims(study, root, agg, base, horizons, in_task, ood_tasks) -> list[str]:
    """The claims of the reproduction issue, each with the figure that tests it (blank where not yet measured)."""
    lines = ["## Claims", ""]
    curves = learning_curves([c for c in study_cells(study, root) if c.status() == "done"])  # final returns only
    has = set(study.algos)
    if {"rl2", "rl3"} <= has:
        lines.append("1. **Sample efficiency** (frames RL³ needs to reach RL²'s final held-out return, on the seed-mean "
                     "learning curves of the training-time evaluations; target ≤ 0.5× at H ≥ 256):")
        for h in horizons:
            rl2, rl3 = curves.get(("rl2", h)), curves.get(("rl3", h))
            if rl2 and rl3:
                need = frames_to_reach(rl3[0], rl3[1], rl2[1][-1])
                when = "not reached by RL³" if need is None else (
                    f"reached by RL³ after {need / rl2[0][-1]:.3f}× the frames ({need:,} of {rl2[0][-1]:,})")
                lines.append(f"   - H = {h}: RL²'s final {rl2[1][-1]:.3f} {when}")
        lines.append("2. **Return vs H** (RL³ − RL² at equal frames, in SE units of the difference):")
        for h in horizons:
            a, b = agg.get(("rl3", h, in_task)), agg.get(("rl2", h, in_task))
            if a and b:
                diff, se = a["mean"] - b["mean"], math.hypot(a["se"], b["se"])
                overlap = "non-overlapping" if a["mean"] - a["se"] > b["mean"] + b["se"] else "overlapping"
                lines.append(f"   - H = {h}: {diff:+.3f} ({diff / se if se else float('inf'):.1f} SE; SE bars "
                             f"{overlap})")
    if ood_tasks:
        lines.append("3. **OOD / in-distribution ratio** (target for RL³ ≥ 0.97 at every H):")
    for algo in study.algos if ood_tasks else ():
        ratios = [f"H = {h}: {agg[(algo, h, ood_tasks[0])]['mean'] / agg[(algo, h, in_task)]['mean']:.3f}"
                  for h in horizons if (algo, h, in_task) in agg and (algo, h, ood_tasks[0]) in agg]
        if ratios:
            lines.append(f"   - {algo}: " + ", ".join(ratios))
    if "rl3" in has:
        lines.append("4. **Beyond its own inputs** (RL³ minus each baseline on the same tasks, in SE units; target > 3):")
        for h in horizons:
            a = agg.get(("rl3", h, in_task))
            parts = []
            for method in study.evaluation.baselines:
                b = base.get((method, h, in_task))
                if a and b:
                    diff = a["mean"] - b["normalized_mean"]
                    parts.append(f"{method} {diff:+.3f} ({diff / math.hypot(a['se'], b['normalized_stderr']):.1f} SE)")
            if parts:
                lines.append(f"   - H = {h}: " + ", ".join(parts))
    if "rl2" in has:
        h = min(horizons, key=lambda x: abs(x - 100))
        a, b = agg.get(("rl2", h, in_task)), base.get(("random", h, in_task))
        if a and b:
            lines.append(f"5. **RL² learns** (target ≥ +0.1 over the random policy at H = {h}): "
                         f"{a['mean'] - b['normalized_mean']:+.3f} ({_fmt(a['mean'], a['se'])} vs "
                         f"{b['normalized_mean']:.3f})")
            if _is_gridworld(study):
                lines.append("   - on grids the random policy is a weak reference: it pays for water, warnings and "
                             "dangers, and doing nothing (return −H) beats it; see claim 6's returns and goal rates")
    return lines


def _is_gridworld(study: DictConfig) -> bool:
    return TASKS[study.env].q_preset == "gridworld"


def _grid_claim(study, root, returns, goals, base, horizons, in_task) -> list[str]:
    """Claim 6 of the reproduction issue on a gridworld study: RL³'s goal rate, RL³ > RL² > random in return, and
    RL³-coarse's return and training frames/s (the median over iterations of each seed, averaged) beside RL³'s."""
    from rl3_torchrl.plotting import read_scalars

    speed: dict = {}
    for cell in study_cells(study, root):
        log_dir = cell.output_dir / "logs" / cell.config().logger.exp_name
        if cell.status() == "done" and log_dir.is_dir():
            values = sorted(read_scalars(log_dir).get("frames_per_s", ([], []))[1])
            if values:
                speed.setdefault((cell.algo, cell.horizon), []).append(values[len(values) // 2])
    lines = ["6. **Grids learn** (RL³ reaches the goal in most inner episodes; RL³ > RL² > random in return; "
             "RL³-coarse beside RL³):"]
    for h in horizons:
        parts = [f"{m} {returns[(m, h, in_task)]['mean']:.1f} ± {returns[(m, h, in_task)]['se']:.1f} (goal rate "
                 f"{goals[(m, h, in_task)]['mean']:.3f})" for m in study.algos if (m, h, in_task) in returns]
        random = base.get(("random", h, in_task))
        if random:
            parts.append(f"random {random['return_mean']:.1f} ± {random['return_stderr']:.1f} (goal rate "
                         f"{random['goal_rate']:.3f})")
        lines.append(f"   - H = {h}, return: " + ", ".join(parts))
        rates = [f"{m} {sum(v) / len(v):,.0f}" for m in study.algos if (v := speed.get((m, h)))]
        if rates:
            lines.append(f"   - H = {h}, training frames/s (one thread, shared machine): " + ", ".join(rates))
    return lines


def git_revision() -> str:
    """The commit of the package's working tree, ``+modified`` when tracked files differ from it (``unknown``
    outside a git checkout).

    Examples:
        >>> len(git_revision()) >= 7
        True
    """
    here = Path(__file__).parent
    try:
        run = dict(capture_output=True, text=True, check=True, cwd=here)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+modified" if dirty else "")


def _versions() -> dict:
    import numpy
    import tensordict
    import torchrl

    import rl3_torchrl

    return {"rl3_torchrl": f"{rl3_torchrl.__version__} (git {git_revision()})", "python": sys.version.split()[0],
            "torch": torch.__version__, "torchrl": torchrl.__version__, "tensordict": tensordict.__version__,
            "numpy": numpy.__version__}


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs"


def write_manifest(study: DictConfig, root, *, command: str, wall_s: float) -> Path:
    """Write ``root/MANIFEST``: the study's commands (every invocation so far), versions, machine, and per cell its
    status, recipe command, iterations, frames and training wall time."""
    root = Path(root)
    history = root / "commands.log"
    with open(history, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  wall {wall_s / 60:.1f} min  {command}\n")
    source = study.get("source", f"rl3_torchrl/configs/studies/{study.name}.yaml")
    lines = [f"study: {study.name} ({source})", "invocations:"]
    lines += ["  " + line for line in history.read_text().splitlines()]
    lines += ["versions:"] + [f"  {k}: {v}" for k, v in _versions().items()]
    lines += [f"machine: {_machine()}", f"evaluation: {study.evaluation.num_tasks} held-out tasks per row, test "
              f"stream seed {EVAL_SEED}", "cells:"]
    total_frames, total_wall = 0, 0.0
    for cell in study_cells(study, root):
        record_path = cell.output_dir / CELL_RECORD
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        total_frames += record.get("frames", 0)
        total_wall += record.get("wall_s", 0.0)
        lines.append(f"  - {cell.name}: {cell.status()}, iterations {record.get('iterations', 0)}, frames "
                     f"{record.get('frames', 0):,}, wall {record.get('wall_s', 0.0) / 60:.1f} min, code "
                     f"{', '.join(record.get('code', ['not recorded']))}")
        lines.append(f"    {cell.command}")
    lines.append(f"total: {total_frames:,} frames, {total_wall / 3600:.2f} CPU-hours of training (one thread per cell)")
    path = root / "MANIFEST"
    path.write_text("\n".join(lines) + "\n")
    return path


def _per_frames(cells: Sequence[Cell], key: str) -> dict[int, list[float]]:
    """Each logged value of ``key`` by frames, over the cells (seeds) that logged it."""
    from rl3_torchrl.plotting import read_scalars

    by_frames: dict[int, list[float]] = {}
    for cell in cells:
        try:
            logs = read_scalars(cell.output_dir / "logs" / cell.config().logger.exp_name)
        except FileNotFoundError:
            continue
        per_iteration = cell.frames(1)
        for step, value in zip(*logs.get(key, ([], []))):
            by_frames.setdefault(step * per_iteration, []).append(value)
    return by_frames


def compare_studies(groups: dict[str, Sequence[Cell]], out, *, min_seeds: int = 2) -> str:
    """Compare groups of cells that differ in one setting (an ablation: one study per setting) at equal frames.

    Writes ``comparison.md`` (the held-out return and the policy's entropy of every group, mean ± SE over the
    seeds that reached those frames, at each number of frames that every group reached with ``min_seeds`` seeds)
    and ``comparison.png`` (learning curves against frames) under ``out``; returns the table. Cells killed before
    their last iteration count up to their last logged evaluation.

    Examples:
        >>> import tempfile
        >>> cells = study_cells(load_study("cpu"), tempfile.mkdtemp(), algos=["rl2"])
        >>> print(compare_studies({"no logs": cells}, tempfile.mkdtemp()).splitlines()[-1])
        No number of frames was reached by every group with 2 seeds.
    """
    from rl3_torchrl.plotting import plot_learning_curves

    empty = [label for label, cells in groups.items() if not cells]
    if not groups or empty:
        raise ValueError(f"compare_studies needs at least one group, each with cells; got groups={list(groups)}, "
                         f"empty: {empty} (check the algos and horizon the cells were selected with).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    returns = {label: _per_frames(cells, "eval_normalized_return") for label, cells in groups.items()}
    entropy = {label: _per_frames(cells, "entropy") for label, cells in groups.items()}
    curves = {}
    for label, series in returns.items():
        points = [(f, _seed_stats(v)) for f, v in sorted(series.items()) if len(v) >= min_seeds]
        if points:
            curves[label] = ([f for f, _ in points], [m for _, (m, _) in points], [e for _, (_, e) in points])
    if curves:
        plot_learning_curves(curves).savefig(out / "comparison.png", dpi=120)
    common = sorted(set.intersection(*(
        {f for f, v in series.items() if len(v) >= min_seeds} for series in returns.values())))
    lines = ["# Held-out oracle-normalised return (and policy entropy, nats) at equal frames", "",
             f"Mean ± SE over the seeds that reached those frames (seeds in brackets; groups need ≥ {min_seeds}).", ""]
    if not common:
        lines.append(f"No number of frames was reached by every group with {min_seeds} seeds.")
        return "\n".join(lines)
    shown = common if len(common) <= 6 else [common[round(i * (len(common) - 1) / 5)] for i in range(6)]
    lines += ["| group | " + " | ".join(f"{f / 1e6:.2f}M frames" for f in shown) + " |",
              "|---|" + "---|" * len(shown)]
    for label in groups:
        row = []
        for f in shown:
            (m, e), n = _seed_stats(returns[label][f]), len(returns[label][f])
            ent = entropy[label].get(f)
            row.append(f"{_fmt(m, e)} [{n}]" + (f" (entropy {_seed_stats(ent)[0]:.2f})" if ent else ""))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    (out / "comparison.md").write_text(text)
    return text
