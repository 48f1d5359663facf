"""The benchmark scripts' entry points still run (tiny sizes, CPU): a renamed API breaks them here, not on a GPU."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rl3_torchrl.modules import MetaTransformerModule
from rl3_torchrl.tasks import make_meta_env
from rl3_torchrl.training import actor_critic_from_config, load_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config, algo", [("default", "rl3"), ("paper_random_mdp", "rl2")])
def test_collection_step_times_every_part(config, algo):
    times = load("collection_step").main(["--config", config, "--algo", algo, "--horizon", "6", "--num-envs", "2",
                                          "--repeats", "1", "--device", "cpu"])  # fmt: skip
    parts = ("env + transforms", "backbone step", "bare actor step", "actor step", "collector step")
    assert all(times[part] > 0 for part in parts)
    assert times["ratio"] == pytest.approx(times["collector step"] / (times["env + transforms"] + times["bare actor step"]))
    assert times["backbone ratio"] == pytest.approx(
        times["collector step"] / (times["env + transforms"] + times["backbone step"])
    )


@pytest.mark.parametrize("algo", ["rl2", "rl3"])
def test_the_bare_actor_step_is_the_actors_arithmetic(algo):
    """The ratio's denominator does what the actor does: with the same seed, the same actions and log-probs."""
    bench = load("collection_step")
    cfg = load_config([f"algo={algo}", "model.d_model=8", "model.hidden_sizes=[8]", "model.ffn_dim=8",
                       "model.num_heads=2"])  # fmt: skip
    env = make_meta_env(cfg.env, algo, 3, horizon=5, seed=0, prev_observation=cfg.model.prev_observation)
    actor, _ = actor_critic_from_config(env, cfg, torch.device("cpu"))
    module = next(m for m in actor.modules() if isinstance(m, MetaTransformerModule))
    td, cache = env.reset(), None
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for t in range(2 * env.horizon):
            x, is_init = module._inputs(td)
            cache = module.backbone.make_cache(x) if cache is None else cache
            values = [td.get(key).reshape(3, -1).float() for key in module.token_keys]
            torch.manual_seed(t)
            action, log_prob = bench.bare_actor_step(module, values, is_init, cache)
            torch.manual_seed(t)
            out = actor(td)
            assert torch.equal(action, out["action"]) and torch.equal(log_prob, out["action_log_prob"]), f"step {t}"
            _, td = env.step_and_maybe_reset(out)


def test_update_threads_times_every_setting_idle_and_beside_a_busy_core():
    results = load("update_threads").main(["--config", "default", "--minibatches", "1", "--repeats", "1",
                                           "horizon=6", "num_envs=4", "ppo.minibatch_episodes=2", "model.d_model=8",
                                           "model.hidden_sizes=[8]", "model.ffn_dim=8", "model.num_heads=2"])  # fmt: skip
    settings = ("sequential, 1 torch thread", "sequential, 2 torch threads", "update_threads=2")
    assert set(results) == {(load, phase, s) for load in ("idle", "busy core") for phase in ("trains", "stopped")
                            for s in settings}  # fmt: skip
    assert all(ms > 0 for ms in results.values())


def test_attention_times_the_kernel_and_sdpa_on_each_shape():
    results = load("attention").main(["--shapes", "2x2x20x16", "1x1x33x32", "--repeats", "1"])
    assert set(results) == {(shape, name) for shape in ("2x2x20x16", "1x1x33x32")
                            for name in ("forward", "forward + backward")}  # fmt: skip
    assert all(row["sdpa_ms"] > 0 and row["kernel_ms"] > 0 for row in results.values())
