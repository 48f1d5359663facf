"""Figures of the recipes: meta-training curves, return vs horizon, inner-episode returns, and RL³'s value estimates
on a grid. This module only draws: the data come from :mod:`rl3_torchrl.evaluation` (e.g. the episode of
:func:`~rl3_torchrl.evaluation.value_map_episode`) or the CSV logs; it sets no matplotlib backend."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt


def read_scalars(log_dir) -> dict[str, tuple[list[int], list[float]]]:
    """Read the ``scalars/*.csv`` files of torchrl's ``CSVLogger``: ``{name: (steps, values)}``.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "scalars").mkdir()
        >>> _ = (d / "scalars" / "return.csv").write_text("1,2.5\\n2,3.0\\n")
        >>> read_scalars(d)["return"]
        ([1, 2], [2.5, 3.0])
    """
    scalars = {}
    for path in sorted(Path(log_dir).glob("scalars/*.csv")):
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if row]
        scalars[path.stem] = ([int(float(r[0])) for r in rows], [float(r[1]) for r in rows])
    if not scalars:
        raise FileNotFoundError(f"no scalars/*.csv under {str(log_dir)!r}: was the run logged with the CSV logger?")
    return scalars


def plot_training_curves(
    log_dirs: dict[str, Path], keys: Sequence[str] = ("return", "eval_normalized_return", "kl_approx", "entropy")
):
    """One panel per scalar, one line per run (``{label: CSV log dir}``); returns the figure.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "scalars").mkdir()
        >>> _ = (d / "scalars" / "return.csv").write_text("1,2.5\\n2,3.0\\n")
        >>> len(plot_training_curves({"rl3": d}).axes)
        1
    """
    runs = {label: read_scalars(d) for label, d in log_dirs.items()}
    keys = [k for k in keys if any(k in s for s in runs.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, scalars in runs.items():
            if key in scalars:
                ax.plot(*scalars[key], label=label, marker="." if len(scalars[key][0]) < 20 else None)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def plot_return_vs_horizon(
    rows: Sequence[dict],
    value: str = "normalized_mean",
    ood_tasks: Sequence[str] = (),
    reference_methods: Sequence[str] = (),
):
    """Return vs ``H``: one colour per method, solid in-distribution, dashed for the tasks in ``ood_tasks``.

    Args:
        rows: dicts with ``method``, ``task``, ``horizon``, ``value`` and ``value`` + ``_stderr`` minus ``_mean``
            (as written by ``recipes/evaluate.py``).
        value (str): the column drawn.
        ood_tasks: the tasks drawn dashed.
        reference_methods: methods drawn as thin grey reference lines without error bars (e.g. baselines).

    Examples:
        >>> rows = [{"method": "random", "task": t, "horizon": h, "normalized_mean": 0.4, "normalized_stderr": 0.01}
        ...         for t in ("random_mdp", "random_mdp_ood") for h in (10, 20)]
        >>> fig = plot_return_vs_horizon(rows, ood_tasks=["random_mdp_ood"])
        >>> len(fig.axes[0].containers)
        2
    """
    stderr = value.replace("_mean", "_stderr")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    learned = [m for m in methods if m not in reference_methods]
    references = [m for m in methods if m in reference_methods]
    for method in methods:
        reference = method in reference_methods
        if reference:
            colour = plt.cm.Greys(0.35 + 0.55 * references.index(method) / max(1, len(references) - 1))
        else:
            colour = colours[learned.index(method) % len(colours)]
        for task in dict.fromkeys(r["task"] for r in rows if r["method"] == method):
            runs = [r for r in rows if (r["method"], r["task"]) == (method, task)]
            pts = sorted((r["horizon"], r[value], r.get(stderr, 0.0)) for r in runs)
            h, y, e = zip(*pts)
            ood = task in ood_tasks
            ax.errorbar(
                h, y, yerr=None if reference else e, color=colour, linestyle="--" if ood else "-",
                marker="." if reference else "o", linewidth=0.8 if reference else 1.5, capsize=2,
                label=f"{method} ({'OOD' if ood else 'in-dist'}: {task})",
            )
    horizons = sorted({r["horizon"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(horizons, [str(h) for h in horizons])
    ax.minorticks_off()
    ax.set_xlabel("meta-episode length H")
    ax.set_ylabel("oracle-normalised return" if value == "normalized_mean" else value)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: many methods
    fig.tight_layout()
    return fig


def plot_learning_curves(curves: dict, *, panel=None, ylabel: str = "held-out oracle-normalised return"):
    """Learning curves against frames with a ±SE band: ``{label: (frames, mean, se)}``; returns the figure.

    Args:
        curves (dict): per label, three sequences of equal length.
        panel (callable, optional): ``label -> panel title``; curves with the same title share a panel.

    Examples:
        >>> fig = plot_learning_curves({"rl3 (H=8)": ([10, 20], [0.5, 0.6], [0.01, 0.02])})
        >>> fig.axes[0].get_xlabel()
        'frames'
    """
    titles = list(dict.fromkeys(panel(label) if panel else "" for label in curves))
    fig, axes = plt.subplots(1, len(titles), figsize=(5 * len(titles), 3.6), squeeze=False)
    for label, (frames, mean, se) in curves.items():
        ax = axes[0][titles.index(panel(label) if panel else "")]
        lo = [m - e for m, e in zip(mean, se)]
        hi = [m + e for m, e in zip(mean, se)]
        (line,) = ax.plot(frames, mean, label=label)
        ax.fill_between(frames, lo, hi, color=line.get_color(), alpha=0.25)
    for ax, title in zip(axes[0], titles):
        ax.set(title=title, xlabel="frames", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_inner_episode_returns(rows: Sequence[dict], task: str, horizon: int):
    """The mean return of each inner episode, one line per method, from the rows of
    :func:`~rl3_torchrl.evaluation.return_vs_horizon` for ``task`` at ``horizon``; returns the figure.

    Examples:
        >>> rows = [{"method": "random", "task": "bandit", "horizon": 6, "inner_episode_returns": [0.4, 0.5]}]
        >>> fig = plot_inner_episode_returns(rows, "bandit", 6)
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['random']
    """
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        if r["task"] == task and r["horizon"] == horizon:
            ax.plot(range(1, len(r["inner_episode_returns"]) + 1), r["inner_episode_returns"], label=r["method"])
    ax.set(xlabel="inner episode", ylabel="mean return", title=f"{task}, H = {horizon}")
    ax.legend()
    return fig


def plot_value_map(episode: dict):
    """Draw the grid of a :func:`~rl3_torchrl.evaluation.value_map_episode`: its tiles, the path taken and the online
    Q estimator's state values at the end; returns the figure.

    Examples:
        >>> from rl3_torchrl.evaluation import value_map_episode
        >>> fig = plot_value_map(value_map_episode("gridworld_11x11", horizon=30))
        >>> len(fig.axes) >= 1
        True
    """
    from rl3_torchrl.envs import plot_grid

    fig, ax = plt.subplots(figsize=(5, 5))
    plot_grid(episode["tiles"], trajectory=episode["states"], values=episode["values"], ax=ax,
              title=f"{episode['task']}: return {episode['return']:.0f} (oracle {episode['oracle']:.0f}); V estimates")
    return fig
