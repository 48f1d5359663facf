"""DecoupledClipPPOLoss against the decoupled objective written out by hand, and its reduction to ClipPPOLoss."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss

from _shared import TINY_RUN
from rl3_torchrl.objectives import PROXIMAL_LOG_PROB_KEY, DecoupledClipPPOLoss
from rl3_torchrl.training import Trainer, load_config

TINY = [*TINY_RUN, "eval.every=0", "logger.backend=''"]


def linear_actor_critic(seed: int, n_actions: int = 3, n_obs: int = 4):
    torch.manual_seed(seed)
    net = torch.nn.Linear(n_obs, n_actions)
    actor = ProbabilisticActor(TensorDictModule(net, ["obs"], ["logits"]), in_keys=["logits"],
                               distribution_class=torch.distributions.Categorical, return_log_prob=True)  # fmt: skip
    return actor, ValueOperator(torch.nn.Linear(n_obs, 1), in_keys=["obs"]), net


def random_batch(n: int = 64, n_actions: int = 3, n_obs: int = 4) -> TensorDict:
    return TensorDict(obs=torch.randn(n, n_obs), action=torch.randint(n_actions, (n,)), advantage=torch.randn(n, 1),
                      value_target=torch.randn(n, 1), batch_size=[n])  # fmt: skip


def log_prob(net: torch.nn.Module, data: TensorDict) -> torch.Tensor:
    return net(data["obs"]).log_softmax(-1).gather(-1, data["action"][:, None]).squeeze(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_loss_is_the_decoupled_objective_written_out(seed):
    """Behaviour, proximal and current weights all differ (an async batch, some minibatches into the update)."""
    eps = 0.2
    actor, critic, net = linear_actor_critic(seed)
    loss = DecoupledClipPPOLoss(actor, critic, clip_epsilon=eps, normalize_advantage=False, entropy_coeff=0.0)
    data = random_batch()
    behaviour_net = copy.deepcopy(net)
    with torch.no_grad():
        for p in behaviour_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        data["action_log_prob"] = log_prob(behaviour_net, data)
    loss.write_proximal_log_prob(data)
    with torch.no_grad():
        proximal = log_prob(net, data)
        for p in net.parameters():  # the weights move after the proximal log-probs were written
            p.add_(0.2 * torch.randn_like(p))
    torch.testing.assert_close(data[PROXIMAL_LOG_PROB_KEY], proximal)

    out = loss(data)
    current = log_prob(net, data)
    ratio, weight, advantage = (current - proximal).exp(), (proximal - data["action_log_prob"]).exp(), data["advantage"]
    clipped = ratio.clamp(1 - eps, 1 + eps)
    expected = -(weight * torch.minimum(ratio * advantage.squeeze(-1), clipped * advantage.squeeze(-1))).mean()
    torch.testing.assert_close(out["loss_objective"], expected)
    torch.testing.assert_close(out["kl_approx"], (weight * (proximal - current)).mean())
    # the gradient of the hand-written objective is the loss's
    grads = torch.autograd.grad(out["loss_objective"], list(net.parameters()))
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    stock = ClipPPOLoss(actor, critic, clip_epsilon=eps, normalize_advantage=False, entropy_coeff=0.0)
    assert not bool(torch.isclose(out["loss_objective"], stock(data)["loss_objective"]))  # the weights matter here


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_approx_estimates_the_proximal_kl_from_behaviour_samples(seed):
    """Against the exact KL(π_prox ‖ π_θ) of two categoricals: one observation, many actions sampled from a third,
    behaviour policy. The weighted estimate is within 4 standard errors of it; the unweighted mean (what
    ClipPPOLoss(delay_actor=True) reports) is within 4 of its own limit, KL(π_behav ‖ π_θ) − KL(π_behav ‖ π_prox)."""
    n_actions, n = 4, 200_000
    actor, critic, net = linear_actor_critic(seed, n_actions=n_actions)
    loss = DecoupledClipPPOLoss(actor, critic, normalize_advantage=False)
    obs = torch.randn(1, 4)
    behaviour_logits = net(obs).detach() + torch.randn(1, n_actions)
    data = TensorDict(obs=obs.expand(n, 4), advantage=torch.zeros(n, 1), value_target=torch.zeros(n, 1),
                      action=torch.distributions.Categorical(logits=behaviour_logits).sample((n,)).squeeze(-1),
                      batch_size=[n])  # fmt: skip
    data["action_log_prob"] = behaviour_logits.log_softmax(-1)[0, data["action"]]
    loss.write_proximal_log_prob(data)
    proximal_logits = net(obs).detach()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    current_logits = net(obs).detach()
    kl = torch.distributions.kl_divergence
    b, pr, cu = (torch.distributions.Categorical(logits=logits)
                 for logits in (behaviour_logits, proximal_logits, current_logits))  # fmt: skip
    exact = kl(pr, cu).squeeze()
    behaviour, proximal, current = (lg.log_softmax(-1)[0, data["action"]]
                                    for lg in (behaviour_logits, proximal_logits, current_logits))  # fmt: skip
    per_sample = (proximal - behaviour).exp() * (proximal - current)
    estimate = loss(data)["kl_approx"]
    assert abs(float(estimate) - float(exact)) < 4 * float(per_sample.std()) / n**0.5
    unweighted_limit = (kl(b, cu) - kl(b, pr)).squeeze()
    unweighted = proximal - current
    assert abs(float(unweighted.mean()) - float(unweighted_limit)) < 4 * float(unweighted.std()) / n**0.5


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.05, 0.5), normalize=st.booleans())
def test_with_the_behaviour_policy_as_proximal_it_is_clip_ppo_loss(seed, eps, normalize):
    """A synchronous batch: proximal = behaviour, so every output and gradient is ClipPPOLoss's."""
    actor, critic, net = linear_actor_critic(seed % 1000)
    kwargs = dict(clip_epsilon=eps, normalize_advantage=normalize, entropy_coeff=0.01)
    decoupled, stock = DecoupledClipPPOLoss(actor, critic, **kwargs), ClipPPOLoss(actor, critic, **kwargs)
    data = random_batch()
    decoupled.write_proximal_log_prob(data)
    data["action_log_prob"] = data[PROXIMAL_LOG_PROB_KEY].clone()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    got, want = decoupled(data), stock(data)
    for key in ("loss_objective", "loss_critic", "loss_entropy", "kl_approx", "clip_fraction", "entropy"):
        torch.testing.assert_close(got[key], want[key], msg=key)
    got_grads = torch.autograd.grad(got["loss_objective"], list(net.parameters()))
    want_grads = torch.autograd.grad(want["loss_objective"], list(net.parameters()))
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


