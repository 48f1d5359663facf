"""Stock TorchRL calls on the RL³ actor-critic: each gives GAE's numbers or raises an error that says what to do.

One test per row of issue #15's table. References are independent of the window path: values from the critic's step
path (one token at a time against its KV cache) and a brute-force GAE loop.
"""
import copy

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs import Compose, InitTracker, TransformedEnv
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import ClipPPOLoss, ValueEstimators
from torchrl.objectives.value import GAE

from rl3_torchrl.envs import RandomMDPEnv
from rl3_torchrl.modules import make_actor_critic
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator

from _shared import TINY_MODULE

B, H = 4, 6
GAMMA, LMBDA = 0.99, 0.95
TINY = TINY_MODULE


def make_env():
    return TransformedEnv(RandomMDPEnv(num_envs=B, horizon=H), Compose(MetaRLInputs(), OnlineQEstimator(), InitTracker()))


def collect(frames_per_batch=B * H, batches=1, share_body=False, **kwargs):
    torch.manual_seed(0)
    env = make_env()
    actor, critic = make_actor_critic(env, "rl3", share_body=share_body, **TINY)
    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=batches * frames_per_batch,
                          auto_register_policy_transforms=False, **kwargs)
    data = list(collector)
    collector.shutdown()
    return actor, critic, data


def step_values(critic, data):
    """V of every root step and of the last next step, by the step path: ``[B, T + 1]``."""
    critic = copy.deepcopy(critic)  # a fresh KV cache
    steps = [data[:, t].clone() for t in range(data.shape[1])] + [data["next"][:, -1].clone()]
    with torch.no_grad():
        return torch.stack([critic(step)["state_value"].squeeze(-1) for step in steps], 1)


def brute_force_gae(values, data):
    reward, done = data["next", "reward"].squeeze(-1), data["next", "done"].squeeze(-1)
    advantage = torch.zeros_like(reward)
    for b in range(reward.shape[0]):
        running = 0.0
        for t in reversed(range(reward.shape[1])):
            following = 0.0 if bool(done[b, t]) else float(values[b, t + 1])
            delta = float(reward[b, t]) + GAMMA * following - float(values[b, t])
            running = delta + GAMMA * LMBDA * (0.0 if bool(done[b, t]) else running)
            advantage[b, t] = running
    return advantage.unsqueeze(-1)


@pytest.fixture(scope="module")
def batch():
    actor, critic, (data,) = collect(reset_at_each_iter=True)
    assert data.names == [None, "time"] and data["next", "done"][:, -1].all() and data["is_init"][:, 0].all()
    return actor, critic, data, brute_force_gae(step_values(critic, data), data)


def test_row1_tutorial_gae_raises_with_the_fix(batch):
    _, critic, data, _ = batch
    with pytest.raises(ValueError, match=r"cannot run under torch.vmap.*value_network=critic, shifted=True"):
        GAE(gamma=GAMMA, lmbda=LMBDA, value_network=critic)(data.clone())


def test_row2_recurrent_mode_gae_raises_with_the_fix(batch):
    _, critic, data, _ = batch
    with set_recurrent_mode(True), pytest.raises(ValueError, match=r"cannot run under torch.vmap.*shifted=True"):
        GAE(gamma=GAMMA, lmbda=LMBDA, value_network=critic)(data.clone())


def test_row3_deactivate_vmap_raises_instead_of_cutting_the_context(batch):
    _, critic, data, _ = batch
    gae = GAE(gamma=GAMMA, lmbda=LMBDA, value_network=critic, deactivate_vmap=True)
    with set_recurrent_mode(True), pytest.raises(ValueError, match=r"disagrees with 'first_step'.*shifted=True"):
        gae(data.clone())


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("share_body", [False, True])
def test_rows4_5_shifted_gae_equals_brute_force(recurrent, share_body):
    """Row 4 (shifted=True, no recurrent mode: was off by 0.57) and row 5 (with recurrent mode)."""
    _, critic, (data,) = collect(reset_at_each_iter=True, share_body=share_body)
    expected = brute_force_gae(step_values(critic, data), data)
    with set_recurrent_mode(recurrent):
        out = GAE(gamma=GAMMA, lmbda=LMBDA, value_network=critic, shifted=True)(data.clone())
    torch.testing.assert_close(out["advantage"], expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out["value_target"] - out["state_value"], expected, atol=2e-5, rtol=1e-5)


def test_row6_critic_on_a_batch_outside_recurrent_mode(batch):
    _, critic, data, _ = batch
    values = critic(data.clone())["state_value"]  # the "time" dim selects the window path
    torch.testing.assert_close(values.squeeze(-1), step_values(critic, data)[:, :-1], atol=1e-5, rtol=1e-5)
    values.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())  # not just the head
    critic.zero_grad()
    unnamed = data.clone()
    unnamed.names = None
    with pytest.raises(ValueError, match=r"step path got new streams \(batch shape \(4, 6\)\).*names"):
        critic(unnamed)


def test_row7_half_meta_episode_batches_raise():
    actor, critic, (first, second) = collect(frames_per_batch=B * H // 2, batches=2)
    # the first half is a valid window: GAE bootstraps from the value of its last next step
    out = GAE(gamma=GAMMA, lmbda=LMBDA, value_network=critic, shifted=True)(first.clone())
    torch.testing.assert_close(out["advantage"], brute_force_gae(step_values(critic, first), first),
                               atol=2e-5, rtol=1e-5)
    # the second half starts mid-meta-episode: the loss would see a KL of 1.8e-2 before any update; now it raises
    assert not second["is_init"][:, 0].any()
    loss = ClipPPOLoss(actor, critic)
    ready = second.clone().set("advantage", torch.zeros(B, H // 2, 1)).set("value_target", torch.zeros(B, H // 2, 1))
    for call in (lambda: GAE(gamma=GAMMA, lmbda=LMBDA, value_network=critic, shifted=True)(second.clone()),
                 lambda: loss(ready)):
        with pytest.raises(ValueError, match=r"do not all start a meta-episode.*frames_per_batch=num_envs \* H"):
            call()


def test_loss_value_estimator(batch):
    """ClipPPOLoss's own estimator: the default raises with the fix; make_value_estimator(shifted=True) is exact."""
    actor, critic, data, expected = batch
    with pytest.raises(ValueError, match=r"cannot run under torch.vmap.*functional=False.*make_value_estimator"):
        # copies: tensordict's to_module leaves the vmapped parameters in a module when an error escapes
        ClipPPOLoss(copy.deepcopy(actor), copy.deepcopy(critic))(data.clone())
    loss = ClipPPOLoss(actor, critic, functional=False)
    with pytest.raises(ValueError, match=r"cannot run under torch.vmap"):
        loss(data.clone())
    loss.make_value_estimator(ValueEstimators.GAE, gamma=GAMMA, lmbda=LMBDA, shifted=True)
    own = loss(data.clone())
    values = step_values(critic, data)[:, :-1].unsqueeze(-1)
    given = loss(data.clone().set("advantage", expected).set("value_target", expected + values))
    for key in ("loss_objective", "loss_critic", "kl_approx"):
        torch.testing.assert_close(own[key], given[key], atol=1e-5, rtol=1e-5)
    assert float(own["kl_approx"]) < 1e-6  # behaviour and training policy agree before any update
