"""
Your own PPO loop
=================

:class:`~rl3_torchrl.training.Trainer` is one way to train RL³; this tutorial writes the loop by hand from stock
TorchRL parts — a :class:`~torchrl.collectors.Collector`, :class:`~torchrl.objectives.value.GAE` and
:class:`~torchrl.objectives.ClipPPOLoss` — around the package's env, transforms and actor-critic, so that you can
change any piece of it. A Transformer critic is not a feed-forward critic: the second half of the page shows the
calls that would silently compute wrong advantages with it, and the errors the modules raise instead. It runs in
about ten seconds on one CPU thread.
"""

# %%
# The environment and the actor-critic
# ------------------------------------
#
# ``B`` random MDPs (one task per batch row) with meta-episodes of ``H`` steps, the RL² inputs, the online Q
# estimate of RL³ and :class:`~torchrl.envs.InitTracker`, composed by hand (:func:`~rl3_torchrl.tasks.make_meta_env`
# builds the same for a named task). :func:`~rl3_torchrl.modules.make_actor_critic` reads the token keys from the
# env's specs and returns a :class:`~torchrl.modules.ProbabilisticActor` and a critic writing ``state_value``,
# each a :class:`~rl3_torchrl.modules.MetaTransformerModule`.
import copy
import textwrap

import matplotlib.pyplot as plt
import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.envs import Compose, InitTracker, TransformedEnv
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import ClipPPOLoss, ValueEstimators
from torchrl.objectives.value import GAE

from rl3_torchrl.envs import RandomMDPEnv
from rl3_torchrl.modules import make_actor_critic
from rl3_torchrl.objectives import DecoupledClipPPOLoss
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator

torch.manual_seed(0)
B, H = 16, 20


def make_env(seed=0):
    base = RandomMDPEnv(B, n_states=5, n_actions=3, horizon=H, episode_length=5, seed=seed)
    return TransformedEnv(base, Compose(MetaRLInputs(), OnlineQEstimator(), InitTracker()))


env = make_env()
actor, critic = make_actor_critic(env, "rl3", d_model=32, hidden_sizes=(64,), num_layers=1, num_heads=2, ffn_dim=64)

# %%
# The loop
# --------
#
# * **Collection.** ``frames_per_batch = B * H`` with ``reset_at_each_iter=True``: every batch is ``[B, H]``, each
#   row one whole meta-episode from its first step, and its last dim is named ``"time"``. The actor runs its step
#   path (one token per env and call, against a KV cache inside the module).
# * **Advantages.** ``GAE(..., value_network=critic, shifted=True)``: one causal pass of the critic over each row and
#   its last ``"next"`` step. The ``"time"`` dim makes the critic run its window path; no
#   :class:`~torchrl.modules.set_recurrent_mode` is needed (it would give the same numbers).
# * **Update.** :class:`~torchrl.objectives.ClipPPOLoss` on minibatches of whole rows: the replay buffer stores the
#   ``[B, H]`` batch as ``B`` items. Every loss runs in recurrent mode, so actor and critic read whole windows.
collector = Collector(env, actor, frames_per_batch=B * H, total_frames=40 * B * H, reset_at_each_iter=True,
                      auto_register_policy_transforms=False)
gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic, shifted=True)
loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=0.01, normalize_advantage=True)
optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
buffer = ReplayBuffer(storage=LazyTensorStorage(B), sampler=SamplerWithoutReplacement(), batch_size=4)

returns, critic_losses = [], []
for data in collector:
    with torch.no_grad():
        gae(data)
    buffer.extend(data)
    for epoch in range(3):
        for minibatch in buffer:
            out = loss_fn(minibatch)
            loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), 1.0)
            optimizer.step()
            critic_losses.append(out["loss_critic"].item())
    collector.update_policy_weights_()
    returns.append(data["next", "reward"].sum(-2).mean().item())
collector.shutdown()
print(f"mean meta-episode return: first batch {returns[0]:.2f}, last batch {returns[-1]:.2f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
left.plot(returns)
left.set(xlabel="iteration", ylabel=f"mean return of the batch (H = {H})")
right.plot(critic_losses)
right.set(xlabel="minibatch", ylabel="loss_critic", yscale="log")
fig.suptitle("RL³ with a hand-written PPO loop")
fig.tight_layout()
plt.show()

# %%
# Forty iterations (13k frames, one seed) show the loop learning — the critic fits the returns and the batch return
# rises — not how well RL³ does: see :doc:`plot_training` and :doc:`/reproducing` for that.
# %%
# The first batch of every iteration is checked by the loss itself: before any update, the policy the loss
# recomputes over whole windows is the one that acted step by step (``kl_approx`` is zero to float precision).
data = next(iter(Collector(make_env(seed=1), actor, frames_per_batch=B * H, total_frames=B * H,
                           reset_at_each_iter=True, auto_register_policy_transforms=False)))
with torch.no_grad():
    gae(data)
    print("kl_approx before any update:", loss_fn(data)["kl_approx"].item())

# %%
# **Batches from older weights.** A loop that collects the next batch while it updates (TorchRL's
# :class:`~torchrl.collectors.MultiAsyncCollector`, or ``collector.backend=async`` in the recipe) trains on data from
# the weights of one update earlier, and ``ClipPPOLoss`` then clips, and ``kl_approx`` measures, from those older
# weights. :class:`~rl3_torchrl.objectives.DecoupledClipPPOLoss` takes ``ClipPPOLoss``'s arguments and clips around
# the weights at the update's start instead, weighting each sample by π_prox / π_behav (and its ``kl_approx``
# estimates KL(π_prox ‖ π_θ) with the same weights); call its ``write_proximal_log_prob`` once per batch, after GAE.
# On a batch from the current weights it gives ``ClipPPOLoss``'s numbers:
decoupled = DecoupledClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=0.01, normalize_advantage=True)
with torch.no_grad():
    decoupled.write_proximal_log_prob(data)
    print("loss_objective, ClipPPOLoss:", loss_fn(data)["loss_objective"].item(),
          " DecoupledClipPPOLoss:", decoupled(data)["loss_objective"].item())