def test_bad_use_is_refused_with_what_to_do():
    actor, critic, _ = linear_actor_critic(0)
    with pytest.raises(ValueError, match="delay_actor=True"):
        DecoupledClipPPOLoss(actor, critic, delay_actor=True)
    with pytest.raises(ValueError, match="max_importance_ratio=2.0"):
        DecoupledClipPPOLoss(actor, critic, max_importance_ratio=2.0)
    data = random_batch()
    data["action_log_prob"] = torch.zeros(64)
    with pytest.raises(KeyError, match="write_proximal_log_prob"):
        DecoupledClipPPOLoss(actor, critic)(data)


def test_the_trainer_writes_the_window_paths_log_probs_of_a_synchronous_batch(tmp_path):
    """ppo.decoupled: the proximal log-probs of a batch collected by the current weights are the behaviour's (the
    actor's window path against its step path), and a whole iteration runs with the decoupled loss."""
    cfg = load_config([*TINY, "iterations=2", "ppo.decoupled=true", f"output_dir={tmp_path}"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.loss, DecoupledClipPPOLoss)
    with trainer.run() as batches:
        data = next(iter(batches))
        trainer.advantages(data)
        torch.testing.assert_close(data[PROXIMAL_LOG_PROB_KEY], data["action_log_prob"], atol=1e-5, rtol=0)
        stats = trainer.update(data)
    assert stats["actor_updates"] > 0 and abs(stats["kl_approx"]) < 0.1  # the minibatches carried the proximal key
    assert not isinstance(Trainer(load_config([*TINY, f"output_dir={tmp_path / 'b'}"])).loss, DecoupledClipPPOLoss)
