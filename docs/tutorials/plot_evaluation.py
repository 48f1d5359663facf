"""
Evaluating in and out of distribution
=====================================

Meta-RL policies are judged on *held-out* tasks, from the training distribution and from shifted ones, with returns
normalised by each task's oracle. :mod:`rl3_torchrl.evaluation` does this for learned actors and for the baselines
that share the same tasks: the random policy, the oracle, and tabular agents acting on RL³'s own online Q estimate.
This tutorial evaluates the baselines on random MDPs in distribution (Dirichlet ``α = 1``) and out of distribution
(``α = 0.25``) as a function of the meta-episode length ``H``: the curves a trained RL² / RL³ actor is plotted
against.
"""

# %%
# One evaluation
# --------------
#
# :func:`~rl3_torchrl.evaluation.evaluate_baseline` draws ``num_tasks`` tasks from the *test* stream of ``seed``
# (the same tasks for every method), runs one meta-episode per task and returns means and standard errors of the raw
# and the oracle-normalised return. ``greedy_q`` acts greedily on the RL³ estimator's ``q_values``: RL³'s input
# alone, without any meta-learning.
import matplotlib.pyplot as plt

from rl3_torchrl.evaluation import BASELINES, evaluate_baseline, return_vs_horizon
from rl3_torchrl.tasks import task_family

print("baselines:", BASELINES)
result = evaluate_baseline("greedy_q", "random_mdp", horizon=100, num_tasks=128, max_inner_episodes=10)
print({key: value for key, value in result.items() if key != "inner_episode_returns"})

# %%
# ``max_inner_episodes`` adds the mean return of each inner episode: within one meta-episode, the tabular agent's
# inner episodes get better as its model of the task improves.
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(1, 11), result["inner_episode_returns"], "o-")
ax.set(xlabel="inner episode", ylabel="mean return", title="greedy_q on random MDPs, H = 100")
fig.tight_layout()

# %%
# Return vs ``H``, in and out of distribution
# -------------------------------------------
#
# :func:`~rl3_torchrl.tasks.task_family` lists a task and its OOD shifts;
# :func:`~rl3_torchrl.evaluation.return_vs_horizon` runs every method on every task and ``H``. The budgets here are
# tiny (128 tasks, ``H ≤ 200``); the paper uses 1 000 tasks and ``H`` up to 2048.
tasks = task_family("random_mdp")
print(tasks)
methods = {
    name: (lambda task, horizon, name=name: evaluate_baseline(name, task, horizon=horizon, num_tasks=128))
    for name in ("random", "greedy_q", "eps_greedy_q")
}
rows = return_vs_horizon(methods, tasks, horizons=[25, 50, 100, 200])

fig, ax = plt.subplots(figsize=(6, 4))
for i, name in enumerate(methods):
    for task, style in zip(tasks, ("-", "--")):
        sel = [r for r in rows if r["method"] == name and r["task"] == task]
        ax.errorbar([r["horizon"] for r in sel], [r["normalized_mean"] for r in sel],
                    yerr=[r["normalized_stderr"] for r in sel], fmt="o" + style, color=f"C{i}", capsize=2,
                    label=f"{name} ({'OOD' if task.endswith('ood') else 'in-dist'})")
ax.set(xscale="log", xlabel="meta-episode length H", ylabel="oracle-normalised return", ylim=(0, 1))
ax.legend(fontsize="small", ncol=2)
fig.tight_layout()

# %%
# The same for a trained actor: :func:`~rl3_torchrl.evaluation.evaluate_actor` with the actor of a
# :class:`~rl3_torchrl.training.Trainer` or one loaded by :func:`~rl3_torchrl.training.load_actor` from a run's
# checkpoint, e.g. ``evaluate_actor(actor, "random_mdp_ood", "rl3", horizon=512, num_tasks=1000)``. The
# :doc:`/reproducing` page gives the commands that run the full evaluation of the paper's experiments.
