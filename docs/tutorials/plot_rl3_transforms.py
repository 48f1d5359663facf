"""
Composing the RL³ transforms in your own code
=============================================

RL³'s extra input is produced by an ordinary TorchRL transform, so it can be added to any environment with a
discrete state and a discrete action: no custom collector, no change to the policy code other than reading one more
key. This tutorial

1. composes :class:`~rl3_torchrl.transforms.MetaRLInputs` (the RL² inputs) and
   :class:`~rl3_torchrl.transforms.OnlineQEstimator` (the online Q estimates) on a random-MDP env;
2. watches the Q features become accurate as experience accumulates within a meta-episode;
3. puts the same transforms on a small environment written from scratch with :class:`~torchrl.envs.EnvBase`;
4. runs the estimator on gridworlds, with and without the coarse state abstraction.
"""

# %%
# The RL² and RL³ inputs on a random MDP
# --------------------------------------
#
# ``MetaRLInputs`` writes ``prev_action`` (one-hot), ``prev_reward`` and ``first_step``. ``OnlineQEstimator``
# keeps a count-based model of each row's task, solves it by value iteration after every step and writes
# ``q_features`` for the state the policy sees next; ``write_q_values=True`` also writes the raw ``Q(s, ·)``.
# ``InitTracker`` adds ``is_init``, which the Transformer uses to reset its cache. The ``"random_mdp"`` preset is
# the paper's setting (Laplace ``α = 0.1``, ``γ = 0.95``, at most 10 sweeps from zero).
import matplotlib.pyplot as plt
import torch
from torchrl.envs import Compose, InitTracker, TransformedEnv

from rl3_torchrl.envs import RandomMDPEnv
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator, q_feature_slices

torch.manual_seed(0)
B, H = 64, 300
env = TransformedEnv(
    RandomMDPEnv.from_preset("default", num_envs=B, horizon=H, split="test", seed=0),
    Compose(MetaRLInputs(), OnlineQEstimator.from_preset("random_mdp", write_q_values=True), InitTracker()),
)
td = env.reset()
print({key: tuple(td[key].shape) for key in ("prev_action", "prev_reward", "first_step", "q_features", "is_init")})

# %%
# A meta-episode of random actions. The features of step ``t`` (root of the rollout) are computed from the
# transitions ``0 … t − 1`` only; the first step has no experience, so its features are zeros.
rollout = env.rollout(H)
features = rollout["q_features"]  # [B, H, 2A + 1]
blocks = q_feature_slices(env.action_spec.space.n)
print(blocks)
print("features at t = 0 are zero:", bool((features[:, 0] == 0).all()))

# %%
# Reading the features: with ``feature_scale = 10``, ``10 · features[..., blocks["count"]]`` is ``N(s_t, ·)``, the
# visits of each action in the current state, and ``10 · features[..., blocks["value"]]`` is ``V_t(s_t)``.
counts = 10 * features[..., blocks["count"]]
value = 10 * features[..., blocks["value"]].squeeze(-1)
advantage = 10 * features[..., blocks["advantage"]]
print("advantages are ≤ 0 and the best action has 0:", bool((advantage <= 1e-5).all()),
      bool((advantage.amax(-1).abs() < 1e-5).all()))
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(counts[0].sum(-1), label="row 0")
axes[0].plot(counts.sum(-1).mean(0), label="mean over rows")
axes[0].set(xlabel="step t", ylabel="Σ_a N(s_t, a)", title="visits of the current state")
axes[0].legend()
axes[1].plot(value[0], label="row 0")
axes[1].plot(value.mean(0), label="mean over rows")
axes[1].set(xlabel="step t", ylabel="V_t(s_t)", title="estimated value of the current state")
axes[1].legend()
fig.tight_layout()

# %%
# How good are the estimates? The estimator solves the *estimated* model with 10 sweeps of value iteration from
# zero; doing the same on the *true* model (from :meth:`~rl3_torchrl.envs.MetaTaskEnv.task_mdp`) gives the target
# ``Q*``. As transitions accumulate, ``Q_t(s_t, ·)`` approaches ``Q*(s_t, ·)`` and its greedy action agrees more
# often with the true one. This is the information RL³ hands to the Transformer for free.
tasks = env.base_env.task_mdp()
P, R = tasks["transition"], tasks["reward"]  # [B, S, A, S], [B, S, A]
q_true = torch.zeros_like(R)
for _ in range(10):
    q_true = R + 0.95 * torch.einsum("bsan,bn->bsa", P, q_true.amax(-1))
