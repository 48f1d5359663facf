"""Scale-out: the Trainer collecting through torchrl's multi-process and Ray collectors, the overlapped (async)
collector, and the compile switch.

Each backend test builds the Trainer with 2 workers × 2 envs (H = 6, a tiny model) and checks that the batch is
``[workers * envs_per_worker, H]`` whole meta-episodes, that the workers draw different tasks, that
``update_policy_weights_`` leaves the workers' policies equal to the trainer's, and that the next batch was sampled
with exactly those weights (its log-probs equal the trainer's window path: the worker's KV cache did not keep keys and
values of the old weights). The async backend's test checks the one-update lag of every batch against the trainer's
weights recorded after each update, and that two runs give the same actions and losses. Ray tests start a local, loopback-only Ray instance with 2 CPUs and shut it down after.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchrl
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

from rl3_torchrl.collectors import MetaEnvFactory, MetaEpisodeCollector, fold_workers, worker_seed
from rl3_torchrl.modules import MetaTransformerModule
from rl3_torchrl.training import Trainer, load_config

from _shared import TINY_MODEL

H, WORKERS, ENVS_PER_WORKER = 6, 2, 2
TINY = [*TINY_MODEL, f"horizon={H}", f"num_envs={WORKERS * ENVS_PER_WORKER}", "iterations=2", "ppo.epochs=1",
        "ppo.minibatch_episodes=2", "eval.every=0", "progress=false", "logger.backend=''"]


def _config(tmp_path, *extra):
    return load_config([*TINY, f"output_dir={tmp_path}", *extra])


def _transformer(policy) -> MetaTransformerModule:
    return next(m for m in policy.modules() if isinstance(m, MetaTransformerModule))


def _log_prob(actor, data) -> torch.Tensor:
    with torch.no_grad(), set_recurrent_mode(True):
        return actor.get_dist(data.exclude("action_log_prob")).log_prob(data["action"])


def _check_backend(tmp_path, backend: str) -> None:
    trainer = Trainer(_config(tmp_path, f"collector.backend={backend}", f"collector.workers={WORKERS}"))
    seeds = [f.seed for f in trainer.env_factories()]
    assert len(set(seeds)) == WORKERS and all(f.num_envs == ENVS_PER_WORKER for f in trainer.env_factories())
    collector = trainer._make_collector(iterations=3)
    try:
        batches = iter(collector)
        raw = next(batches)
        assert raw.shape == (WORKERS, ENVS_PER_WORKER, H)
        data = fold_workers(raw, H)
        assert data.shape == (WORKERS * ENVS_PER_WORKER, H) and data.names == [None, "time"]
        assert data["is_init"][:, 0].all() and not data["is_init"][:, 1:].any()  # whole meta-episodes
        assert data["next", "done"][:, -1].all() and not data["next", "done"][:, :-1].any()
        # different seeds -> different task draws: the workers' trajectories differ
        w0, w1 = raw[0], raw[1]
        assert not torch.equal(w0["next", "reward"], w1["next", "reward"])
        assert not torch.equal(w0["q_features"], w1["q_features"])

        trainer.advantages(data)
        trainer.update(data)
        collector.update_policy_weights_(trainer.actor)
        expected = TensorDict.from_module(trainer.actor).data
        for remote in collector.get_distant_attr("policy"):
            got = TensorDict.from_module(remote).data
            assert (got == expected).all(), "a worker's policy differs from the trainer's after update_policy_weights_"

        data = fold_workers(next(batches), H)
        torch.testing.assert_close(data["action_log_prob"], _log_prob(trainer.actor, data), rtol=0, atol=1e-5)
    finally:
        collector.shutdown()

    history = trainer.train()  # end to end through the Trainer's own loop
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss_critic"])) for r in history)


def test_multiprocess_collector(tmp_path):
    _check_backend(tmp_path, "multiprocess")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'rl3_torchrl[distributed]'")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_collector(tmp_path, local_ray):
    _check_backend(tmp_path, "ray")
    assert local_ray.is_initialized()  # the collector does not shut down a Ray runtime it did not start


def test_worker_seeds_are_distinct_across_workers_runs_and_resumes():
    seeds = {worker_seed(s, w, start) for s in range(3) for w in range(4) for start in (0, 10)}
    assert len(seeds) == 3 * 4 * 2 and all(0 <= s < 2**63 for s in seeds)


def test_worker_policy_starts_with_an_empty_cache_and_is_reset_every_batch():
    env = MetaEnvFactory("bandit", "rl3", 2, horizon=H)()
    trainer_cfg = load_config([*TINY, "output_dir=unused"])
    from rl3_torchrl.training import actor_critic_from_config

    actor, _ = actor_critic_from_config(env, trainer_cfg, "cpu")
    env.rollout(3, actor)
    assert _transformer(actor)._cache is not None
    assert _transformer(pickle.loads(pickle.dumps(actor)))._cache is None  # what a worker receives

    # torchrl copies synced weights in place through ``.data``: invisible to the cache's fingerprint ...
    module = _transformer(actor)
    before = module.backbone.fingerprint()
    weights = TensorDict.from_module(actor).data
    weights.update_(weights.apply(lambda w: w + 0.1))
    assert module.backbone.fingerprint() == before
    # ... so the per-worker collector empties the cache at the start of every batch
    collector = MetaEpisodeCollector(
        env, actor, frames_per_batch=2 * H, total_frames=4 * H, reset_at_each_iter=True,
        auto_register_policy_transforms=False,
    )
    try:
        for data in collector:
            torch.testing.assert_close(data["action_log_prob"], _log_prob(actor, data), rtol=0, atol=1e-5)
            weights.update_(weights.apply(lambda w: w * 0.9))  # a "weight sync" between batches
    finally:
        collector.shutdown()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["collector.workers=3"], "num_envs=4 is not a multiple of collector.workers=3"),
        (["collector.backend=single", "collector.workers=2"], "needs collector.backend=multiprocess or ray"),
        (["collector.backend=slurm"], "collector.backend='slurm'"),
        (["collector.workers=0"], "collector.workers=0"),
        (["collector.backend=async", "collector.workers=2"], "collector.workers=2 with collector.backend=async"),
    ],
)
def test_bad_collector_config(overrides, match):
    if "collector.backend" not in " ".join(overrides):
        overrides = ["collector.backend=multiprocess", *overrides]
    with pytest.raises(ValueError, match=match):
        load_config([*TINY, *overrides])


def _async_run(tmp_path, iterations: int):
    """An overlapped run: each batch with the trainer's weights at its arrival (after ``k`` updates) and its losses."""
    trainer = Trainer(_config(tmp_path, "collector.backend=async", f"iterations={iterations}", "num_envs=2",
                              "ppo.minibatch_episodes=1", "ppo.lr=0.01", "ppo.target_kl=null"))
    snapshots, batches, rows = [TensorDict.from_module(trainer.actor).data.clone()], [], []
    with trainer.run() as stream:
        for data in stream:
            batches.append(data.clone())
            trainer.advantages(data)
            rows.append(trainer.end_iteration(data, trainer.update(data)))
            snapshots.append(TensorDict.from_module(trainer.actor).data.clone())
    return trainer, snapshots, batches, rows


