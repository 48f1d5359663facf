"""RandomMDPEnv and the bandit presets: specs, task distribution, dynamics, seeding, partial resets, bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tensordict import TensorDict
from torchrl.envs import InitTracker, SerialEnv, TransformedEnv
from torchrl.envs.utils import check_env_specs

from rl3_torchrl.envs import RandomMDPEnv


@pytest.mark.parametrize("preset", sorted(RandomMDPEnv.PRESETS))
@pytest.mark.parametrize("num_envs", [1, 3])
def test_check_env_specs(preset, num_envs):
    env = RandomMDPEnv.from_preset(preset, num_envs, horizon=7)
    check_env_specs(env)
    check_env_specs(env, break_when_any_done="both")
    check_env_specs(TransformedEnv(env, InitTracker()))


def test_serial_env_of_random_mdps():
    env = SerialEnv(2, lambda: RandomMDPEnv(3, horizon=5))
    check_env_specs(env)
    assert env.rollout(5).batch_size == torch.Size([2, 3, 5])


def test_meta_episode_is_the_torchrl_episode():
    H, T = 23, 5
    env = RandomMDPEnv(4, horizon=H, episode_length=T)
    data = env.rollout(2 * H, break_when_any_done=False)
    done = data["next", "done"].squeeze(-1)
    assert torch.equal(data["next", "terminated"], data["next", "done"])
    # done exactly at t = H, 2H; the env restarts the meta-episode after it
    expected = torch.zeros(2 * H, dtype=torch.bool)
    expected[[H - 1, 2 * H - 1]] = True
    assert torch.equal(done, expected.expand(4, -1))
    assert torch.allclose(data["meta_step"][:, H], torch.zeros(4, 1))
    assert torch.allclose(data["next", "meta_step"][:, H - 1], torch.ones(4, 1))
    # inner episodes of T steps restart at the start state inside the meta-episode
    inner = data["next", "inner_done"].squeeze(-1)
    steps_in_trial = torch.arange(2 * H) % H + 1
    assert torch.equal(inner[0], steps_in_trial % T == 0)
    assert (data["next", "state"][inner] == 0).all()
    assert torch.equal(data["next", "state"][~inner], data["next", "reached_state"][~inner])
    assert torch.allclose(data["next", "episode_step"].squeeze(-1), (steps_in_trial % T).float().div(T).expand(4, -1))
    assert not data["next", "inner_terminated"].any()


def test_task_distribution_matches_theory():
    S, A, B, alpha = 6, 3, 400, 0.5
    env = RandomMDPEnv(B, n_states=S, n_actions=A, dirichlet_alpha=alpha, reward_mean_loc=1.0, reward_mean_scale=2.0)
    env.reset()
    tasks = env.task_mdp()
    p = tasks["transition"].double()
    assert torch.allclose(p.sum(-1), torch.ones(B, S, A, dtype=torch.double), atol=1e-6)
    n = B * S * A  # independent Dirichlet rows
    mean, var = 1 / S, (1 / S) * (1 - 1 / S) / (S * alpha + 1)
    entry_means = p.reshape(n, S).mean(0)
    assert (entry_means - mean).abs().max() < 5 * math.sqrt(var / n)
    sample_var = p.reshape(n, S).var(0)
    assert (sample_var - var).abs().max() < 0.15 * var
    r = tasks["reward"].double().flatten()
    assert abs(r.mean() - 1.0) < 5 * 2.0 / math.sqrt(r.numel())
    assert abs(r.var() / 4.0 - 1) < 0.1


@pytest.mark.parametrize("preset", ["bandit", "bandit_ood"])
def test_bandit_arm_distribution(preset):
    B = 4000
    env = RandomMDPEnv.from_preset(preset, B)
    env.reset()
    arms = env.task_mdp()["reward"].double().flatten()
    if preset == "bandit":  # U(0, 1)
        mean, var = 0.5, 1 / 12
    else:  # N(0.5, 0.5) clipped to [0, 1], moments by numerical integration
        x = np.linspace(-6, 6, 200001)
        pdf = np.exp(-x**2 / 2) / math.sqrt(2 * math.pi)
        clipped = np.clip(0.5 + 0.5 * x, 0, 1)
        mean = np.trapezoid(clipped * pdf, x)
        var = np.trapezoid((clipped - mean) ** 2 * pdf, x)
    assert abs(arms.mean() - mean) < 5 * math.sqrt(var / arms.numel())
    assert abs(arms.var() - var) < 0.05 * var
    assert arms.min() >= 0 and arms.max() <= 1


def test_empirical_next_states_and_rewards_match_the_task():
    # episode_length=1: every step starts in state 0, so reached states sample P(.|0, a) directly
    B, S, A, steps, action = 6, 5, 3, 4000, 2
    env = RandomMDPEnv(B, n_states=S, n_actions=A, episode_length=1, horizon=steps, seed=3)
    env.reset()
    tasks = env.task_mdp()
    counts = torch.zeros(B, S)
    rewards = []
    for _ in range(steps):
        reached, reward, *_ = env.advance_tasks(torch.full((B,), action))
        counts[torch.arange(B), reached] += 1
        rewards.append(reward)
    p = tasks["transition"][:, 0, action]
    freq = counts / steps
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / steps).sqrt() + 1e-3).all()
    rewards = torch.stack(rewards, 1)
    mean = tasks["reward"][:, 0, action]
    assert ((rewards.mean(1) - mean).abs() < 5 / math.sqrt(steps)).all()
    assert ((rewards.var(1) - 1).abs() < 0.15).all()


def test_bernoulli_rewards():
    env = RandomMDPEnv.from_preset("bandit", 4, horizon=3000)
    env.reset()
    rewards = torch.stack([env.advance_tasks(torch.zeros(4, dtype=torch.long))[1] for _ in range(3000)], 1)
    assert set(rewards.unique().tolist()) <= {0.0, 1.0}
    p = env.task_mdp()["reward"][:, 0, 0]
    assert ((rewards.mean(1) - p).abs() < 5 * (p * (1 - p) / 3000).sqrt() + 1e-3).all()


def _rollout(env, steps, seed):
    rng = torch.Generator().manual_seed(seed)
    td = env.reset()
    out = []
    for _ in range(steps):
        td["action"] = torch.randint(env.n_actions, env.batch_size, generator=rng)
        td, nxt = env.step_and_maybe_reset(td)
        out.append(td)
        td = nxt
    return torch.stack(out, -1)


def test_seeding_reproduces_tasks_and_rollouts():
    a, b = RandomMDPEnv(3, horizon=10, seed=7), RandomMDPEnv(3, horizon=10, seed=7)
    ra, rb = _rollout(a, 25, 0), _rollout(b, 25, 0)
    assert (ra == rb).all()
    assert (a.task_mdp() == b.task_mdp()).all()
    c = RandomMDPEnv(3, horizon=10, seed=8)
    c.reset()
    assert not torch.equal(c.task_mdp()["transition"], a.task_mdp()["transition"])
    # set_seed restarts the streams
    a.set_seed(7)
    assert (_rollout(a, 25, 0) == ra).all()


def test_train_and_test_splits_draw_different_tasks():
    train, test = RandomMDPEnv(50, seed=0), RandomMDPEnv(50, seed=0, split="test")
    train.reset(), test.reset()
    p_train, p_test = train.task_mdp()["transition"], test.task_mdp()["transition"]
    # no test task equals any training task
    assert torch.cdist(p_train.flatten(1), p_test.flatten(1)).min() > 1e-3


def test_partial_reset_leaves_other_rows_untouched():
    env = RandomMDPEnv(4, horizon=50)
    td = env.reset()
    for _ in range(7):
        td["action"] = torch.ones(4, dtype=torch.long)
        td = env.step(td)["next"].clone()
    before_tasks, before_td = env.task_mdp(), td.clone()
    mask = torch.tensor([True, False, True, False]).unsqueeze(-1)
    td.set("_reset", mask)
    after = env.reset(td)
    after_tasks = env.task_mdp()
    keep, redraw = ~mask.squeeze(-1), mask.squeeze(-1)
    assert (after_tasks[keep] == before_tasks[keep]).all()
    assert not torch.equal(after_tasks["transition"][redraw], before_tasks["transition"][redraw])
    for key in ("state", "meta_step", "episode_step", "observation"):
        assert torch.equal(after[key][keep], before_td[key][keep])
    assert (after["meta_step"][redraw] == 0).all() and (after["state"][redraw] == 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_states": 0}, "n_states=0"),
        ({"n_actions": 0}, "n_actions=0"),
        ({"dirichlet_alpha": 0.0}, "dirichlet_alpha=0.0"),
        ({"dirichlet_alpha": -1.0}, "dirichlet_alpha=-1.0"),
        ({"horizon": 0}, "horizon=0"),
        ({"episode_length": 0}, "episode_length=0"),
        ({"reward_noise_std": -1.0}, "reward_noise_std=-1.0"),
        ({"start_state": 10}, "start_state=10"),
        ({"split": "val"}, "split='val'"),
        ({"reward_distribution": "bernoulli"}, "reward_mean_clip=None"),
        ({"reward_distribution": "poisson"}, "reward_distribution='poisson'"),
    ],
)
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomMDPEnv(2, **kwargs)


def test_bad_types_and_presets():
    with pytest.raises(TypeError, match="num_envs"):
        RandomMDPEnv(2.5)
    with pytest.raises(ValueError, match="preset='nope'.*'ood'"):
        RandomMDPEnv.from_preset("nope")


@pytest.mark.parametrize(
    "action, error, match",
    [
        (torch.tensor([0, 5]), ValueError, r"\[0, 4\].*\[5\]"),
        (torch.tensor([-1, 0]), ValueError, r"\[0, 4\].*\[-1\]"),
        (torch.tensor([0, 1, 2]), ValueError, r"shape \(2,\)"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer dtype"),
    ],
)
def test_bad_actions(action, error, match):
    env = RandomMDPEnv(2)
    env.reset()
    with pytest.raises(error, match=match):
        env._step(TensorDict({"action": action}, batch_size=[]))


def test_task_mdp_before_reset():
    with pytest.raises(RuntimeError, match="reset"):
        RandomMDPEnv(2).task_mdp()


@settings(max_examples=25, deadline=None)
@given(
    S=st.integers(1, 8),
    A=st.integers(1, 6),
    alpha=st.floats(0.05, 20.0),
    seed=st.integers(0, 2**31),
)
def test_transition_rows_conserve_probability(S, A, alpha, seed):
    env = RandomMDPEnv(3, n_states=S, n_actions=A, dirichlet_alpha=alpha, seed=seed)
    env.reset()
    p = env.task_mdp()["transition"]
    assert (p >= 0).all()
    assert torch.allclose(p.sum(-1), torch.ones(3, S, A), atol=1e-5)
    # sampling always lands on a state of positive probability
    reached, *_ = env.advance_tasks(torch.zeros(3, dtype=torch.long))
    assert (p[torch.arange(3), 0, 0, reached] > 0).all()