states = rollout["state"]  # [B, H]
target = q_true.gather(1, states[..., None, None].expand(B, H, 1, R.shape[-1]).reshape(B, H, -1)).view(B, H, -1)
estimate = rollout["q_values"]
error = (estimate - target).abs().mean(-1)
agree = (estimate.argmax(-1) == target.argmax(-1)).float()
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(error.mean(0))
axes[0].set(xlabel="step t", ylabel="mean |Q_t − Q*|", title="error of the online Q estimate")
window = 20
smooth = torch.nn.functional.avg_pool1d(agree.mean(0)[None], window, stride=1)[0]
axes[1].plot(range(window - 1, H), smooth)
axes[1].axhline(1 / R.shape[-1], color="grey", linestyle=":", label="chance")
axes[1].set(xlabel="step t", ylabel="P(argmax agrees)", title="greedy action of Q_t vs Q*", ylim=(0, 1))
axes[1].legend()
fig.tight_layout()

# %%
# The model lives in the transform (module buffers, one row per env), not in the TensorDict, and only a reset of
# the meta-episode clears it. Inner-episode restarts (every 10 steps here) keep it.
q_transform = env.transform[1]
print(type(q_transform.model).__name__, "rows:", q_transform.model.rows,
      "sweeps at the last step:", q_transform.sweeps[:8].tolist())

