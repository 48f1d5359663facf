"""make_actor_critic against the key contract, and one end-to-end PPO loop with a stock Collector."""
import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import Categorical, Composite, LazyTensorStorage, ReplayBuffer, Unbounded
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import EnvBase, InitTracker, TransformedEnv
from torchrl.envs.utils import ExplorationType, check_env_specs, set_exploration_type
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from rl3_torchrl.modules import RL2_INPUT_KEYS, RL3_INPUT_KEYS, MetaTransformerModule, make_actor_critic

S, A = 4, 3
TINY = dict(hidden_sizes=(16,), d_model=8, num_heads=2, ffn_dim=16)


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


def make_env(num_envs=4, horizon=6):
    return TransformedEnv(ToyMetaEnv(num_envs, horizon), InitTracker())


def test_toy_env_specs():
    check_env_specs(make_env())


@pytest.mark.parametrize("algo, keys", [("rl2", RL2_INPUT_KEYS), ("rl3", RL3_INPUT_KEYS)])
@pytest.mark.parametrize("share_body", [False, True])
def test_shapes_and_input_sizes(algo, keys, share_body):
    env = make_env()
    actor, critic = make_actor_critic(env, algo, share_body=share_body, **TINY)
    expected = {"rl2": A + 1 + 1 + 1 + 1 + S, "rl3": A + 1 + 1 + 1 + 1 + S + 2 * A + 1}[algo]
    backbones = [m.backbone for m in (*actor.modules(), *critic.modules()) if isinstance(m, MetaTransformerModule)]
    assert {b.in_features for b in backbones} == {expected}
    assert {b.max_len for b in backbones} == {env.horizon + 1}
    assert (actor.module[0] is critic) == share_body
    td = env.reset()
    with set_exploration_type(ExplorationType.RANDOM):
        td = critic(actor(td))
    assert td["logits"].shape == (4, A)
    assert env.action_spec.is_in(td["action"]) and td["action"].dtype == torch.long
    assert td["action_log_prob"].shape == (4,)
    assert td["state_value"].shape == (4, 1)
    rollout = env.rollout(env.horizon, actor, break_when_any_done=False)
    assert rollout.shape == (4, env.horizon)
    with set_recurrent_mode(True):
        assert critic(rollout.clone())["state_value"].shape == (4, env.horizon, 1)


def test_errors_name_the_problem():
    env = make_env()
    with pytest.raises(ValueError, match=r"algo='ppo'.*\['rl2', 'rl3'\]"):
        make_actor_critic(env, "ppo")
    rl2_only = TransformedEnv(ToyMetaEnv(), InitTracker())
    rl2_only.set_spec_lock_(False)
    del rl2_only.base_env.observation_spec["q_features"]
    with pytest.raises(ValueError, match=r"'q_features'.*available keys: \[.*'observation'"):
        make_actor_critic(rl2_only, "rl3")
    make_actor_critic(rl2_only, "rl2", **TINY)
    with pytest.raises(ValueError, match="'is_init'.*InitTracker"):
        make_actor_critic(ToyMetaEnv(), "rl2")
    no_horizon = ToyMetaEnv()
    del no_horizon.horizon
    with pytest.raises(ValueError, match="max_len"):
        make_actor_critic(TransformedEnv(no_horizon, InitTracker()), "rl2")
    assert make_actor_critic(env, "rl2", max_len=50, **TINY)[1].backbone.max_len == 50


@pytest.mark.parametrize("share_body", [False, True])
def test_ppo_with_stock_collector(share_body):
    torch.manual_seed(0)
    b, h = 4, 6
    env = make_env(b, h)
    actor, critic = make_actor_critic(env, "rl3", share_body=share_body, **TINY)
    collector = Collector(env, actor, frames_per_batch=b * h, total_frames=3 * b * h, reset_at_each_iter=True,
                          auto_register_policy_transforms=False)
    gae = GAE(gamma=0.99, lmbda=0.3, value_network=critic, shifted=True)  # one causal pass per meta-episode
    loss_fn = ClipPPOLoss(actor, critic, entropy_coeff=0.01)
    params = list(loss_fn.parameters())
    optim = torch.optim.Adam(params, lr=1e-3)
    rb = ReplayBuffer(storage=LazyTensorStorage(b), sampler=SamplerWithoutReplacement(), batch_size=2)
    for data in collector:
        assert data.shape == (b, h) and data["is_init"][:, 0].all() and not data["is_init"][:, 1:].any()
        assert data["next", "done"][:, -1].all()
        # the log-probs collected on the step path equal the window path's
        with torch.no_grad(), set_recurrent_mode(True):
            replay = actor.get_dist(data.clone()).log_prob(data["action"])
        torch.testing.assert_close(replay, data["action_log_prob"], atol=1e-5, rtol=1e-5)
        gae(data)
        rb.extend(data)
        grads = [torch.zeros_like(p) for p in params]
        for minibatch in rb:
            out = loss_fn(minibatch)
            total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
            assert torch.isfinite(total)
            total.backward()
            for g, p in zip(grads, params):
                g += p.grad.abs()
            optim.step()
            optim.zero_grad()
        assert all(g.sum() > 0 for g in grads)
        collector.update_policy_weights_()
    collector.shutdown()


def test_stored_bytes_per_frame_do_not_depend_on_horizon():
    def bytes_per_frame(h):
        env = make_env(4, h)
        actor, critic = make_actor_critic(env, "rl3", **TINY)
        collector = Collector(env, actor, frames_per_batch=4 * h, total_frames=4 * h, reset_at_each_iter=True,
                              auto_register_policy_transforms=False)
        data = next(iter(collector))
        collector.shutdown()
        leaves = data.values(include_nested=True, leaves_only=True)
        return sum(x.numel() * x.element_size() for x in leaves) / data.numel()

    assert bytes_per_frame(4) == bytes_per_frame(32)


def test_with_project_env_and_transforms_when_available():
    envs = pytest.importorskip("rl3_torchrl.envs")
    transforms = pytest.importorskip("rl3_torchrl.transforms")
    if not all(hasattr(transforms, n) for n in ("MetaRLInputs", "OnlineQEstimator")):
        pytest.skip("rl3_torchrl.transforms lacks MetaRLInputs/OnlineQEstimator")
    from torchrl.envs import Compose

    base = envs.RandomMDPEnv(num_envs=3, horizon=5)
    env = TransformedEnv(base, Compose(transforms.MetaRLInputs(), transforms.OnlineQEstimator(), InitTracker()))
    for algo in ("rl2", "rl3"):
        actor, critic = make_actor_critic(env, algo, **TINY)
        rollout = env.rollout(5, actor, break_when_any_done=False)
        with set_recurrent_mode(True):
            assert critic(rollout)["state_value"].shape == (3, 5, 1)