def test_async_collector_lags_one_update_and_is_reproducible(tmp_path):
    trainer, snapshots, batches, rows = _async_run(tmp_path / "a", iterations=4)
    actor = trainer.actor
    for k, data in enumerate(batches):
        assert data.shape == (2, H) and data["is_init"][:, 0].all() and data["next", "done"][:, -1].all()
        lagged = max(k - 1, 0)  # batches 0 and 1 use the initial weights, batch k those after update k - 1
        for j, weights in enumerate(snapshots[: k + 1]):
            weights.to_module(actor)
            log_prob = _log_prob(actor, data)
            if j == lagged:
                torch.testing.assert_close(data["action_log_prob"], log_prob, rtol=0, atol=1e-5)
            elif not (weights == snapshots[lagged]).all():
                assert (data["action_log_prob"] - log_prob).abs().max() > 1e-4, (k, j)
    assert not (snapshots[1] == snapshots[0]).all()  # the updates did change the weights
    _, _, batches_2, rows_2 = _async_run(tmp_path / "b", iterations=4)
    assert [r["loss_objective"] for r in rows_2] == [r["loss_objective"] for r in rows]
    for data, data_2 in zip(batches, batches_2):
        assert torch.equal(data["action"], data_2["action"])


def test_async_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    overrides = ["collector.backend=async", "checkpoint.every=1"]
    # as in a process that started with 2 threads and was set to 1: torchrl's collector shutdown raises them
    # towards the threads torchrl saw at import; the run restores its own
    monkeypatch.setattr(torchrl, "_THREAD_POOL_INIT", 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = Trainer(_config(tmp_path, *overrides, "iterations=1")).train()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    resumed = Trainer(_config(tmp_path, *overrides, "iterations=2", "checkpoint.resume=true"))
    rows = resumed.train()
    assert len(first) == len(rows) == 1 and rows[0]["frames"] == 2 * resumed.frames_per_batch
    assert resumed.iteration == 2


_RAISE_IN_LOOP = """
import sys
from rl3_torchrl.training import Trainer, load_config
if __name__ == "__main__":
    trainer = Trainer(load_config(sys.argv[1:]))
    try:
        with trainer.run() as batches:
            for data in batches:
                raise RuntimeError("raised inside the training loop")
    except RuntimeError:
        pass
"""


def test_async_run_that_raises_exits(tmp_path):
    """An exception inside the loop leaves the collector referenced until exit; the process must still end (torchrl's
    weight-sync scheme, shut down from ``__del__`` at interpreter exit, deadlocked it before shutdown_collector)."""
    script = tmp_path / "raise_in_loop.py"
    script.write_text(_RAISE_IN_LOOP)
    args = [*TINY, "collector.backend=async", f"output_dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, str(script), *args], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_async_collector_takes_weights_only_between_batches(tmp_path):
    trainer = Trainer(_config(tmp_path, "collector.backend=async", "collector.workers=1"))
    collector = trainer._make_collector(iterations=1)
    try:
        with pytest.raises(TypeError, match="between two batches"):
            collector.update_policy_weights_(trainer.actor)
    finally:
        collector.shutdown()


def test_compile_key_runs_the_window_path_compiled(tmp_path):
    eager = Trainer(_config(tmp_path / "eager", "iterations=1")).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        compiled = Trainer(_config(tmp_path / "compiled", "iterations=1", "compile.enabled=true",
                                   "compile.backend=eager")).train()
    for key in ("loss_objective", "loss_critic", "return"):
        assert compiled[0][key] == pytest.approx(eager[0][key], rel=1e-5, abs=1e-6), key


def test_compile_failure_falls_back_to_eager_with_a_warning(tmp_path):
    eager = Trainer(_config(tmp_path / "eager", "iterations=1")).train()
    trainer = Trainer(_config(tmp_path / "bad", "iterations=1", "compile.enabled=true", "compile.backend=no_such"))
    with pytest.warns(RuntimeWarning, match="torch.compile of the Transformer window path failed"):
        fallback = trainer.train()
    assert fallback[0]["loss_objective"] == eager[0]["loss_objective"]


def test_a_doctest_collected_first_does_not_duplicate_the_collectors_module():
    """tests/conftest.py imports the package before pytest collects doctests: without it, running a
    doctest of ``rl3_torchrl/collectors.py`` before the multi-process tests made pytest load a second copy of the
    module, and the workers could not unpickle the collector class ("Worker 0 failed to initialize")."""
    root = Path(__file__).parents[1]
    selection = ["rl3_torchrl/collectors.py::rl3_torchrl.collectors.MetaEpisodeCollector",
                 "tests/test_distributed.py::test_multiprocess_collector"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection], cwd=root,
                          timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 passed" in done.stdout
