"""Faults against a training run: kill -9 at chosen points (save, log, eval, update) and resume, two writers on one
folder. Every resumed run must end with the logs and the weights of an uninterrupted run. Then misuse of the envs and
the policy that used to give silently wrong data: each must raise."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchrl.record.loggers.csv import CSVExperiment

import rl3_torchrl.checkpoint
import rl3_torchrl.evaluation
from rl3_torchrl.checkpoint import load_checkpoint
from rl3_torchrl.envs import GridworldEnv, MetaTaskEnv, RandomMDPEnv
from rl3_torchrl.tasks import make_meta_env
from rl3_torchrl.training import NonFiniteError, Trainer, load_config

from _shared import TINY_RUN

TINY = [*TINY_RUN, "iterations=6", "eval.every=3", "eval.num_tasks=2", "checkpoint.every=2"]
# Wall-clock columns differ between any two runs; every other logged value must be equal.
TIMING = ("frames_per_s", "time_collection", "time_q_estimation", "time_update")
PHASES = ("save", "log", "eval", "update")


def _config(out, *extra):
    """The run's config; it resumes when a checkpoint exists, like the study's cells, and starts over otherwise."""
    resume = (Path(out) / "checkpoint.pt").exists()
    return load_config([*TINY, f"output_dir={out}", f"checkpoint.resume={resume}", f"checkpoint.overwrite={not resume}",
                        *extra])


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at(monkeypatch, phase: str, call: int) -> None:
    """Make this process kill -9 itself at the ``call``-th (1-based) entry into ``phase``."""
    calls = iter(range(call - 1, -1, -1))

    def hook(original):
        def wrapper(*args, **kwargs):
            if phase == "log":  # after the scalar is written: a row half logged
                result = original(*args, **kwargs)
                if next(calls) == 0:
                    _die()
                return result
            if next(calls) == 0:
                _die()
            return original(*args, **kwargs)

        return wrapper

    if phase == "save":  # the new checkpoint is written to its temporary file, not yet renamed over the old one
        monkeypatch.setattr(rl3_torchrl.checkpoint.os, "replace", hook(os.replace))
    elif phase == "log":
        monkeypatch.setattr(CSVExperiment, "add_scalar", hook(CSVExperiment.add_scalar))
    elif phase == "eval":
        monkeypatch.setattr(rl3_torchrl.evaluation, "evaluate_actor", hook(rl3_torchrl.evaluation.evaluate_actor))
    else:
        monkeypatch.setattr(Trainer, "update", hook(Trainer.update))


def _in_child(target) -> int:
    """Run ``target()`` in a forked child; returns its exit status (``-9`` when it was killed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            target()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run_killed_at(out, phase, call, *extra) -> int:
    def target():
        with pytest.MonkeyPatch.context() as monkeypatch:
            _kill_at(monkeypatch, phase, call)
            Trainer(_config(out, *extra)).train()

    return _in_child(target)


def _logs(out) -> dict:
    files = sorted(Path(out, "logs").glob("**/*.csv"))
    return {f.relative_to(out).as_posix(): f.read_text() for f in files if f.stem not in TIMING}


def assert_same_run(out, reference):
    """Same logs (but the wall-clock columns), same weights, optimizer state and RNG streams; nothing left over."""
    assert _logs(out) == _logs(reference)
    a, b = load_checkpoint(Path(out) / "checkpoint.pt"), load_checkpoint(Path(reference) / "checkpoint.pt")
    assert a["iteration"] == b["iteration"]
    for key in ("actor", "critic"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    flat = [torch.as_tensor(v) for s in a["optimizer"]["state"].values() for v in s.values()]
    ref = [torch.as_tensor(v) for s in b["optimizer"]["state"].values() for v in s.values()]
    assert all(torch.equal(x, y) for x, y in zip(flat, ref)) and len(flat) == len(ref)
    leftovers = [p.name for p in Path(out).iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no lock, no temporary checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    Trainer(_config(out)).train()
    return out


def test_kill_minus_nine_after_a_new_eval_csv_then_resume(tmp_path, reference):
    """Killed right after the first evaluation was logged (iteration 3: its CSVs did not exist at the checkpoint of
    iteration 2), the resumed run logs that evaluation once."""
    scalars = tmp_path / "run" / "logs" / "random_mdp_rl3" / "scalars"
    per_iteration = len(list((reference / "logs" / "random_mdp_rl3" / "scalars").glob("*.csv"))) - 3  # 3 eval ones
    assert _run_killed_at(tmp_path / "run", "log", 3 * per_iteration + 3) == -signal.SIGKILL
    assert len((scalars / "eval_return.csv").read_text().splitlines()) == 1
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 2
    assert (tmp_path / "run" / ".lock").exists()  # left by the killed process: a stale lock
    Trainer(_config(tmp_path / "run")).train()
    assert_same_run(tmp_path / "run", reference)
    assert [line.split(",")[0] for line in (scalars / "eval_return.csv").read_text().splitlines()] == ["3", "6"]


def test_kill_minus_nine_while_saving_leaves_the_old_checkpoint_and_resumes(tmp_path, reference):
    assert _run_killed_at(tmp_path, "save", 2) == -signal.SIGKILL
    assert [p.name for p in tmp_path.glob(".checkpoint.pt.tmp-*")] != []
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2
    Trainer(_config(tmp_path)).train()
    assert_same_run(tmp_path, reference)


def test_random_kills_resume_to_the_uninterrupted_run(tmp_path, reference):
    """≥ 20 kill -9 at random calls of the save, log, eval and update phases, each followed by a resume (which may
    be killed in turn): every run that finishes equals the uninterrupted one."""
    rng = random.Random(2306)
    kills, finished, run = 0, 0, 0
    phase_kills = dict.fromkeys(PHASES, 0)
    calls = {"save": 3, "log": 90, "eval": 2, "update": 6}  # each phase's calls in one run
    while kills < 24 or min(phase_kills.values()) < 4:
        out = tmp_path / f"run{run}"
        phase = PHASES[kills % len(PHASES)]
        status = _run_killed_at(out, phase, rng.randint(1, calls[phase]))
        if status == -signal.SIGKILL:
            kills += 1
            phase_kills[phase] += 1
            continue
        assert status == 0
        assert_same_run(out, reference)
        finished += 1
        run += 1
    if (tmp_path / f"run{run}").exists():  # finish the last run, killed or not
        Trainer(_config(tmp_path / f"run{run}")).train()
        assert_same_run(tmp_path / f"run{run}", reference)
        finished += 1
    assert kills >= 20 and finished >= 1, (kills, finished, phase_kills)


def test_two_concurrent_runs_on_one_output_dir(tmp_path, reference):
    """While a process trains in a folder, a second one (here this test's process) cannot write into it, whether
    it resumes or overwrites: it fails naming the owner, and the first run ends unharmed, each iteration logged
    once."""
    go = tmp_path / "go"

    def first():
        update = Trainer.update

        def waiting_update(self, data):
            while self.iteration == 3 and not go.exists():  # hold the folder until the second run has tried
                time.sleep(0.01)
            return update(self, data)

        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(Trainer, "update", waiting_update)
            Trainer(_config(tmp_path / "run")).train()

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(_in_child(first))  # a grandchild: its exit status comes back through the child
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "checkpoint.pt").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for extra in ("checkpoint.overwrite=true", "checkpoint.resume=true"):
            with pytest.raises(RuntimeError, match=r"is in use by pid \d+ on host .*one run writes"):
                Trainer(load_config([*TINY, f"output_dir={tmp_path / 'run'}", extra])).train()
        assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 2
    finally:
        go.touch()
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert_same_run(tmp_path / "run", reference)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(f'{{"pid": {dead.stdout.strip()}, "host": "{os.uname().nodename}"}}')
    with rl3_torchrl.checkpoint.RunLock(tmp_path) as lock:
        assert lock.owner()["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("env_cls", [RandomMDPEnv, GridworldEnv])
def test_step_before_reset_and_past_the_horizon_raise(env_cls):
    env = env_cls(num_envs=2, horizon=3)
    action = env.action_spec.zero()
    with pytest.raises(RuntimeError, match=rf"{env_cls.__name__}.step\(\) before reset\(\)"):
        env.step(env.full_action_spec.zero())
    td = env.reset().set("action", action)
    for _ in range(3):
        td = env.step(td)["next"].set("action", action)
    with pytest.raises(RuntimeError, match=r"rows \[0, 1\] already took horizon=3 steps"):
        env.step(td)


@pytest.mark.parametrize("seed, match", [(-1, r"seed=-1 is out of range"), (2**64, r"seed=18446744073709551616 is ")])
def test_invalid_seeds_raise(seed, match):
    with pytest.raises(ValueError, match=match):
        RandomMDPEnv(num_envs=1, seed=seed)
    with pytest.raises(ValueError, match=match):
        RandomMDPEnv(num_envs=1).set_seed(seed)


def test_reward_parameters_that_overflow_float32_raise():
    with pytest.raises(ValueError, match=r"reward_mean_loc=1e\+39.*overflow float32 rewards"):
        RandomMDPEnv(num_envs=1, reward_mean_loc=1e39)
    with pytest.raises(ValueError, match="overflow float32 rewards"):
        RandomMDPEnv(num_envs=1, reward_noise_std=1e38)


def test_nan_policy_inputs_or_weights_raise_instead_of_picking_action_0(tmp_path):
    trainer = Trainer(load_config([*TINY, f"output_dir={tmp_path}"]))
    env = make_meta_env("random_mdp", "rl3", 2, horizon=6)
    td = env.reset()
    td["observation"] = td["observation"] * float("nan")
    with pytest.raises(ValueError, match=r"\['logits'\] are not finite: non-finite inputs \['observation'\]"):
        trainer.actor(td)
    with torch.no_grad():
        next(trainer.actor.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"outputs \['logits'\] are not finite: the inputs are finite: non-finite w"):
        trainer.actor(env.reset())
    # off CPU the module does not check (no host sync per step): the Trainer checks each collected batch once
    batch = env.rollout(6, break_when_any_done=False)
    batch["logits"] = torch.full((2, 6, 5), float("nan"))
    with pytest.raises(NonFiniteError, match=r"iteration 1 \(the collected batch\): the policy's logits"):
        trainer._check_batch(batch)
    batch["logits"].zero_()
    batch["next", "reward"][0, 3] = float("inf")
    with pytest.raises(NonFiniteError, match=r"iteration 1 \(the collected batch\): the env's rewards not finite"):
        trainer._check_batch(batch)


def test_past_the_horizon_raises_without_action_checks_and_syncs_once_per_meta_episode(monkeypatch):
    # the accelerator default (validate_actions=False): the host-side bound reads the device only at the horizon
    env = RandomMDPEnv(num_envs=2, horizon=3, validate_actions=False)
    syncs = []
    check = env._check_horizon
    monkeypatch.setattr(env, "_check_horizon", lambda: syncs.append(env._steps_bound) or check())
    rollout = env.rollout(9, break_when_any_done=False)  # three meta-episodes, partial resets (a `_reset` mask)
    assert rollout["next", "meta_step"].max() == 1 and syncs == [3, 3]
    td = env.reset().set("action", env.action_spec.zero())
    for _ in range(3):
        td = env.step(td)["next"].set("action", env.action_spec.zero())
    with pytest.raises(RuntimeError, match=r"rows \[0, 1\] already took horizon=3 steps"):
        env.step(td)


@pytest.mark.parametrize("dtype, visits", [(torch.float16, "2048"), (torch.bfloat16, "256")])
def test_half_precision_count_models_are_refused(dtype, visits):
    from rl3_torchrl.transforms import DenseCountModel, OnlineQEstimator

    match = rf"dtype={dtype}.*stop growing at 2048 / 256 visits.*allowed: \[torch.float32, torch.float64\]"
    with pytest.raises(ValueError, match=match):
        OnlineQEstimator(dtype=dtype)
    with pytest.raises(ValueError, match=match):
        DenseCountModel(2, 1, laplace=0.1, gamma=0.9, dtype=dtype)


def test_a_nan_reward_reaching_the_estimator_raises():
    from torchrl.envs import Compose, Transform, TransformedEnv

    from rl3_torchrl.transforms import OnlineQEstimator

    class NaNReward(Transform):  # row 1's 4th reward of the meta-episode is NaN
        step = 0

        def _step(self, tensordict, next_tensordict):
            self.step += 1
            if self.step == 4:
                next_tensordict["reward"][1] = float("nan")
            return next_tensordict

    env = TransformedEnv(RandomMDPEnv(num_envs=3, horizon=10), Compose(NaNReward(), OnlineQEstimator()))
    match = r"reward_key='reward' holds non-finite values \[nan\] at rows \[1\] \(their step \[4\] of the meta"
    with pytest.raises(ValueError, match=match):
        env.rollout(10)
    # off CPU the estimator does not check (no host sync per step): the Trainer's batch check catches the reward
    env = TransformedEnv(RandomMDPEnv(num_envs=3, horizon=10), Compose(NaNReward(), OnlineQEstimator(validate=False)))
    assert env.rollout(10)["next", "q_features"][1, 3, :6].isnan().all()  # the values and advantages


def test_huge_rewards_stop_the_run_before_anything_is_written(tmp_path, monkeypatch):
    # rewards ×1e20 are finite, but they overflow the networks (which see the last reward) and the critic's squared
    # returns: inf, which used to be logged every iteration. On CPU the critic's own check stops the run; off CPU
    # (no check per call) the loss check does (NonFiniteError)
    advance = RandomMDPEnv._advance

    def huge(self, state, action):
        reached, reward, terminal = advance(self, state, action)
        return reached, reward * 1e20, terminal

    monkeypatch.setattr(RandomMDPEnv, "_advance", huge)
    with pytest.raises(ValueError, match=r"outputs \['state_value'\] are not finite"):
        Trainer(_config(tmp_path / "cpu")).train()
    trainer = Trainer(_config(tmp_path / "unchecked"))
    for module in (*trainer.actor.modules(), *trainer.critic.modules()):
        if hasattr(module, "check_finite"):
            module.check_finite = False  # as off CPU
    with pytest.raises(NonFiniteError, match=r"iteration 1 \(epoch 1, minibatch 1\): loss_objective, loss_critic"):
        trainer.train()
    for run in ("cpu", "unchecked"):
        assert not (tmp_path / run / "checkpoint.pt").exists()
        assert [p for p in (tmp_path / run / "logs").rglob("*") if p.is_file()] == []


def test_out_of_range_actions_raise_where_checked_and_unchecked_is_documented_unsafe():
    env = RandomMDPEnv(num_envs=2, validate_actions=True)  # the advice for accelerators while debugging
    td = env.reset().set("action", torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"action values must be in \[0, 4\], got \[5\] \(first offending rows \[1\]\)"):
        env.step(td)
    assert "``False`` is unsafe with untrusted actions" in " ".join(MetaTaskEnv.__doc__.split())