# %%
# Your own environment
# --------------------
#
# The transforms only need a discrete action spec and a discrete ``"state"`` (a ``Categorical`` observation spec
# gives the number of states). Here is a 6-state chain written from scratch: action 1 moves right, action 0 moves
# left; with probability 0.1 the move goes the other way. Staying at the left end pays 0.05, reaching the right end
# pays 1. The meta-episode ends after ``horizon`` steps, and each reset draws which end is the rewarding one, so the
# agent has to find out.
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class ChainEnv(EnvBase):
    """A batch of noisy chains whose rewarding end is drawn at every reset."""

    def __init__(self, num_envs=1, n=6, horizon=60, seed=0):
        super().__init__(batch_size=torch.Size([num_envs]))
        self.n, self.horizon = n, horizon
        self.observation_spec = Composite(
            state=Categorical(n, shape=(num_envs,)),
            observation=Unbounded(shape=(num_envs, n)),
            shape=(num_envs,),
        )
        self.action_spec = Categorical(2, shape=(num_envs,))
        self.reward_spec = Unbounded(shape=(num_envs, 1))
        self.state = torch.zeros(num_envs, dtype=torch.long)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.flipped = torch.zeros(num_envs, dtype=torch.bool)
        self.set_seed(seed)

    def _set_seed(self, seed):
        self.rng = torch.Generator().manual_seed(seed)

    def _observation(self, done):
        return TensorDict(
            state=self.state.clone(),
            observation=torch.nn.functional.one_hot(self.state, self.n).float(),
            done=done, terminated=done.clone(),
            batch_size=self.batch_size,
        )

    def _reset(self, tensordict, **kwargs):
        reset = torch.ones(self.batch_size, dtype=torch.bool)
        if tensordict is not None and "_reset" in tensordict.keys():
            reset = tensordict["_reset"].view(self.batch_size)
        draw = torch.rand(self.batch_size, generator=self.rng) < 0.5
        self.flipped = torch.where(reset, draw, self.flipped)
        self.state = torch.where(reset, self.n // 2, self.state)
        self.t = torch.where(reset, 0, self.t)
        return self._observation(torch.zeros(*self.batch_size, 1, dtype=torch.bool))

    def _step(self, tensordict):
        direction = tensordict["action"] * 2 - 1
        slip = torch.rand(self.batch_size, generator=self.rng) < 0.1
        direction = torch.where(slip, -direction, direction)
        self.state = (self.state + direction).clamp(0, self.n - 1)
        end = torch.where(self.flipped, 0, self.n - 1)
        other = torch.where(self.flipped, self.n - 1, 0)
        reward = (self.state == end).float() + 0.05 * (self.state == other).float()
        self.t = self.t + 1
        out = self._observation((self.t >= self.horizon).unsqueeze(-1))
        out["reward"] = reward.unsqueeze(-1)
        return out


chain = TransformedEnv(
    ChainEnv(num_envs=32, seed=0),
    Compose(MetaRLInputs(), OnlineQEstimator(gamma=0.9, max_sweeps=30, write_q_values=True), InitTracker()),
)
chain_rollout = chain.rollout(60)
print(chain_rollout["next", "q_features"].shape)

# %%
# ``ChainEnv`` writes neither ``reached_state`` nor ``inner_terminated``: the estimator then reads the next state
# from ``("next", "state")`` and treats no state as terminal. Its estimate of ``Q(s, right) − Q(s, left)`` in the
# current state points towards the rewarding end once that end has been found, in each row independently:
q = chain_rollout["next", "q_values"]
preference = q[..., 1] - q[..., 0]  # > 0: go right
flipped = chain.base_env.flipped
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(preference[~flipped].mean(0), label="reward on the right")
ax.plot(preference[flipped].mean(0), label="reward on the left")
ax.axhline(0, color="grey", linewidth=0.8)
ax.set(xlabel="step t", ylabel="Q_t(s, right) − Q_t(s, left)", title="ChainEnv: online estimate, random actions")
ax.legend()
fig.tight_layout()

# %%
# Gridworlds and the coarse abstraction
# -------------------------------------
#
# On gridworlds the estimator uses the ``"sparse"`` backup: states get model ids in order of discovery and each
# ``(s, a)`` keeps a few successor slots, so value iteration costs in proportion to what was observed. The
# ``"gridworld"`` preset is the paper's (``α = 0.01``, warm-started value iteration until ``max |ΔQ| < 0.1``);
# ``"gridworld_coarse"`` runs the model on groups of at most 2 neighbouring cells, which roughly halves the number
# of model states (the paper reports ≈10% less return for half the compute).
from rl3_torchrl.envs import GridworldEnv, plot_grid

G, GH = 4, 250
results = {}
for preset in ("gridworld", "gridworld_coarse"):
    q_estimator = OnlineQEstimator.from_preset(preset, write_q_values=True)
    grid_env = TransformedEnv(GridworldEnv.from_preset("11x11", num_envs=G, horizon=GH, split="test", seed=3),
                              q_estimator)
    torch.manual_seed(1)  # the same random actions for both presets: the same walks on the same grids
    grid_rollout = grid_env.rollout(GH)
    model = q_estimator.model  # the per-row count model (a SparseCountModel here)
    results[preset] = dict(env=grid_env, rollout=grid_rollout, model=model)
    print(f"{preset:17s} model states after {GH} steps: {model.n_known.tolist()}")


# %%
# The value the estimator assigns to every cell the walk has acted in, at the end of the meta-episode, with and
# without the abstraction (the same walk: the same grid and the same actions). Cells next to the goal are valued
# high once the walk has stumbled on it, and cells next to dangers low once it has met them. The
# walk is drawn on top; a straight jump back to ``S`` is the restart after a goal or a danger.
def value_map(model, row, n_cells):
    """V(s) = max_a Q(s, a) of every cell the row has acted in (NaN elsewhere), from the model's public methods."""
    values = torch.full((n_cells,), float("nan"))
    for cell in range(n_cells):
        states = torch.full((model.rows,), cell)
        if model.state_counts(states)[row].sum() > 0:
            values[cell] = model.state_values(states)[row].max()
    return values


fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
for ax, (preset, result) in zip(axes, results.items()):
    base = result["env"].base_env
    v = value_map(result["model"], 0, base.n_states)
    plot_grid(base.tiles()[0], values=v, trajectory=result["rollout"]["state"][0], ax=ax,
              title=f"{preset}: V at t = {GH}")
fig.tight_layout()

# %%
# The features are what a policy reads: for the current cell, the value, the advantages of the 5 moves and the
# visit counts. Plotted along the first row's walk:
grid_features = results["gridworld"]["rollout"]["next", "q_features"][0]
grid_blocks = q_feature_slices(5)
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(10 * grid_features[:, grid_blocks["value"]], label="V_t(s_t)")
ax.plot(10 * grid_features[:, grid_blocks["count"]].sum(-1), label="Σ_a N(s_t, a)")
ax.set(xlabel="step t", title="gridworld, row 0: Q features along a random walk")
ax.legend()
fig.tight_layout()
