"""MinibatchBackward on several threads against the sequential backward of the whole PPO loss."""
from __future__ import annotations

import threading
from functools import partial

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss

from _shared import TINY_MODULE, TINY_RUN
from rl3_torchrl.minibatch_backward import MinibatchBackward
from rl3_torchrl.modules import make_actor_critic
from rl3_torchrl.objectives import PROXIMAL_LOG_PROB_KEY
from rl3_torchrl.training import ActorKLStop, Trainer, load_config


def _minibatch(tmp_path, *overrides):
    """A trainer of the tiny config and one minibatch of 4 of its meta-episodes, advantages computed."""
    cfg = load_config([*TINY_RUN, "num_envs=4", "ppo.minibatch_episodes=4", "iterations=1", "eval.every=0",
                       "logger.backend=''", f"output_dir={tmp_path}", *overrides])  # fmt: skip
    trainer = Trainer(cfg)
    with trainer.run() as batches:
        data = next(iter(batches))
        trainer.advantages(data)
        trainer.end_iteration(data, {})
    return trainer, data


def _gradients(backward, batch, active: bool, target_kl=None):
    stop = ActorKLStop(target_kl)
    stop.active = active
    for p in backward.loss_module.parameters():
        p.grad = None
    out, total = backward(batch, stop)
    return out, total, stop, [None if p.grad is None else p.grad.clone() for p in backward.loss_module.parameters()]


def _equal(a, b, exact: bool) -> bool:
    same = torch.equal if exact else (lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-7))
    return all((x is None and y is None) or (x is not None and y is not None and same(x, y)) for x, y in zip(a, b))


@pytest.mark.parametrize("share_body", [False, True])
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_sequential_losses_and_gradients(tmp_path, threads, share_body):
    """While the actor trains: the critic's passes on other threads, the same losses and (separate networks, two
    threads) bit-identical gradients; once it has stopped: the critic's minibatch in shards, equal up to rounding."""
    trainer, data = _minibatch(tmp_path)
    loss, actor = trainer.loss, trainer.actor
    if share_body:
        actor, critic = make_actor_critic(trainer.env, "rl3", share_body=True, **TINY_MODULE)
        loss = ClipPPOLoss(actor, critic, functional=False)
    sequential, threaded = MinibatchBackward(loss), MinibatchBackward(loss, threads=threads)
    for active in (True, False):
        out1, total1, _, grads1 = _gradients(sequential, data, active)
        out2, total2, _, grads2 = _gradients(threaded, data, active)
        exact = active and threads == 2 and not share_body
        assert _equal(grads1, grads2, exact), (active, threads)
        assert sorted(out1.keys()) == sorted(out2.keys())
        for key in out1.keys():
            assert torch.allclose(out1[key], out2[key], rtol=1e-6, atol=1e-7), key
        assert torch.allclose(total1, total2, rtol=1e-6)
        actor_grads = grads2[: len(list(actor.parameters()))]
        assert all(g is None for g in actor_grads) == (not active) or share_body
    threaded.close()


def test_the_critic_runs_on_the_helper_threads_with_their_own_thread_count(tmp_path):
    trainer, data = _minibatch(tmp_path)
    seen = []
    trainer.critic.register_forward_hook(
        lambda *_: seen.append((threading.current_thread().name, torch.get_num_threads()))
    )
    before = torch.get_num_threads()
    backward = MinibatchBackward(trainer.loss, threads=2, intra_op_threads=1)
    for active in (True, False):
        _gradients(backward, data, active)
    assert torch.get_num_threads() == before
    helper = [name for name, _ in seen if name.startswith("minibatch_backward")]
    assert len(helper) == 2 and len(seen) == 3  # active: one pass on the helper; stopped: one shard on each thread
    assert all(count == 1 for _, count in seen)
    backward.close()
    assert backward._pool is None
    _gradients(backward, data, True)  # the helper thread starts again
    backward.close()


