"""What several test files share: tiny configurations, a mock meta-RL env and the recipe loader.

``conftest.py`` puts this folder on ``sys.path`` (pytest runs with ``--import-mode=importlib``), so a test file
writes ``from _shared import ...``.
"""
import importlib.util
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, OneHot, Unbounded
from torchrl.envs import EnvBase

from rl3_torchrl.envs import RandomMDPEnv

#: The smallest Transformer sizes (overrides of the training configuration).
TINY_MODEL = ["model.hidden_sizes=[8]", "model.d_model=8", "model.num_heads=2", "model.num_layers=1",
              "model.ffn_dim=8"]
#: A run of a few seconds: H = 6, two envs, one meta-episode per minibatch, no progress bar.
TINY_RUN = [*TINY_MODEL, "horizon=6", "num_envs=2", "ppo.epochs=2", "ppo.minibatch_episodes=1", "progress=false"]
#: The keyword arguments of make_actor_critic for a tiny actor-critic.
TINY_MODULE = dict(hidden_sizes=(16,), d_model=8, num_heads=2, ffn_dim=16)
RECIPES = Path(__file__).parents[1] / "recipes"


def load_recipe(name: str):
    """The module of ``recipes/<name>.py`` (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S, A = 4, 3


class ToyMetaEnv(EnvBase):
    """Batch-locked env emitting the meta-RL key contract with random values; done at t = horizon."""

    def __init__(self, num_envs=4, horizon=6, seed=0):
        super().__init__(batch_size=torch.Size([num_envs]))
        self.horizon = horizon
        b = self.batch_size
        leaves = {"observation": S, "meta_step": 1, "episode_step": 1, "prev_action": A, "prev_reward": 1,
                  "first_step": 1, "q_features": 2 * A + 1}
        self.observation_spec = Composite(
            {k: Unbounded((*b, n)) for k, n in leaves.items()}, state=Categorical(S, shape=b), shape=b
        )
        self.action_spec = Categorical(A, shape=b)
        self.reward_spec = Unbounded((*b, 1))
        self.t = torch.zeros(b, dtype=torch.long)
        self.rng = torch.Generator().manual_seed(seed)

    def _set_seed(self, seed):
        self.rng = torch.Generator().manual_seed(seed)

    def _observe(self, action=None):
        b = self.batch_size
        state = torch.randint(S, b, generator=self.rng)
        prev = torch.zeros(*b, A) if action is None else torch.nn.functional.one_hot(action, A).float()
        t = self.t.unsqueeze(-1).float()
        return TensorDict(
            observation=torch.nn.functional.one_hot(state, S).float(), state=state, meta_step=t / self.horizon,
            episode_step=(t % 3) / 3, prev_action=prev, prev_reward=torch.randn(*b, 1, generator=self.rng),
            first_step=(t == 0).float(), q_features=torch.randn(*b, 2 * A + 1, generator=self.rng),
            done=(self.t >= self.horizon).unsqueeze(-1), batch_size=b,
        )

    def _reset(self, tensordict):
        reset = None if tensordict is None else tensordict.get("_reset", None)
        self.t = torch.where(reset.view(-1), 0, self.t) if reset is not None else torch.zeros_like(self.t)
        return self._observe()

    def _step(self, tensordict):
        self.t = self.t + 1
        out = self._observe(tensordict["action"])
        return out.set("reward", torch.randn(*self.batch_size, 1, generator=self.rng))


class OneHotMDP(RandomMDPEnv):
    """The random MDP with one-hot actions."""

    def _make_specs(self):
        super()._make_specs()
        self.action_spec = OneHot(self.n_actions, shape=(*self.batch_size, self.n_actions), dtype=torch.long)

    def _step(self, tensordict):
        return super()._step(tensordict.clone(False).set("action", tensordict["action"].argmax(-1)))
