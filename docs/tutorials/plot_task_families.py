"""
Task families
=============

A meta-RL agent is trained on a *distribution* of tasks and judged on new tasks from it (or from a shifted one).
This tutorial builds the task families of the package, looks inside individual tasks, and measures the gap that
meta-learning has to close: the return of a random policy versus the return of an oracle that knows the task.

* :class:`~rl3_torchrl.envs.RandomMDPEnv`: random tabular MDPs (Duan et al., 2016) and Bernoulli bandits;
* :class:`~rl3_torchrl.envs.GridworldEnv`: procedurally generated navigation grids (the RL³ paper).

Every env holds a batch of tasks, one per row, and a **meta-episode** of ``H`` steps is one TorchRL episode (see
:doc:`/concepts`).
"""

# %%
# Random MDPs
# -----------
#
# The paper's defaults: ``|S| = 10`` states, ``|A| = 5`` actions, transition rows ``P(·|s, a) ~ Dirichlet(1)``, mean
# rewards ``R(s, a) ~ N(1, 1)`` observed with unit Gaussian noise, inner episodes of 10 steps from state 0.
# ``split="test"`` draws from the held-out task stream (train and test never share tasks).
import matplotlib.pyplot as plt
import torch

from rl3_torchrl.envs import RandomMDPEnv, oracle_return, random_policy_return

torch.manual_seed(0)
H = 100
env = RandomMDPEnv.from_preset("default", num_envs=256, horizon=H, split="test", seed=0)
td = env.reset()
print(env.batch_size, env.n_states, env.n_actions, env.episode_length)
print(td)

# %%
# :meth:`~rl3_torchrl.envs.MetaTaskEnv.task_mdp` exposes the exact model of the current tasks: the transition
# tensor, the mean rewards, the terminal states, the start state and the inner-episode length. The agent never sees
# it; the oracle and the plots below do.
tasks = env.task_mdp()
print({key: tuple(value.shape) for key, value in tasks.items()})

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
image = axes[0].imshow(tasks["reward"][0].T, cmap="coolwarm")
axes[0].set(title="task 0: mean reward R(s, a)", xlabel="state s", ylabel="action a")
fig.colorbar(image, ax=axes[0], fraction=0.046)
image = axes[1].imshow(tasks["transition"][0, :, 0], cmap="Greys", vmin=0, vmax=1)
axes[1].set(title="task 0: P(s' | s, a = 0)", xlabel="next state s'", ylabel="state s")
fig.colorbar(image, ax=axes[1], fraction=0.046)
fig.tight_layout()

# %%
# The out-of-distribution preset keeps everything but the concentration of the Dirichlet: ``α = 0.25`` makes the
# transitions peakier (more deterministic). A policy meta-trained on ``α = 1`` is evaluated on these.
ood = RandomMDPEnv.from_preset("ood", num_envs=256, horizon=H, split="test", seed=0)
ood.reset()
fig, ax = plt.subplots(figsize=(5, 3))
for name, e in (("default (α = 1)", env), ("ood (α = 0.25)", ood)):
    peak = e.task_mdp()["transition"].amax(-1).flatten()
    ax.hist(peak.numpy(), bins=40, range=(0, 1), alpha=0.6, density=True, label=name)
ax.set(xlabel="max_s' P(s' | s, a)", ylabel="density", title="how deterministic are the transitions?")
ax.legend()
fig.tight_layout()

# %%
# Random policy versus oracle
# ---------------------------
#
# :func:`~rl3_torchrl.envs.oracle_return` solves each task exactly (finite-horizon dynamic programming with the
# inner-episode restarts): the best expected return of an agent that *knows* the task.
# :func:`~rl3_torchrl.envs.random_policy_return` is the same recursion for the uniformly random policy. A rollout
# without a policy takes random actions, so its average return must match the exact random value up to sampling
# noise.
rollout = env.rollout(H)  # random actions; stops at done, i.e. after H steps
sampled = rollout["next", "reward"].sum((1, 2))
exact_random = random_policy_return(env)
oracle = oracle_return(env)
print(f"random policy, sampled : {sampled.mean():7.2f} ± {sampled.std() / len(sampled) ** 0.5:.2f}")
print(f"random policy, exact   : {exact_random.mean():7.2f}")
print(f"oracle (knows the task): {oracle.mean():7.2f}")

