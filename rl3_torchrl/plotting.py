"""Figures of the recipes: meta-training curves, return vs horizon, and RL³'s value estimates on a grid."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402


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
    fig, ax = plt.subplots(figsize=(5.5, 4))
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
    ax.set_xscale("log", base=2)
    ax.set_xlabel("meta-episode length H")
    ax.set_ylabel("oracle-normalised return" if value == "normalized_mean" else value)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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


def plot_value_map(task: str = "gridworld_13x13", *, policy=None, algo: str = "rl3", horizon=None, seed: int = 0):
    """Play one meta-episode on a held-out gridworld and draw the online Q estimator's values on the grid.

    Args:
        task (str): a gridworld task name.

    Keyword Args:
        policy: a TensorDict policy for an env with ``algo``'s inputs (e.g. a trained RL³ actor); default: the
            greedy tabular policy on the estimator's own ``q_values``.
        algo (str): ``"rl3"`` or ``"rl3_coarse"``.
        horizon (int, optional): ``H`` (default: the task's).
        seed (int): the test task stream's seed.

    Examples:
        >>> fig = plot_value_map("gridworld_11x11", horizon=30)
        >>> len(fig.axes) >= 1
        True
    """
    from rl3_torchrl.evaluation import run_meta_episodes  # the evaluation module imports plotting's users
    from rl3_torchrl.modules.tabular import QGreedyPolicy
    from rl3_torchrl.envs import plot_grid
    from rl3_torchrl.tasks import make_meta_env
    from rl3_torchrl.transforms import OnlineQEstimator

    if not task.startswith("gridworld"):
        raise ValueError(f"plot_value_map needs a gridworld task, got task={task!r}.")
    env = make_meta_env(task, algo, 1, horizon=horizon, seed=seed, split="test", write_q_values=policy is None)
    estimator = next(t for t in env.transform if isinstance(t, OnlineQEstimator))
    act = policy or QGreedyPolicy(0.0, seed=seed)
    seen = {"states": []}

    def record(td):
        # the env draws a new task right after the last step: keep this task's grid and latest estimates
        if not seen["states"]:
            seen["tiles"] = env.base_env.tiles()[0].clone()
        seen["states"].append(int(td["state"][0]))
        seen["values"] = estimator.value_map()[0].clone()
        return act(td)

    rewards, _, oracle = run_meta_episodes(env, lambda env: record)
    fig, ax = plt.subplots(figsize=(5, 5))
    plot_grid(seen["tiles"], trajectory=seen["states"], values=seen["values"], ax=ax,
              title=f"{task}: return {float(rewards.sum()):.0f} (oracle {float(oracle[0]):.0f}); V estimates")
    return fig