def test_the_actor_stopped_by_its_minibatch_gets_no_gradient(tmp_path):
    """ActorKLStop decides from the minibatch's kl_approx, computed on the calling thread: the stopping minibatch's
    actor terms are left out of the gradients and of the total, as with the sequential loop."""
    trainer, data = _minibatch(tmp_path)
    sequential, threaded = MinibatchBackward(trainer.loss), MinibatchBackward(trainer.loss, threads=2)
    out1, total1, stop1, grads1 = _gradients(sequential, data, True, target_kl=1e-12)
    out2, total2, stop2, grads2 = _gradients(threaded, data, True, target_kl=1e-12)
    assert float(out2["kl_approx"]) > 1e-12 and not stop1.active and not stop2.active
    assert _equal(grads1, grads2, exact=True)
    assert all(g is None for g in grads2[: len(list(trainer.actor.parameters()))])
    assert torch.equal(total2, out2["loss_critic"]) and torch.equal(total1, total2)
    threaded.close()


def _linear_loss() -> ClipPPOLoss:
    torch.manual_seed(0)
    actor = ProbabilisticActor(TensorDictModule(torch.nn.Linear(4, 3), ["obs"], ["logits"]), in_keys=["logits"],
                               distribution_class=torch.distributions.Categorical, return_log_prob=True)  # fmt: skip
    critic = ValueOperator(torch.nn.Linear(4, 1), in_keys=["obs"])
    return ClipPPOLoss(actor, critic, functional=False, normalize_advantage=False, loss_critic_type="l2")


def test_shards_weigh_the_critics_loss_by_the_elements_the_masks_keep():
    """The critic's loss is the mean over the valid elements of the whole minibatch (``shifted_valid``), whatever the
    shards: the oracle is the masked mean written out."""
    loss = _linear_loss()
    actor, critic = loss.actor_network, loss.critic_network
    valid = torch.ones(5, 7, 1, dtype=torch.bool)
    valid[0, 3:] = valid[3, 1:] = False  # shards of unequal valid counts
    batch = TensorDict(obs=torch.randn(5, 7, 4), action=torch.randint(3, (5, 7)), advantage=torch.randn(5, 7, 1),
                       value_target=torch.randn(5, 7, 1), action_log_prob=torch.randn(5, 7), shifted_valid=valid,
                       batch_size=[5, 7])  # fmt: skip
    backward = MinibatchBackward(loss, threads=3)
    stop = ActorKLStop(None)
    stop.active = False
    out, total = backward(batch, stop)
    value = critic(batch.clone(False))["state_value"]
    expected = ((value - batch["value_target"]).pow(2) * valid).sum() / valid.sum()
    assert torch.allclose(out["loss_critic"], expected, rtol=1e-6) and torch.equal(total, out["loss_critic"])
    grads = torch.autograd.grad(expected, list(critic.parameters()))
    assert all(torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7) for p, g in zip(critic.parameters(), grads))
    assert all(p.grad is None for p in actor.parameters())
    backward.close()


def test_bad_arguments_are_named():
    actor = ProbabilisticActor(TensorDictModule(torch.nn.Linear(2, 2), ["obs"], ["logits"]), in_keys=["logits"],
                               distribution_class=torch.distributions.Categorical)  # fmt: skip
    loss = ClipPPOLoss(actor, ValueOperator(torch.nn.Linear(2, 1), in_keys=["obs"]), functional=False)
    with pytest.raises(ValueError, match=r"threads=0 is out of range; allowed: \[1, inf\]"):
        MinibatchBackward(loss, threads=0)
    with pytest.raises(TypeError, match="intra_op_threads must be an integer, got 1.5"):
        MinibatchBackward(loss, threads=2, intra_op_threads=1.5)
    with pytest.raises(ValueError, match="no critic term"):
        MinibatchBackward(ClipPPOLoss(actor, None, critic_coeff=None, functional=False), threads=2)
    assert MinibatchBackward(ClipPPOLoss(actor, None, critic_coeff=None, functional=False)).threads == 1


