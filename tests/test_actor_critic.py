"""make_actor_critic against the key contract, CategoricalActor against ProbabilisticActor, and one end-to-end PPO
loop with a stock Collector."""
import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, set_skip_existing
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import InitTracker, TransformedEnv
from torchrl.envs.utils import ExplorationType, check_env_specs, set_exploration_type
from torchrl.modules import OneHotCategorical, ProbabilisticActor, set_recurrent_mode
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from rl3_torchrl.modules import (
    RL2_INPUT_KEYS,
    RL3_INPUT_KEYS,
    CategoricalActor,
    MetaTransformerModule,
    make_actor_critic,
)

from _shared import TINY_MODULE, A, S, ToyMetaEnv

TINY = TINY_MODULE


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
    with pytest.raises(ValueError, match=r"inputs='ppo' is not allowed; choose one of \['rl2', 'rl3'\]"):
        make_actor_critic(env, "ppo")
    with pytest.raises(ValueError, match=r"inputs=\(\) names no key"):
        make_actor_critic(env, ())
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


@pytest.mark.parametrize("algo, share_body", [("rl2", False), ("rl3", False), ("rl3", True)])
def test_categorical_actor_samples_what_probabilistic_actor_samples(algo, share_body):
    """Step by step through meta-episodes, and on the collected window: the same seed gives bit-identical outputs
    (action, log-prob, logits, the shared critic's value) from the direct path and from ProbabilisticActor.forward."""
    env = make_env(num_envs=3, horizon=5)
    actor, _ = make_actor_critic(env, algo, share_body=share_body, **TINY)
    assert isinstance(actor, CategoricalActor)
    fast, stock = copy.deepcopy(actor), copy.deepcopy(actor)  # one KV cache each
    steps, td = [], env.reset()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for t in range(2 * env.horizon):  # two meta-episodes: the caches restart on is_init
            torch.manual_seed(t)
            out = fast(td.clone())
            torch.manual_seed(t)
            expected = ProbabilisticActor.forward(stock, td.clone())
            assert set(out.keys(True)) == set(expected.keys(True))
            assert (out == expected).all(), f"step {t}"
            steps.append(out)
            _, td = env.step_and_maybe_reset(out)
        window = torch.stack(steps[: env.horizon], 1)
        window.names = [None, "time"]
        torch.manual_seed(0)
        out = fast(window.clone())
        torch.manual_seed(0)
        assert (out == ProbabilisticActor.forward(stock, window.clone())).all()


def test_categorical_actor_defers_all_but_sampling_calls(monkeypatch):
    """Only a sampling call on a TensorDict takes the direct path; the others, and get_dist, are the stock ones."""
    actor = CategoricalActor(TensorDictModule(torch.nn.Linear(3, 4), ["obs"], ["logits"]), in_keys=["logits"],
                             distribution_class=torch.distributions.Categorical, return_log_prob=True)  # fmt: skip
    td = TensorDict(obs=torch.randn(6, 3), batch_size=[6])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        mode = actor(td.clone())
    assert torch.equal(mode["action"], mode["logits"].argmax(-1))
    with set_exploration_type(ExplorationType.RANDOM):
        direct = actor(td.clone())
        by_keyword = actor(obs=td["obs"])  # keyword inputs: ProbabilisticActor's dispatch
    assert dict(zip(actor.out_keys, by_keyword))["action"].shape == direct["action"].shape
    assert torch.allclose(direct["action_log_prob"], actor.get_dist(direct).log_prob(direct["action"]))

    def stock_forward(*args, **kwargs):
        raise AssertionError("deferred to ProbabilisticActor.forward")

    monkeypatch.setattr(ProbabilisticActor, "forward", stock_forward)
    with set_exploration_type(ExplorationType.RANDOM):
        actor(td.clone())  # the direct path
        with set_skip_existing(True), pytest.raises(AssertionError, match="deferred"):
            actor(td.clone())
    for exploration in (ExplorationType.DETERMINISTIC, ExplorationType.MEAN):
        with set_exploration_type(exploration), pytest.raises(AssertionError, match="deferred"):
            actor(td.clone())


def test_categorical_actor_refuses_what_it_cannot_sample():
    logits = TensorDictModule(torch.nn.Linear(3, 4), ["obs"], ["logits"])
    with pytest.raises(ValueError, match="distribution_class=OneHotCategorical.*ProbabilisticActor"):
        CategoricalActor(logits, in_keys=["logits"], distribution_class=OneHotCategorical, return_log_prob=True)
    with pytest.raises(ValueError, match="return_log_prob=False"):
        CategoricalActor(logits, in_keys=["logits"], distribution_class=torch.distributions.Categorical)
    one_hot_env = make_env()
    one_hot_env.set_spec_lock_(False)
    one_hot_env.base_env.action_spec = one_hot_env.base_env.action_spec.to_one_hot_spec()
    actor, _ = make_actor_critic(one_hot_env, "rl2", **TINY)
    assert type(actor) is ProbabilisticActor and actor._last_module.distribution_class is OneHotCategorical


def test_inputs_may_be_any_observation_keys():
    """A sequence of keys builds the same network as the layout of the same keys, reading exactly those keys."""
    from rl3_torchrl.modules import RL2_INPUT_KEYS

    env = make_env()
    torch.manual_seed(0)
    by_name, _ = make_actor_critic(env, "rl2", **TINY)
    torch.manual_seed(0)
    by_keys, _ = make_actor_critic(env, list(RL2_INPUT_KEYS), **TINY)
    assert by_keys.in_keys == by_name.in_keys
    td = env.reset()
    torch.testing.assert_close(by_keys(td.clone())["logits"], by_name(td.clone())["logits"])
    only_obs, _ = make_actor_critic(env, ["observation"], **TINY)
    assert set(only_obs.in_keys) == {"observation", "is_init", "first_step"}


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


def test_with_project_env_and_transforms():
    from rl3_torchrl import envs, transforms

    from torchrl.envs import Compose

    base = envs.RandomMDPEnv(num_envs=3, horizon=5)
    env = TransformedEnv(base, Compose(transforms.MetaRLInputs(), transforms.OnlineQEstimator(), InitTracker()))
    for algo in ("rl2", "rl3"):
        actor, critic = make_actor_critic(env, algo, **TINY)
        rollout = env.rollout(5, actor, break_when_any_done=False)
        with set_recurrent_mode(True):
            assert critic(rollout)["state_value"].shape == (3, 5, 1)
