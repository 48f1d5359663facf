"""
Training RL³ vs RL²
===================

The recipe ``recipes/ppo_rl3.py`` meta-trains a Transformer actor-critic with PPO from stock TorchRL parts (a
``Collector``, ``GAE``, ``ClipPPOLoss``): the recipe writes the loop out (advantages, the PPO epochs with the
actor-only KL stop, then :meth:`~rl3_torchrl.training.Trainer.end_iteration`), and
:class:`~rl3_torchrl.training.Trainer` builds the parts from an OmegaConf configuration and keeps the run (lock,
exact resume, logs, evaluation, checkpoints). :meth:`~rl3_torchrl.training.Trainer.train` runs the same loop in one
call, as here. This tutorial runs two *tiny* trainings on 5-armed Bernoulli bandits, RL² and RL³ on the
same budget, and evaluates both on held-out tasks. It takes about a minute on a laptop CPU; the paper-scale
configurations are on :doc:`/reproducing`.
"""

# %%
# Configuration
# -------------
#
# :func:`~rl3_torchrl.training.load_config` merges the defaults of ``rl3_torchrl/configs/ppo.yaml``, an optional
# named config (``config=paper_random_mdp``) and ``key=value`` overrides, exactly as on the recipe's command line.
# The tree is locked: a misspelled key is an error.
import tempfile

import matplotlib.pyplot as plt
import torch
from omegaconf import OmegaConf

from rl3_torchrl.training import Trainer, load_config, named_configs

print("named configs:", named_configs())
output = tempfile.mkdtemp()
tiny = [
    "env=bandit", "horizon=50", "num_envs=32", "iterations=60",
    "model.d_model=32", "model.hidden_sizes=[64]", "model.num_layers=1",
    "ppo.minibatch_episodes=8", "eval.every=0", "progress=false",
]
cfg = load_config(["algo=rl3", *tiny, f"output_dir={output}/rl3"])
print(OmegaConf.to_yaml(cfg))

# %%
# Training
# --------
#
# One iteration collects one meta-episode per env (``num_envs × horizon`` frames), computes advantages with GAE and
# runs PPO epochs on minibatches of whole meta-episodes. :meth:`~rl3_torchrl.training.Trainer.train` returns one
# dict of statistics per iteration; ``"return"`` is the mean meta-episode return of the collected batch.
torch.manual_seed(0)
histories, trainers = {}, {}
for algo in ("rl2", "rl3"):
    trainer = Trainer(load_config([f"algo={algo}", *tiny, f"output_dir={output}/{algo}"]))
    histories[algo] = trainer.train()
    trainers[algo] = trainer
print(sorted(histories["rl3"][-1]))

# %%
# The batch return rises from the random policy's ``H / 2 = 25`` towards the oracle's (which always pulls the best
# arm). Bandits are the easy case: the online Q estimate of a bandit is just the empirical mean of each arm, which
# RL² can also infer from its history.
#
# **What this budget can and cannot show.** Sixty iterations of one seed (≈ 10⁵ frames) are enough to see that the
# pipeline learns, nothing more: the gap between RL² and RL³ below is within the seed-to-seed spread of such short
# runs, and the non-learned ``greedy_q`` baseline (greedy action on RL³'s own Q estimate, on the same tasks) is
# usually above both — a meta-learner needs millions of frames to beat it. The comparison that means something
# (three seeds, equal frames, 1000 held-out tasks, in distribution and out of distribution) is the study on
# :doc:`/results`.
fig, ax = plt.subplots(figsize=(6, 3.5))
for algo, history in histories.items():
    returns = torch.tensor([row["return"] for row in history])
    smooth = torch.nn.functional.avg_pool1d(returns[None], 5, stride=1)[0]
    ax.plot(range(4, len(returns)), smooth, label=algo.upper().replace("RL2", "RL²").replace("RL3", "RL³"))
ax.axhline(25, color="grey", linestyle=":", label="random policy")
ax.set(xlabel="PPO iteration", ylabel="batch meta-episode return", title="5-armed bandits, H = 50")
ax.legend()
fig.tight_layout()

# %%
# Held-out evaluation
# -------------------
#
# :func:`~rl3_torchrl.evaluation.evaluate_actor` runs the trained actor on tasks from the *test* stream (never seen
# in training) and normalises each return by that task's oracle return; ``greedy=True`` takes the most likely
# action instead of sampling. :func:`~rl3_torchrl.evaluation.evaluate_baseline` runs the baselines on the same tasks.
from rl3_torchrl.evaluation import evaluate_actor, evaluate_baseline

rows = {}
for algo, trainer in trainers.items():
    rows[algo] = evaluate_actor(trainer.actor, "bandit", algo, horizon=50, num_tasks=256)
for name in ("random", "greedy_q", "oracle"):
    rows[name] = evaluate_baseline(name, "bandit", horizon=50, num_tasks=256)
for name, row in rows.items():
    print(f"{name:9s} return {row['return_mean']:6.2f} ± {row['return_stderr']:.2f}   "
          f"oracle-normalised {row['normalized_mean']:.3f} ± {row['normalized_stderr']:.3f}")

# %%
# The recipe does the same from the command line and also writes CSV logs, a checkpoint and a plot of the
# training curves::
#
#     python recipes/ppo_rl3.py env=bandit horizon=50 iterations=60
#     python recipes/ppo_rl3.py env=bandit horizon=50 iterations=60 algo=rl2
#
# :func:`~rl3_torchrl.training.load_actor` restores a trained actor from a run's ``checkpoint.pt``.