# %%
# Tasks differ a lot in how much there is to gain, which is why results are reported per task as
# **oracle-normalised returns**, ``return / oracle_return``, averaged over held-out tasks. A random policy scores
# ``random / oracle`` whatever ``H``; an agent that learns the task *within* the meta-episode moves from there towards
# 1 as ``H`` grows and its exploration is amortised over more inner episodes.
fig, ax = plt.subplots(figsize=(4.5, 4))
ax.scatter(oracle, exact_random, s=8, alpha=0.6)
ax.axline((0, 0), slope=1, color="grey", linestyle=":", label="random = oracle")
ax.set(xlabel="oracle return", ylabel="random-policy return", title=f"256 test tasks, H = {H}")
ax.legend()
fig.tight_layout()
print("random / oracle:", round((exact_random / oracle).mean().item(), 3))

# %%
# Bernoulli bandits
# -----------------
#
# A bandit is the same env with one state and inner episodes of one step: 5 arms whose success probabilities are
# drawn ``U(0, 1)`` (``"bandit"``) or from a clipped ``N(0.5, 0.5)`` (``"bandit_ood"``, more arms near 0 and 1).
bandit = RandomMDPEnv.from_preset("bandit", num_envs=512, split="test")
bandit_ood = RandomMDPEnv.from_preset("bandit_ood", num_envs=512, split="test")
fig, ax = plt.subplots(figsize=(5, 3))
for name, e in (("bandit", bandit), ("bandit_ood", bandit_ood)):
    e.reset()
    arms = e.task_mdp()["reward"].flatten()
    ax.hist(arms.numpy(), bins=20, range=(0, 1), alpha=0.6, density=True, label=name)
    print(f"{name:10s} H = {e.horizon}: random {random_policy_return(e).mean():6.2f}, "
          f"oracle {oracle_return(e).mean():6.2f}")
ax.set(xlabel="arm success probability", ylabel="density")
ax.legend()
fig.tight_layout()

# %%
# Gridworlds
# ----------
#
# :class:`~rl3_torchrl.envs.GridworldEnv` generates a new grid at every reset: obstacles ``#``, water ``W``
# (slippery, −2), dangers ``X`` (−100, end the inner episode) ringed by warnings ``!`` (−10), and a goal ``G`` (+100,
# ends the inner episode) far from the start ``S`` in the centre. Each step costs −1; moves slip sideways with
# probability 0.2 (always on water). Inner episodes end only at ``G`` or ``X``, after which the agent restarts in
# the centre, so a good agent finds the goal once and then walks there again and again.
from rl3_torchrl.envs import GridworldEnv, grid_values, plot_grid, render_text

grids = GridworldEnv.from_preset("13x13", num_envs=4, split="test", seed=0)
grids.reset()
tiles = grids.tiles()
print(grids.batch_size, grids.size, grids.horizon, grids.n_states)
print(render_text(tiles[0]))

# %%
# A random walk of ``H = 350`` steps in the first grid, drawn with :func:`~rl3_torchrl.envs.plot_grid`; ``"state"``
# is the cell index ``row * N + col`` and the observation is ``(row / N, col / N)``.
walk = grids.rollout(grids.horizon)
print("inner episodes finished by the random walks:", walk["next", "inner_done"].sum((1, 2)).tolist())
print("random-walk returns:", walk["next", "reward"].sum((1, 2)).tolist())
print("oracle returns     :", [round(x, 1) for x in oracle_return(grids).tolist()])
fig, ax = plt.subplots(figsize=(6, 4))
plot_grid(tiles[0], trajectory=walk["state"][0, :60], ax=ax, title="grid 0, first 60 random steps")

# %%
# The generator keeps a grid only if one inner episode of 100 steps has an optimal return in ``[50, 100]``.
# :func:`~rl3_torchrl.envs.grid_values` computes those exact optimal values for every cell:
values = grid_values(tiles.flatten(1), grids.size, horizon=100, slip=grids.slip, water_slip=grids.water_slip)
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
plot_grid(tiles[1], ax=axes[0], title="grid 1")
plot_grid(tiles[1], values=values[1], ax=axes[1], title="optimal value, 100 steps to go")
fig.tight_layout()

# %%
# Out-of-distribution gridworlds
# ------------------------------
#
# The paper's OOD shifts of the 13×13 family: longer obstacles, no slip, more water, more dangers, and goals only
# in the corners. One grid of each:
presets = ["13x13", "13x13_dense", "13x13_deterministic", "13x13_watery", "13x13_dangerous", "13x13_corner"]
fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
for name, ax in zip(presets, axes.flat):
    shifted = GridworldEnv.from_preset(name, num_envs=1, split="test", seed=1)
    shifted.reset()
    plot_grid(shifted.tiles()[0], ax=ax, title=name)
    if ax.get_legend() is not None and ax is not axes.flat[2]:
        ax.get_legend().remove()
fig.tight_layout()
