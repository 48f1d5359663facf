"""The PPO recipe end to end: every algo × env, logs/plots/checkpoints, kill-and-resume, bad input."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from rl3_torchrl.checkpoint import CheckpointError, save_checkpoint
from rl3_torchrl.modules import MetaTransformerModule
from rl3_torchrl.training import Trainer, load_actor, load_config

from _shared import TINY_RUN, load_recipe

TINY = [*TINY_RUN, "iterations=2", "eval.every=2", "eval.num_tasks=2", "checkpoint.every=1"]


def _recipe():
    return load_recipe("ppo_rl3")


@pytest.mark.parametrize(
    "algo, env",
    [
        (algo, env)
        for algo in ("rl2", "rl3")
        for env in ("random_mdp", "bandit", "gridworld_11x11", "gridworld_13x13")
    ]
    + [("rl3_coarse", "gridworld_11x11"), ("rl3_coarse", "gridworld_13x13")],
)
def test_recipe_runs_every_algo_and_env(tmp_path, algo, env):
    history = _recipe().main([*TINY, f"algo={algo}", f"env={env}", f"output_dir={tmp_path}"])
    assert len(history) == 2
    last = history[-1]
    for key in ("loss_objective", "loss_critic", "entropy", "kl_approx", "return", "eval_normalized_return"):
        assert torch.isfinite(torch.tensor(last[key])), key
    assert (tmp_path / "checkpoint.pt").is_file()
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    scalars = tmp_path / "logs" / f"{env}_{algo}" / "scalars"
    for name in ("return", "loss_critic", "time_collection", "time_q_estimation", "time_update", "eval_return"):
        assert (scalars / f"{name}.csv").is_file(), name
    rows = (scalars / "return.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows] == [1, 2]


def _config(tmp_path, *extra):
    return load_config([*TINY, "iterations=4", "checkpoint.every=2", f"output_dir={tmp_path}", *extra])


def _killed_in_iteration(cfg, iteration: int) -> None:
    """Run ``cfg`` until it is interrupted at the start of the update of ``iteration`` (1-based)."""
    update = Trainer.update

    def dying_update(self, data):
        if self.iteration == iteration - 1:
            raise KeyboardInterrupt("killed")
        return update(self, data)

    with pytest.MonkeyPatch.context() as monkeypatch, pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(Trainer, "update", dying_update)
        Trainer(cfg).train()


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = Trainer(_config(tmp_path / "full")).train()
    # a run killed during its 4th iteration: iterations 1-3 logged, the checkpoint is the one of iteration 2
    _killed_in_iteration(_config(tmp_path / "killed"), 4)
    resumed = Trainer(_config(tmp_path / "killed", "checkpoint.resume=true")).train()

    assert len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        for key in ("loss_objective", "loss_critic", "loss_entropy", "kl_approx", "return", "eval_return"):
            assert a.get(key) == b.get(key), key
        assert a.keys() == b.keys()
    for name in ("return", "loss_critic", "kl_approx"):
        files = [tmp_path / run / "logs" / "random_mdp_rl3" / "scalars" / f"{name}.csv" for run in ("full", "killed")]
        logs = [file.read_text() for file in files]
        assert logs[0] == logs[1], name  # every iteration logged exactly once


def _same_weights(a, b) -> None:
    a, b = torch.load(Path(a) / "checkpoint.pt", weights_only=False), torch.load(Path(b) / "checkpoint.pt", weights_only=False)
    assert a["iteration"] == b["iteration"]
    for key in ("actor", "critic"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    assert torch.equal(a["torch_rng"], b["torch_rng"])


@pytest.mark.parametrize("threads", [1, 2])
def test_the_recipes_loop_is_the_trainers(tmp_path, threads):
    """recipes/ppo_rl3.py's own update and loop give the weights, logs and RNG streams of Trainer.train(), with the
    update on one thread or on two (``ppo.update_threads``)."""
    full = Trainer(_config(tmp_path / "trainer", f"ppo.update_threads={threads}")).train()
    recipe = _recipe().main([*TINY, "iterations=4", "checkpoint.every=2", f"ppo.update_threads={threads}",
                             f"output_dir={tmp_path / 'recipe'}"])  # fmt: skip
    assert [r["loss_critic"] for r in recipe] == [r["loss_critic"] for r in full]
    _same_weights(tmp_path / "trainer", tmp_path / "recipe")
    scalars = [tmp_path / run / "logs" / "random_mdp_rl3" / "scalars" / "loss_critic.csv" for run in ("trainer", "recipe")]
    assert scalars[0].read_text() == scalars[1].read_text()


@pytest.mark.parametrize("target_kl, threads", [(1e-9, 1), (None, 1), (1e-6, 2), (None, 2)])
def test_a_stopped_actor_is_not_evaluated_and_the_weights_are_the_whole_losss(tmp_path, target_kl, threads):
    """After ActorKLStop stops the actor, Trainer.update runs the critic alone; an independent loop that evaluates
    the whole ClipPPOLoss on every minibatch and drops the actor's terms gives bit-identical weights. With
    ``ppo.update_threads=2`` too while the actor trains (the critic's passes on another thread); once it has stopped,
    the critic's minibatch of 2 episodes is split in two shards: the same weights up to rounding."""
    cfg = _config(tmp_path, "ppo.epochs=3", "num_envs=4", f"ppo.target_kl={'null' if target_kl is None else target_kl}",
                  f"ppo.update_threads={threads}", f"ppo.minibatch_episodes={threads}")
    minibatches = 3 * 4 // threads
    trainer, oracle = Trainer(cfg), Trainer(cfg)
    with trainer.run() as batches:
        data = next(iter(batches))
        calls = []
        backbone = next(m for m in trainer.actor.modules() if isinstance(m, MetaTransformerModule))
        backbone.register_forward_hook(lambda *_: calls.append(1))
        trainer.advantages(data)
        for module in ("actor", "critic"):
            getattr(oracle, module).load_state_dict(getattr(trainer, module).state_dict())
        rng = torch.get_rng_state()  # the minibatch order of both
        library = trainer.update(data.clone())

    torch.set_rng_state(rng)  # the oracle: ClipPPOLoss.forward on every minibatch, the actor's terms dropped
    oracle.loss.entropy_coeff.fill_(trainer.entropy_coeff(0))
    oracle.buffer.extend(data.clone())
    stopped, actor_updates = False, 0
    for _ in range(3):
        for batch in oracle.buffer:
            out = oracle.loss(batch)
            stopped = stopped or (target_kl is not None and bool(out["kl_approx"] > target_kl))
            total = out["loss_critic"] if stopped else out["loss_critic"] + out["loss_objective"] + out["loss_entropy"]
            oracle.optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(oracle.loss.parameters(), cfg.ppo.max_grad_norm)
            oracle.optimizer.step()
            actor_updates += not stopped
    assert library["actor_updates"] == actor_updates
    assert len(calls) == min(actor_updates + 1, minibatches)  # until the minibatch that stops the actor, not after
    assert 0 < actor_updates < minibatches if target_kl else actor_updates == minibatches  # fired mid-way / never
    same = torch.equal if threads == 1 or target_kl is None else partial(torch.allclose, rtol=1e-4, atol=1e-6)
    for module in ("actor", "critic"):
        own, expected = getattr(trainer, module).state_dict(), getattr(oracle, module).state_dict()
        assert all(same(own[name], expected[name]) for name in own), module


def test_the_recipe_killed_and_resumed_reproduces_the_uninterrupted_run(tmp_path):
    recipe = _recipe()
    args = [*TINY, "iterations=4", "checkpoint.every=2"]
    recipe.main([*args, f"output_dir={tmp_path / 'full'}"])
    update = recipe.update

    def dying_update(trainer, data):
        if trainer.iteration == 3:
            raise KeyboardInterrupt("killed")
        return update(trainer, data)

    with pytest.MonkeyPatch.context() as monkeypatch, pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(recipe, "update", dying_update)
        recipe.main([*args, f"output_dir={tmp_path / 'killed'}"])
    assert len(recipe.main([*args, f"output_dir={tmp_path / 'killed'}", "checkpoint.resume=true"])) == 2
    _same_weights(tmp_path / "full", tmp_path / "killed")


def test_a_loop_that_does_not_end_its_iteration_is_told_how(tmp_path):
    trainer = Trainer(_config(tmp_path))
    with pytest.raises(RuntimeError, match=r"iteration 1 was not ended: call trainer.end_iteration\(data, stats\)"):
        with trainer.run() as batches:
            for data in batches:
                trainer.advantages(data)
                trainer.update(data)
    with trainer.run() as batches:  # the lock was released and the collector shut down
        assert next(batches).shape == (2, 6)


def test_checkpoint_errors(tmp_path):
    cfg = _config(tmp_path, "iterations=1")
    Trainer(cfg).train()
    with pytest.raises(FileExistsError, match="checkpoint.resume=true"):
        Trainer(cfg)
    with pytest.raises(CheckpointError, match="algo: checkpoint 'rl3' vs run 'rl2'"):
        Trainer(_config(tmp_path, "iterations=2", "algo=rl2", "checkpoint.resume=true")).train()
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(_config(tmp_path, "iterations=2", "checkpoint.resume=true")).train()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(_config(tmp_path / "empty", "checkpoint.resume=true")).train()


def test_resume_after_the_last_iteration_does_nothing(tmp_path):
    Trainer(_config(tmp_path, "iterations=1", "eval.every=0")).train()
    assert Trainer(_config(tmp_path, "iterations=1", "eval.every=0", "checkpoint.resume=true")).train() == []


def test_same_seed_same_losses(tmp_path):
    a = Trainer(_config(tmp_path / "a", "iterations=2", "eval.every=0")).train()
    b = Trainer(_config(tmp_path / "b", "iterations=2", "eval.every=0")).train()
    assert [r["loss_objective"] for r in a] == [r["loss_objective"] for r in b]
    c = Trainer(_config(tmp_path / "c", "iterations=2", "eval.every=0", "seed=1")).train()
    assert [r["loss_objective"] for r in a] != [r["loss_objective"] for r in c]


def test_the_fused_optimizer_is_reproducible_and_resumes_as_itself(tmp_path):
    """ppo.fused_optimizer=true: torch's fused AdamW; the same seed gives the same losses, the weights differ from
    the default kernel's only by rounding, and a resumed run keeps the fused kernel."""
    fused = Trainer(_config(tmp_path / "a", "iterations=2", "eval.every=0", "ppo.fused_optimizer=true"))
    assert all(group["fused"] for group in fused.optimizer.param_groups)
    a = fused.train()
    b = Trainer(_config(tmp_path / "b", "iterations=2", "eval.every=0", "ppo.fused_optimizer=true")).train()
    assert [r["loss_critic"] for r in a] == [r["loss_critic"] for r in b]
    plain = Trainer(_config(tmp_path / "c", "iterations=2", "eval.every=0"))
    plain.train()
    for name, value in fused.critic.state_dict().items():
        torch.testing.assert_close(value, plain.critic.state_dict()[name], rtol=1e-4, atol=1e-5)
    resumed = Trainer(_config(tmp_path / "a", "iterations=3", "eval.every=0", "ppo.fused_optimizer=true",
                              "checkpoint.resume=true"))
    resumed.train()
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    with pytest.raises(CheckpointError, match="ppo.fused_optimizer: checkpoint True vs run False"):
        Trainer(_config(tmp_path / "a", "iterations=4", "eval.every=0", "checkpoint.resume=true")).train()


@pytest.mark.parametrize(
    "override, match",
    [
        ("algo=rl4", "algo='rl4'"),
        ("env=atari", "env='atari'"),
        ("ppo.entropy_schedule=cosine", "entropy_schedule='cosine'"),
        ("ppo.minibatch_episodes=5", "minibatch_episodes=5 exceeds num_envs=2"),
        ("ppo.reward_scale=0", r"ppo.reward_scale=0.*allowed: \(0.0, 1000000.0\]"),
        ("ppo.reward_scale=1e30", r"ppo.reward_scale=1e\+30 is out of range; allowed: \(0.0, 1000000.0\]"),
        ("ppo.reward_scale=.inf", "ppo.reward_scale must be finite, got inf"),
        ("ppo.lr=.nan", "ppo.lr must be finite, got nan"),
        ("ppo.max_grad_norm=-1", r"ppo.max_grad_norm=-1 is out of range; allowed: \(0.0, inf\]"),
        ("ppo.max_grad_norm=0", r"ppo.max_grad_norm=0 is out of range; allowed: \(0.0, inf\]"),
        ("ppo.gamma=2", r"ppo.gamma=2 is out of range; allowed: \[0.0, 1.0\]"),
        ("ppo.gamma=-0.5", r"ppo.gamma=-0.5 is out of range; allowed: \[0.0, 1.0\]"),
        ("ppo.lmbda=5", r"ppo.lmbda=5 is out of range; allowed: \[0.0, 1.0\]"),
        ("ppo.clip_epsilon=-1", r"ppo.clip_epsilon=-1 is out of range; allowed: \(0.0, inf\]"),
        ("ppo.target_kl=-1", r"ppo.target_kl=-1 is out of range; allowed: \(0.0, inf\]"),
        ("ppo.adam_eps=0", r"ppo.adam_eps=0 is out of range; allowed: \(0.0, inf\]"),
        ("seed=-1", r"seed=-1 is out of range; allowed: \[0, 9223372036854775807\]"),
        (f"seed={2**64}", r"seed=18446744073709551616 is out of range"),
        ("ppo=3", r"ppo=3 is a group of settings \(ppo.epochs, .*set its keys instead"),
        ("ppo.on_nonfinite=ignore", "ppo.on_nonfinite='ignore' is not allowed; choose one of \\['stop', 'skip'\\]"),
        ("model.d_model=9", "model.d_model=9 must be a multiple of model.num_heads=2"),
        ("checkpoint.overwrite=true", None),
        ("config=nope", "config='nope'"),
        ("ppo.nope=1", "bad override"),
        ("num_envs", "key=value"),
    ],
)
def test_bad_config(override, match):
    if match is None:  # overwrite alone is fine; with resume it contradicts
        load_config([*TINY, override])
        override, match = f"{override} checkpoint.resume=true", "contradict each other"
        with pytest.raises(ValueError, match=match):
            load_config([*TINY, *override.split()])
        return
    with pytest.raises(ValueError, match=match):
        load_config([*TINY, override])


def test_compile_and_update_threads_are_refused_together():
    """A thread that compiles makes torch's compiling flag and torchrl's recurrent mode process-wide: the other
    threads' modules would take the wrong path (seen: the collector's step running the window path)."""
    load_config([*TINY, "ppo.update_threads=2"])
    load_config([*TINY, "compile.enabled=true"])
    with pytest.raises(ValueError, match=r"compile.enabled=true with ppo.update_threads=2: pick one"):
        load_config([*TINY, "compile.enabled=true", "ppo.update_threads=2"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("ppo.lr=abc", r"ppo.lr must be a real number, got 'abc' \(str\)"),
        ("model.hidden_sizes=16", r"model.hidden_sizes must be a list of positive integers \(e.g. \[64, 64\]\), got 1"),
        ("model.hidden_sizes=[16,0]", None),
        ("horizon=1e3", "horizon must be an integer, got 1000.0"),
        ("checkpoint.resume=maybe", "checkpoint.resume must be true or false, got 'maybe'"),
        ("eval.num_tasks=2.5", "eval.num_tasks must be an integer"),
    ],
)
def test_bad_config_type(override, match):
    if match is None:
        with pytest.raises(ValueError, match=r"model.hidden_sizes\[1\]=0 is out of range; allowed: \[1, inf\]"):
            load_config([*TINY, override])
        return
    with pytest.raises(TypeError, match=match):
        load_config([*TINY, override])


def test_every_config_key_is_validated():
    """The schema covers every key of ppo.yaml and of the named configs, and nothing else."""
    from rl3_torchrl.config import _SCHEMA, flat_config, named_configs

    for name in [None, *named_configs()]:
        assert set(flat_config(load_config(config=name))) == set(_SCHEMA), name


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_advantages_are_gae_of_the_scaled_rewards(tmp_path, scale):
    """Value targets against a brute-force TD(λ) loop over the scaled rewards; logged rewards stay unscaled."""
    trainer = Trainer(_config(tmp_path, "env=gridworld_11x11", "horizon=12", f"ppo.reward_scale={scale}"))
    data = trainer.env.rollout(12, trainer.actor, break_when_any_done=False)
    reward = data["next", "reward"].clone()
    trainer.advantages(data)
    assert torch.equal(data["next", "reward"], reward)
    gamma, lmbda = trainer.cfg.ppo.gamma, trainer.cfg.ppo.lmbda
    value, done = data["state_value"].squeeze(-1), data["next", "done"].squeeze(-1)
    expected = torch.zeros_like(value)
    for b in range(value.shape[0]):
        running = 0.0
        for t in reversed(range(value.shape[1])):
            following = 0.0 if bool(done[b, t]) else float(value[b, t + 1])
            delta = scale * float(reward[b, t]) + gamma * following - float(value[b, t])
            running = delta + gamma * lmbda * (0.0 if bool(done[b, t]) else running)
            expected[b, t] = running + float(value[b, t])
    assert reward.abs().max() >= 1  # gridworld rewards: the scale matters
    torch.testing.assert_close(data["value_target"].squeeze(-1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_normalize_advantage(tmp_path, normalize):
    """At the weights that collected the batch (ratio 1) the clipped objective is minus the mean advantage: the
    raw GAE advantage with ppo.normalize_advantage=false, a standardised one (mean 0) with true."""
    trainer = Trainer(_config(tmp_path, "horizon=12", f"ppo.normalize_advantage={str(normalize).lower()}"))
    with torch.no_grad():
        data = trainer.env.rollout(12, trainer.actor, break_when_any_done=False)
    data.names = [None, "time"]
    trainer.advantages(data)
    advantage = data["advantage"]
    assert abs(float(advantage.mean())) > 1e-2  # the two settings differ on this batch
    objective = float(trainer.loss(data)["loss_objective"].detach())
    expected = 0.0 if normalize else -float(advantage.mean())
    assert objective == pytest.approx(expected, abs=1e-5)


def test_rl3_coarse_needs_a_gridworld(tmp_path):
    with pytest.raises(ValueError, match="rl3_coarse.*gridworld"):
        Trainer(_config(tmp_path, "algo=rl3_coarse"))


def test_loaded_actor_rejects_a_longer_horizon(tmp_path):
    from rl3_torchrl.evaluation import evaluate_actor

    Trainer(_config(tmp_path, "iterations=1", "eval.every=0")).train()
    actor, cfg = load_actor(tmp_path / "checkpoint.pt", task="random_mdp_ood")
    assert cfg.algo == "rl3"
    with pytest.raises(ValueError, match="trained on env='random_mdp'.*task='bandit'"):
        load_actor(tmp_path / "checkpoint.pt", task="bandit")
    result = evaluate_actor(actor, "random_mdp", "rl3", horizon=6, num_tasks=2)
    assert result["num_tasks"] == 2
    with pytest.raises(ValueError, match="max_len"):
        evaluate_actor(actor, "random_mdp", "rl3", horizon=8, num_tasks=2)  # 8 positions > max_len = 6 + 1
    with pytest.raises(ValueError, match=r"was trained at H=6: its actor cannot act at horizon=8; allowed: \[1, 6\]"):
        load_actor(tmp_path / "checkpoint.pt", horizon=8)  # before any work


@pytest.mark.slow
@pytest.mark.parametrize("algo, iterations, margin", [("rl3", 100, 0.05), ("rl2", 1000, 0.02)])
def test_default_config_learns_beyond_random(tmp_path, algo, iterations, margin):
    """The recipe's default must beat the random policy on held-out tasks: RL³ clearly within its 100 iterations
    (≈1 min), RL² at the cpu study's budget of 1000 iterations (≈10 min; it learns slowly, docs/results.rst)."""
    from rl3_torchrl.evaluation import evaluate_baseline

    cfg = load_config([f"algo={algo}", f"iterations={iterations}", "eval.num_tasks=256", "eval.every=1000",
                       "progress=false", f"output_dir={tmp_path}"])
    history = Trainer(cfg).train()
    random = evaluate_baseline("random", cfg.env, horizon=cfg.horizon, num_tasks=cfg.eval.num_tasks, seed=cfg.seed)
    final = history[-1]
    assert final["eval_return"] > random["return_mean"] + 3 * random["return_stderr"]
    assert final["eval_normalized_return"] > random["normalized_mean"] + margin


@pytest.mark.slow
def test_scaled_rewards_let_rl3_reach_goals_on_7x7_grids(tmp_path):
    """A cell of the ``grids`` study (RL³, seed 0, ``ppo.reward_scale=0.01``, 600 iterations): the policy beats doing
    nothing (noop's return is −H: every move costs at least noop's −1) and reaches the goal in far more inner
    episodes than the random policy. Beating the random policy's return is not enough on grids: a noop policy does
    (docs/results.rst, "Why the 11×11 runs collapsed")."""
    from rl3_torchrl.evaluation import evaluate_actor, evaluate_baseline

    cfg = load_config(
        ["env=gridworld_7x7", "algo=rl3", "horizon=100", "num_envs=32", "iterations=600", "ppo.reward_scale=0.01",
         "eval.every=0", "progress=false", f"output_dir={tmp_path}"]
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.train()
    learned = evaluate_actor(trainer.actor, cfg.env, cfg.algo, num_tasks=128, horizon=100, seed=cfg.seed)
    random = evaluate_baseline("random", cfg.env, horizon=100, num_tasks=128, seed=cfg.seed)
    assert learned["return_mean"] - 3 * learned["return_stderr"] > -cfg.horizon
    assert learned["goal_rate"] > random["goal_rate"] + 0.2


def test_missing_logger_package_is_named(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed here: nothing is missing")
    with pytest.raises(ImportError, match=r"logger.backend='tensorboard' needs .*rl3_torchrl\[loggers\]"):
        Trainer(_config(tmp_path, "logger.backend=tensorboard")).train()


def test_recipe_prints_the_baselines_on_the_same_tasks(tmp_path, capsys):
    from rl3_torchrl.evaluation import evaluate_baseline

    _recipe().main([*TINY, "env=bandit", f"output_dir={tmp_path}"])
    out = capsys.readouterr().out
    for name in ("random", "greedy_q"):
        expected = evaluate_baseline(name, "bandit", horizon=6, num_tasks=2, seed=0)
        assert f"  {name}: {expected['return_mean']:.2f} ± {expected['return_stderr']:.2f}" in out
    assert "rl3 after 2 iterations" in out


def _nan_in_minibatch(trainer, call):
    """Make the ``call``-th (1-based) minibatch loss of ``trainer`` NaN (its critic loss)."""
    forward, calls = trainer.loss.forward, iter(range(call - 1, -1, -1))

    def nan_forward(batch):
        out = forward(batch)
        if next(calls, 1) == 0:
            out.set("loss_critic", out["loss_critic"] * float("nan"))
        return out

    trainer.loss.forward = nan_forward
    return trainer


def test_nan_in_the_last_minibatch_stops_before_anything_is_written(tmp_path):
    """TINY has 2 epochs × 2 minibatches per iteration: call 12 is the last minibatch of iteration 3."""
    from rl3_torchrl.training import NonFiniteError

    full = Trainer(_config(tmp_path / "full")).train()
    trainer = _nan_in_minibatch(Trainer(_config(tmp_path / "nan")), 12)
    with pytest.raises(NonFiniteError, match=r"iteration 3 \(epoch 2, minibatch 2\): loss_critic, the gradient norm "
                                             r"not finite\. Nothing of this iteration was written.*Likely causes"):
        trainer.train()
    state = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 2 and all(torch.isfinite(v).all() for v in state["actor"].values())
    steps = (tmp_path / "nan" / "logs" / "random_mdp_rl3" / "scalars" / "return.csv").read_text().splitlines()
    assert [s.split(",")[0] for s in steps] == ["1", "2"]
    resumed = Trainer(_config(tmp_path / "nan", "checkpoint.resume=true")).train()
    assert [r["loss_critic"] for r in resumed] == [r["loss_critic"] for r in full[2:]]


def test_on_nonfinite_skip_skips_the_bad_minibatch(tmp_path):
    history = _nan_in_minibatch(Trainer(_config(tmp_path, "ppo.on_nonfinite=skip")), 12).train()
    assert [r["skipped_minibatches"] for r in history] == [0, 0, 1, 0]
    assert all(torch.isfinite(torch.tensor(r["loss_critic"])) for r in history)


def test_nan_weights_stop_the_run(tmp_path):
    from rl3_torchrl.training import NonFiniteError

    trainer = Trainer(_config(tmp_path))
    step, steps = torch.optim.AdamW.step, iter(range(3, -1, -1))

    def poisoning_step(self, *args, **kwargs):  # the last of iteration 1's 4 steps makes a critic weight inf
        step(self, *args, **kwargs)
        if next(steps) == 0:
            with torch.no_grad():
                self.param_groups[1]["params"][0].fill_(float("inf"))

    trainer.optimizer.step = poisoning_step.__get__(trainer.optimizer)
    with pytest.raises(NonFiniteError, match=r"iteration 1 \(after the optimizer steps\): the weights \["):
        trainer.train()
    assert not (tmp_path / "checkpoint.pt").exists()
    assert [p for p in (tmp_path / "logs").rglob("*") if p.is_file()] == []  # the logger's empty folders only


def test_a_fresh_run_refuses_the_logs_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    _killed_in_iteration(_config(tmp_path), 2)  # iteration 1 logged, no checkpoint yet
    with pytest.raises(FileExistsError, match=r"holds the outputs of an earlier run \(logs\).*checkpoint.overwrite"):
        Trainer(_config(tmp_path))
    Trainer(_config(tmp_path, "checkpoint.overwrite=true", "iterations=2")).train()
    steps = (tmp_path / "logs" / "random_mdp_rl3" / "scalars" / "return.csv").read_text().splitlines()
    assert [s.split(",")[0] for s in steps] == ["1", "2"]


def test_a_moved_run_resumes(tmp_path):
    """The paths (``output_dir``, the log files) are not part of the compared config. (A constant entropy bonus:
    the linear schedule depends on ``iterations``.)"""
    full = Trainer(_config(tmp_path / "full", "ppo.entropy_schedule=constant")).train()
    Trainer(_config(tmp_path / "a", "iterations=2", "ppo.entropy_schedule=constant")).train()
    (tmp_path / "a").rename(tmp_path / "b")
    resumed = Trainer(_config(tmp_path / "b", "checkpoint.resume=true", "ppo.entropy_schedule=constant")).train()
    assert [r["loss_critic"] for r in resumed] == [r["loss_critic"] for r in full[2:]]
    csv = Path("logs", "random_mdp_rl3", "scalars", "eval_return.csv")
    assert (tmp_path / "b" / csv).read_text() == (tmp_path / "full" / csv).read_text()


def test_horizon_null_resumes_as_the_presets_horizon(tmp_path):
    bandit = ["env=bandit", "eval.every=0", "iterations=1"]
    Trainer(_config(tmp_path, *bandit, "horizon=null")).train()
    resumed = Trainer(_config(tmp_path, *bandit, "horizon=100", "iterations=2", "checkpoint.resume=true")).train()
    assert len(resumed) == 1
    with pytest.raises(CheckpointError, match="horizon: checkpoint 100 vs run 50"):
        Trainer(_config(tmp_path, *bandit, "horizon=50", "iterations=3", "checkpoint.resume=true")).train()


def test_a_checkpoint_written_before_the_new_keys_resumes(tmp_path):
    """A checkpoint of the earlier format (no ppo.on_nonfinite / checkpoint.overwrite keys, log sizes under the
    absolute path it was written in) resumes in another folder; an eval CSV created after it is deleted."""
    run = ["eval.every=3"]
    full = Trainer(_config(tmp_path / "full", *run)).train()
    _killed_in_iteration(_config(tmp_path / "old", *run), 3)
    path = tmp_path / "old" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for key in ("ppo.on_nonfinite", "checkpoint.overwrite", "model.prev_observation"):
        del state["config"][key]
    state["config"]["output_dir"] = "/elsewhere/run"
    state["log_sizes"] = {f"/elsewhere/run/{name}": size for name, size in state["log_sizes"].items()}
    save_checkpoint(state, path)
    late = tmp_path / "old" / "logs" / "random_mdp_rl3" / "scalars" / "eval_return.csv"
    late.write_text("3,1.0\n")  # as if iteration 3 had been logged before the kill
    resumed = Trainer(_config(tmp_path / "old", *run, "checkpoint.resume=true")).train()
    assert [r["loss_critic"] for r in resumed] == [r["loss_critic"] for r in full[2:]]
    assert late.read_text() == (tmp_path / "full" / late.relative_to(tmp_path / "old")).read_text()
    save_checkpoint(state, path)  # the earlier format again: a missing key matches only its default
    with pytest.raises(CheckpointError, match=r"ppo.on_nonfinite: checkpoint 'stop' vs run 'skip'"):
        Trainer(_config(tmp_path / "old", *run, "ppo.on_nonfinite=skip", "checkpoint.resume=true")).train()


def test_a_run_writes_its_resolved_config_and_logs_frames(tmp_path):
    from omegaconf import OmegaConf

    cfg = _config(tmp_path, "iterations=2", "seed=5")
    Trainer(cfg).train()
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.seed == 5 and saved.logger.exp_name == "random_mdp_rl3"  # interpolations resolved
    assert load_config([f"config={tmp_path / 'config.yaml'}"]) == OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    rows = (tmp_path / "logs" / "random_mdp_rl3" / "scalars" / "frames.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows] == [["1", "12.0"], ["2", "24.0"]]  # 2 envs × H = 6 per iteration


def test_help_prints_the_merged_config_with_its_comments(capsys):
    _recipe().main(["config=paper_random_mdp", "ppo.epochs=3", "--help"])
    out = capsys.readouterr().out
    assert "recipes/ppo_rl3.py" in out and "named configs: paper_gridworld, paper_random_mdp" in out
    assert "target_kl: 0.01         # the actor stops" in out  # a default line, its comment kept
    assert "horizon: 512              # ← paper_random_mdp; H, the meta-episode length" in out
    assert "  epochs: 3               # ← override" in out


def test_keep_last_and_keep_best_checkpoints(tmp_path):
    history = Trainer(_config(tmp_path, "checkpoint.every=1", "eval.every=1", "checkpoint.keep_last=2",
                              "checkpoint.keep_best=true")).train()
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["iteration_000003.pt", "iteration_000004.pt"]
    assert torch.load(tmp_path / "checkpoints" / kept[0], weights_only=False)["iteration"] == 3
    best = torch.load(tmp_path / "checkpoint_best.pt", weights_only=False)
    returns = [row["eval_return"] for row in history]
    assert best["best_eval_return"] == max(returns) and best["iteration"] == returns.index(max(returns)) + 1
    actor, _ = load_actor(tmp_path / "checkpoint_best.pt")  # a whole checkpoint: evaluate or resume from it
    with pytest.raises(FileExistsError, match="checkpoint_best.pt, checkpoints"):
        Trainer(_config(tmp_path, "iterations=1"))
    Trainer(_config(tmp_path, "iterations=1", "checkpoint.overwrite=true")).train()
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "checkpoint_best.pt").exists()


def test_an_actor_without_learned_positions_acts_past_its_trained_horizon(tmp_path):
    from rl3_torchrl.evaluation import evaluate_actor

    Trainer(_config(tmp_path, "iterations=1", "model.positions=none")).train()
    actor, cfg = load_actor(tmp_path / "checkpoint.pt", horizon=12)  # trained at H = 6
    assert cfg.model.positions == "none"
    result = evaluate_actor(actor, "random_mdp", "rl3", horizon=12, num_tasks=2)
    assert torch.isfinite(torch.tensor(result["return_mean"]))
    with pytest.raises(ValueError, match=r"model.positions='rotary' is not allowed; choose one of \['learned', 'none'\]"):
        load_config(["model.positions=rotary"])


def test_transition_tokens_train_resume_and_evaluate(tmp_path):
    """model.prev_observation=true: the env writes prev_observation, both modules read it, a killed run resumes
    exactly, and the loaded actor is evaluated on an env that writes it too."""
    from rl3_torchrl.evaluation import evaluate, evaluate_actor

    run = ["algo=rl2", "model.prev_observation=true"]
    full = Trainer(_config(tmp_path / "full", *run)).train()
    _killed_in_iteration(_config(tmp_path / "killed", *run), 4)
    resumed = Trainer(_config(tmp_path / "killed", *run, "checkpoint.resume=true")).train()
    assert [r["loss_critic"] for r in resumed] == [r["loss_critic"] for r in full[2:]]
    trainer = Trainer(_config(tmp_path / "fresh", *run))
    for module in (trainer.actor, trainer.critic):
        assert module.in_keys[-2:] == ["prev_observation", "is_init"]
    actor, cfg = load_actor(tmp_path / "full" / "checkpoint.pt")
    assert cfg.model.prev_observation and "prev_observation" in actor.in_keys
    result = evaluate_actor(actor, "random_mdp", "rl2", horizon=6, num_tasks=3)
    assert evaluate(lambda env: actor, "random_mdp", "rl2", horizon=6, num_tasks=3, prev_observation=True) == result
    with pytest.raises(KeyError, match=r"missing input keys \['prev_observation'\]"):
        evaluate_actor(actor, "random_mdp", "rl2", horizon=6, num_tasks=3, prev_observation=False)


def test_explained_variance_is_logged_over_the_whole_batch(tmp_path):
    trainer = Trainer(_config(tmp_path, "iterations=1"))
    with trainer.run() as batches:
        for data in batches:
            trainer.advantages(data)
            values, targets = (data[key].flatten().double().numpy() for key in ("state_value", "value_target"))
            expected = 1 - np.var(targets - values) / np.var(targets)  # every step of every meta-episode at once
            row = trainer.end_iteration(data, trainer.update(data))
    assert row["explained_variance"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    logged = (tmp_path / "logs" / "random_mdp_rl3" / "scalars" / "explained_variance.csv").read_text()
    assert logged.startswith("1,")