# %%
# Pitfalls, and what the modules do about them
# --------------------------------------------
#
# A recurrent or Transformer critic needs the context of each step: the steps since the meta-episode started.
# Value estimators and losses call the critic in ways that are harmless for a feed-forward critic and cut that
# context for a sequence model. Where the module can compute the right numbers it does; where it cannot know
# them it raises a ``ValueError`` that says what to change. Each case below runs the wrong call and prints the
# start of the error.
def show(call):
    try:
        call()
    except ValueError as err:
        print(textwrap.fill(f"ValueError: {err}", 110, break_on_hyphens=False), end="\n\n")


# %%
# **GAE with its defaults** (``shifted=False``, the TorchRL PPO tutorial's call). GAE calls the critic on ``data``
# and on ``data["next"]`` separately, under :func:`torch.vmap`; the ``"next"`` window starts at step 1 and has lost
# step 0, so its values would be wrong (by 0.94 on a typical batch). The module refuses to run under vmap:
show(lambda: GAE(gamma=0.99, lmbda=0.95, value_network=critic)(data.clone()))

# %%
# **TorchRL's recipe for recurrent critics** (``deactivate_vmap=True`` in recurrent mode) calls the critic twice in
# a loop instead. The ``"next"`` window starts at step 1 but carries ``is_init=True`` there (GAE copies the root's
# flag so that RNNs restart); the critic checks ``is_init`` against the token's own ``first_step`` entry and sees
# the cut:
with set_recurrent_mode(True):
    show(lambda: GAE(gamma=0.99, lmbda=0.95, value_network=critic, deactivate_vmap=True)(data.clone()))

# %%
# ``torchrl>=0.15``'s ``GAE.for_recurrent`` uses these settings (and ``average_gae=True``): with this critic it
# raises the same error; use ``GAE(..., shifted=True)``.
#
# **The loss's own value estimator.** Without an ``"advantage"`` entry, :class:`~torchrl.objectives.ClipPPOLoss`
# runs GAE with its defaults, under vmap. (The copies keep ``actor`` and ``critic`` intact: tensordict leaves the
# vmapped parameters in a module when an error escapes a functional call.)
without_advantages = data.exclude("advantage", "value_target")
show(lambda: ClipPPOLoss(copy.deepcopy(actor), copy.deepcopy(critic))(without_advantages.clone()))

# %%
# The fix the message gives works — with ``functional=False``, since torchrl 0.14 refuses ``shifted=True`` with the
# separate target parameters of a functional loss — and gives the same losses as the advantages computed above:
own = ClipPPOLoss(actor, critic, functional=False)
own.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95, shifted=True)
with torch.no_grad():
    print("loss_critic, own estimator:", own(without_advantages.clone()).get("loss_critic").item())
    print("loss_critic, GAE above:    ", own(data).get("loss_critic").item())

# %%
# **Batches that are not whole meta-episodes.** With ``frames_per_batch = B * H / 2`` and no reset at each batch,
# the second batch starts in the middle of the meta-episodes. The loss would recompute the policy without the first
# half of the context (a non-zero KL against the behaviour policy before any update) and the critic's values
# likewise. The first window that does not start at ``is_init`` raises:
half = Collector(make_env(seed=2), actor, frames_per_batch=B * H // 2, total_frames=B * H,
                 auto_register_policy_transforms=False)
first_half, second_half = list(half)
half.shutdown()
with torch.no_grad():
    gae(first_half)  # a window from the first step: fine, GAE bootstraps from the value of the step after it
    show(lambda: gae(second_half))

# %%
# **Calling the critic on a batch.** On a time-named ``[B, H]`` batch (collected data, rollouts, replay-buffer
# samples) the critic runs its window path, with gradients, in or out of recurrent mode. If the time dim has lost
# its name, the batch would look like ``B * H`` new streams of one step each; the step path refuses streams that
# do not start a meta-episode:
values = critic(data.clone())["state_value"]
with set_recurrent_mode(True):
    print("same values in recurrent mode:", torch.allclose(values, critic(data.clone())["state_value"]))
unnamed = data.clone()
unnamed.names = None
show(lambda: critic(unnamed))

# %%
# What to keep from this page: collect whole meta-episodes (``frames_per_batch = B * H``,
# ``reset_at_each_iter=True``), compute advantages with ``GAE(..., shifted=True)``, and train on whole rows.
# :class:`~rl3_torchrl.training.Trainer` does exactly this (``Trainer.advantages`` is the same ``GAE`` call, on the
# rewards times ``ppo.reward_scale``).
