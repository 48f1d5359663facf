"""Tests of MetaRLInputs (the RL² per-step inputs)."""
from __future__ import annotations

import pytest
import torch
from torchrl.data import Bounded
from torchrl.envs import Compose, InitTracker, SerialEnv, TransformedEnv, check_env_specs

from rl3_torchrl.envs import RandomMDPEnv
from rl3_torchrl.transforms import MetaRLInputs

from _shared import OneHotMDP


def make_env(num_envs=3, horizon=6, **kwargs):
    return TransformedEnv(RandomMDPEnv(num_envs=num_envs, horizon=horizon, seed=0, **kwargs),
                          Compose(MetaRLInputs(), InitTracker()))  # fmt: skip


def test_values_along_a_rollout():
    env = make_env(episode_length=2)
    rollout = env.rollout(14, break_when_any_done=False)  # resets after steps 6 and 12
    nxt = rollout["next"]
    torch.testing.assert_close(nxt["prev_action"], torch.nn.functional.one_hot(rollout["action"], 5).float())
    torch.testing.assert_close(nxt["prev_reward"], nxt["reward"])
    assert bool((nxt["first_step"] == 0).all())
    first = rollout["first_step"].squeeze(-1).bool()
    torch.testing.assert_close(first, rollout["is_init"].squeeze(-1))
    assert first[:, [0, 6, 12]].all() and int(first.sum()) == 3 * 3  # inner restarts are not first steps
    assert bool((rollout["prev_action"][first] == 0).all()) and bool((rollout["prev_reward"][first] == 0).all())
    # the root of step t+1 carries what "next" of step t wrote, except at meta-episode starts
    later = ~first[:, 1:]
    torch.testing.assert_close(rollout["prev_action"][:, 1:][later], nxt["prev_action"][:, :-1][later])


def test_partial_reset_touches_only_masked_rows():
    env = make_env()
    td = env.reset()
    td["action"] = torch.tensor([1, 2, 3])
    _, td = env.step_and_maybe_reset(td)
    td["_reset"] = torch.tensor([[True], [False], [True]])
    out = env.reset(td)
    assert out["first_step"].flatten().tolist() == [1.0, 0.0, 1.0]
    assert out["prev_action"].argmax(-1).tolist()[1] == 2 and out["prev_action"][[0, 2]].abs().sum() == 0
    assert out["prev_reward"][1] == td["prev_reward"][1] and bool((out["prev_reward"][[0, 2]] == 0).all())


def test_one_hot_action_spec_and_specs():
    env = TransformedEnv(OneHotMDP(num_envs=2, horizon=5), Compose(MetaRLInputs(), InitTracker()))
    check_env_specs(env)
    check_env_specs(env, break_when_any_done="both")
    rollout = env.rollout(5)
    torch.testing.assert_close(rollout["next", "prev_action"], rollout["action"].float())
    check_env_specs(make_env())
    check_env_specs(SerialEnv(2, make_env))
    outer = TransformedEnv(SerialEnv(2, lambda: RandomMDPEnv(num_envs=3, horizon=4)), MetaRLInputs())
    check_env_specs(outer)
    assert outer.rollout(6, break_when_any_done=False)["first_step"].shape == (2, 3, 6, 1)


def test_prev_observation_is_the_observation_one_step_back():
    env = TransformedEnv(RandomMDPEnv(num_envs=3, horizon=6, seed=0, episode_length=2),
                         Compose(MetaRLInputs(observation_key="observation"), InitTracker()))  # fmt: skip
    check_env_specs(env)
    rollout = env.rollout(14, break_when_any_done=False)  # meta-episode resets after steps 6 and 12
    # a brute-force loop over rows and steps: the previous step's observation, zeros at a meta-episode start
    first = rollout["first_step"].squeeze(-1).bool()
    for row in range(3):
        for t in range(14):
            expected = torch.zeros(10) if first[row, t] else rollout["observation"][row, t - 1]
            torch.testing.assert_close(rollout["prev_observation"][row, t], expected)
    torch.testing.assert_close(rollout["next", "prev_observation"], rollout["observation"])
    # inner-episode restarts keep the transition: the state the last action was taken in
    assert int(first.sum()) == 9 and not (rollout["prev_observation"][~first] == 0).all(-1).any()
    td = env.reset()
    td["action"] = torch.tensor([1, 2, 3])
    _, td = env.step_and_maybe_reset(td)
    td["_reset"] = torch.tensor([[True], [False], [True]])
    out = env.reset(td)
    assert out["prev_observation"][[0, 2]].abs().sum() == 0
    torch.testing.assert_close(out["prev_observation"][1], td["prev_observation"][1])
    with pytest.raises(ValueError, match="observation_key='obs' is not in the env's observation_spec"):
        TransformedEnv(RandomMDPEnv(num_envs=2), MetaRLInputs(observation_key="obs")).observation_spec
    with pytest.raises(KeyError, match="observation_key='obs'"):
        TransformedEnv(RandomMDPEnv(num_envs=2), MetaRLInputs(observation_key="obs")).reset()


def test_custom_keys():
    env = TransformedEnv(RandomMDPEnv(num_envs=2, horizon=4),
                         MetaRLInputs(prev_action_key="a_prev", prev_reward_key="r_prev", first_step_key="start"))  # fmt: skip
    td = env.reset()
    assert {"a_prev", "r_prev", "start"} <= set(td.keys())


def test_errors():
    base = RandomMDPEnv(num_envs=2, horizon=4)
    base.set_spec_lock_(False)
    base.action_spec = Bounded(-1.0, 1.0, shape=(2, 1))
    base.set_spec_lock_(True)
    with pytest.raises(TypeError, match="discrete action spec.*Bounded"):
        TransformedEnv(base, MetaRLInputs()).reset()
    with pytest.raises(KeyError, match="action_key='act'"):
        TransformedEnv(RandomMDPEnv(num_envs=2), MetaRLInputs(action_key="act")).reset()
    with pytest.raises(NotImplementedError, match="TransformedEnv"):
        MetaRLInputs()(RandomMDPEnv(num_envs=2).reset())
