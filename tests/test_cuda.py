"""The accelerator path: training, the step/window agreement and a sync-free collection step on CUDA.

Every test here is marked ``cuda`` and skips without a CUDA device; ``benchmarks/gpu_check.py`` runs them with
``pytest -m cuda`` on a machine that has one.
"""
import copy

import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp
from torchrl.modules import ProbabilisticActor, set_recurrent_mode

from rl3_torchrl.modules import make_actor_critic
from rl3_torchrl.tasks import make_meta_env
from rl3_torchrl.training import Trainer, load_actor, load_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
TINY = ["model.d_model=16", "model.hidden_sizes=[16]", "model.ffn_dim=16", "model.num_heads=2",
        "ppo.minibatch_episodes=2", "eval.every=2", "eval.num_tasks=4", "progress=false"]


@pytest.mark.parametrize("env, algo", [("random_mdp", "rl3"), ("random_mdp", "rl2"), ("gridworld_11x11", "rl3_coarse")])
def test_training_on_cuda(tmp_path, env, algo):
    cfg = load_config([f"env={env}", f"algo={algo}", "horizon=20", "num_envs=4", "iterations=2", "device=cuda",
                       f"output_dir={tmp_path}", *TINY])
    trainer = Trainer(cfg)
    history = trainer.train()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(row["loss_critic"])) for row in history)
    assert "eval_return" in history[-1]
    assert all(p.device.type == "cuda" for p in trainer.loss.parameters())
    actor, _ = load_actor(tmp_path / "checkpoint.pt", device="cpu")  # a GPU checkpoint loads on CPU
    assert all(p.device.type == "cpu" for p in actor.parameters())


@pytest.mark.parametrize("decoupled", [False, True])
def test_async_collection_on_cuda_is_reproducible(tmp_path, decoupled):
    """The overlapped collector's worker shares the behaviour weights with the trainer through CUDA IPC; with
    ppo.decoupled the proximal log-probs are computed on the device too."""
    def losses(folder):
        cfg = load_config(["horizon=20", "num_envs=4", "iterations=3", "device=cuda", "collector.backend=async",
                           f"ppo.decoupled={decoupled}", f"output_dir={tmp_path / folder}", *TINY])
        return [row["loss_objective"] for row in Trainer(cfg).train()]

    first = losses("a")
    assert all(torch.isfinite(torch.tensor(first))) and first == losses("b")


def test_update_threads_on_cuda_give_the_sequential_run(tmp_path):
    """ppo.update_threads=2 on the device (both threads queue kernels on the same stream): with the actor training on
    every minibatch the losses are those of the sequential update; with the KL stop, the sharded critic is
    reproducible."""
    def losses(folder, *overrides):
        cfg = load_config(["horizon=20", "num_envs=4", "iterations=2", "device=cuda", "ppo.decoupled=true",
                           f"output_dir={tmp_path / folder}", *TINY, *overrides])
        return [(row["loss_objective"], row["loss_critic"]) for row in Trainer(cfg).train()]

    sequential = losses("a", "ppo.target_kl=null")
    threaded = losses("b", "ppo.target_kl=null", "ppo.update_threads=2")
    assert torch.allclose(torch.tensor(sequential), torch.tensor(threaded), rtol=1e-5)
    assert losses("c", "ppo.update_threads=2") == losses("d", "ppo.update_threads=2")


def test_step_path_equals_window_path_on_cuda():
    horizon = 12
    env = make_meta_env("random_mdp", "rl3", 3, horizon=horizon, seed=0, device="cuda")
    actor, _ = make_actor_critic(env, "rl3", d_model=16, hidden_sizes=(16,), ffn_dim=16, num_heads=2)
    with torch.no_grad():
        # two meta-episodes in a row: the second starts on a full cache (the bound's one re-sync at max_len)
        rollout = env.rollout(2 * horizon, actor, break_when_any_done=False)
        assert rollout.device.type == "cuda" and rollout.shape == (3, 2 * horizon)
        for episode in (rollout[:, :horizon], rollout[:, horizon:]):
            with set_recurrent_mode(True):
                window = actor(episode.clone().exclude("logits"))["logits"]
            torch.testing.assert_close(window, episode["logits"], atol=1e-4, rtol=1e-4)


def test_categorical_actor_samples_what_probabilistic_actor_samples_on_cuda():
    env = make_meta_env("random_mdp", "rl3", 3, horizon=6, seed=0, device="cuda")
    actor, _ = make_actor_critic(env, "rl3", d_model=16, hidden_sizes=(16,), ffn_dim=16, num_heads=2)
    fast, stock = copy.deepcopy(actor), copy.deepcopy(actor)  # one KV cache each
    td = env.reset()
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for t in range(8):
            torch.manual_seed(t)
            out = fast(td.clone())
            torch.manual_seed(t)
            assert (out == ProbabilisticActor.forward(stock, td.clone())).all(), f"step {t}"
            _, td = env.step_and_maybe_reset(out)


def test_collection_step_is_sync_free():
    """RL³'s step path on random MDPs (actor, env, every transform) makes no host sync.

    Not covered: TorchRL's own ``step_and_maybe_reset`` reads ``done.any()`` on the host at every step to decide
    whether to reset (the framework's sync; ``benchmarks/gpu_check.py`` lists it), and the gridworlds' sparse
    estimator reads its model sizes and value iteration's convergence on the host by design.
    """
    env = make_meta_env("random_mdp", "rl3", 4, horizon=30, seed=0, device="cuda")
    actor, _ = make_actor_critic(env, "rl3", d_model=16, hidden_sizes=(16,), ffn_dim=16, num_heads=2)
    with torch.no_grad():
        td = env.reset()
        for _ in range(3):  # the first step builds the KV cache (one deliberate check of is_init)
            _, td = env.step_and_maybe_reset(actor(td))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:  # steps inside the meta-episode: the actor, the env and every transform, then step_mdp
            for _ in range(5):
                td = step_mdp(env.step(actor(td)))
        finally:
            torch.cuda.set_sync_debug_mode("default")