def test_run_runs_the_calls_at_once_in_order_with_the_callers_grad_mode():
    backward = MinibatchBackward(_linear_loss(), threads=2, intra_op_threads=1)
    barrier = threading.Barrier(2, timeout=10)  # broken (an error) unless the first two calls run at the same time

    def call(wait: bool):
        if wait:
            barrier.wait()
        return threading.current_thread().name, torch.is_grad_enabled(), torch.get_num_threads()

    before = torch.get_num_threads()
    with torch.no_grad():
        results = backward.run(partial(call, True), partial(call, True), partial(call, False))
    assert results[0] == (threading.current_thread().name, False, 1)
    assert all(name.startswith("minibatch_backward") and not grad and n == 1 for name, grad, n in results[1:])
    assert torch.get_num_threads() == before
    backward.close()
    sequential = MinibatchBackward(_linear_loss())
    assert sequential.run(partial(call, False), partial(call, False)) == [(threading.current_thread().name, True, before)] * 2


def test_intra_op_sets_the_callers_threads_for_the_block_and_restores_them():
    caller = torch.get_num_threads()
    torch.set_num_threads(3)  # differs from intra_op_threads on any machine
    try:
        backward = MinibatchBackward(_linear_loss(), threads=2, intra_op_threads=1)
        with backward.intra_op():
            assert torch.get_num_threads() == 1
            with backward.intra_op():  # nested, as run() inside the update loop
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError, match="inside"):
            with backward.intra_op():
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 3
        with MinibatchBackward(_linear_loss(), intra_op_threads=1).intra_op():  # threads=1: nothing changes
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(caller)


def test_the_update_steps_and_samples_on_the_update_threads(tmp_path):
    """With ``ppo.update_threads=2``, Trainer.update runs its optimizer steps and minibatch sampling with
    ``intra_op_threads`` torch threads (half the caller's), and gives the caller its own count back after."""
    caller = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        trainer, data = _minibatch(tmp_path, "ppo.update_threads=2", "ppo.epochs=2", "ppo.minibatch_episodes=2")
        assert trainer.minibatch_backward.intra_op_threads == 2
        seen = {"step": [], "sample": []}
        step, sample = trainer.optimizer.step, trainer.buffer.sample
        trainer.optimizer.step = lambda *a, **k: (seen["step"].append(torch.get_num_threads()), step(*a, **k))[1]
        trainer.buffer.sample = lambda *a, **k: (seen["sample"].append(torch.get_num_threads()), sample(*a, **k))[1]
        stats = trainer.update(data)
        assert torch.get_num_threads() == 4
        assert seen["step"] == [2] * 4 and seen["sample"] and set(seen["sample"]) == {2}, seen
        assert stats["actor_updates"] >= 1
        trainer.minibatch_backward.close()
    finally:
        torch.set_num_threads(caller)


@pytest.mark.parametrize("decoupled", [False, True])
def test_the_advantages_run_on_the_update_threads(tmp_path, decoupled):
    """GAE's critic pass (and the proximal actor pass) of Trainer.advantages run with ``intra_op_threads`` torch
    threads when ``ppo.update_threads=2``, on the calling thread too."""
    caller = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        trainer, data = _minibatch(tmp_path, "ppo.update_threads=2", f"ppo.decoupled={str(decoupled).lower()}")
        seen = []
        trainer.critic.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
        trainer.advantages(data)
        assert seen == [2] and torch.get_num_threads() == 4
        trainer.minibatch_backward.close()
    finally:
        torch.set_num_threads(caller)


def test_decoupled_advantages_run_gae_beside_the_proximal_pass(tmp_path):
    """ppo.decoupled with ppo.update_threads=2: GAE's critic pass and the actor's proximal pass at once write what
    they write one after the other."""
    runs = {}
    for threads in (1, 2):
        trainer, data = _minibatch(tmp_path / str(threads), "ppo.decoupled=true", f"ppo.update_threads={threads}")
        runs[threads] = data
    for key in ("advantage", "value_target", "state_value", PROXIMAL_LOG_PROB_KEY):
        assert torch.allclose(runs[1][key], runs[2][key], rtol=1e-5, atol=1e-6), key
        assert not runs[2][key].requires_grad
    assert torch.equal(runs[1]["logits"], runs[2]["logits"])  # the collection's, left as they were
