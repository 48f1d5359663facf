"""Tests of TrialEnv: meta-episodes of an ordinary episodic env, against hand-worked sequences."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import Compose, EnvBase, InitTracker, ParallelEnv, SerialEnv, TransformedEnv, check_env_specs

from rl3_torchrl.envs import TrialEnv
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator

N = 6  # positions of the chain


class ChainEnv(EnvBase):
    """An episodic chain: the position starts at 0 and moves by the action (0 or 1); entering ``goal`` terminates.

    ``goal`` (one per row, observed) is the task: read from the reset data where given, kept otherwise.
    """

    def __init__(self, batch_size=(), goal=2):
        super().__init__(batch_size=torch.Size(batch_size))
        batch = self.batch_size
        position = Categorical(N, shape=batch, dtype=torch.long)
        self.observation_spec = Composite(position=position, goal=position.clone(), shape=batch)
        self.action_spec = Categorical(2, shape=batch, dtype=torch.long)
        self.reward_spec = Unbounded(shape=(*batch, 1))
        self.position = torch.zeros(batch, dtype=torch.long)
        self.goal = torch.full(batch, goal, dtype=torch.long)

    def _reset(self, tensordict):
        mask = torch.ones(self.batch_size, dtype=torch.bool)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(self.batch_size)
        if tensordict is not None and "goal" in tensordict.keys():
            self.goal = torch.where(mask, tensordict["goal"], self.goal)
        self.position = torch.where(mask, 0, self.position)
        no = torch.zeros((*self.batch_size, 1), dtype=torch.bool)
        return TensorDict(position=self.position.clone(), goal=self.goal.clone(), done=no, terminated=no.clone(),
                          batch_size=self.batch_size)  # fmt: skip

    def _step(self, tensordict):
        action = tensordict["action"]
        self.position = (self.position + action).clamp_max(N - 1)
        terminated = (self.position == self.goal).unsqueeze(-1)
        return TensorDict(position=self.position.clone(), goal=self.goal.clone(), reward=action.float().unsqueeze(-1),
                          done=terminated, terminated=terminated.clone(), batch_size=self.batch_size)  # fmt: skip

    def _set_seed(self, seed):
        pass


class GoalSampler:
    """Hands out goals 2, 3, 4, 5, 2, 3, ... in order, as reset data (a TensorDict), and records every call."""

    def __init__(self):
        self.next_goal, self.masks = 2, []

    def __call__(self, env, mask, generator):
        self.masks.append(mask.clone())
        goals = torch.zeros(env.batch_size, dtype=torch.long)
        for index in mask.nonzero():  # test code: a loop is fine
            goals[tuple(index)] = self.next_goal
            self.next_goal = 2 + (self.next_goal - 1) % 4
        return TensorDict(goal=goals, batch_size=env.batch_size)


def always(action):
    return lambda td: td.set("action", torch.full(td.batch_size, action, dtype=torch.long))


def test_hand_worked_sequence_with_terminal_restarts():
    env = TrialEnv(ChainEnv((1,), goal=2), horizon=7)
    rollout = env.rollout(7, always(1))[0]
    nxt = rollout["next"]
    # positions reached 1, 2 (goal: terminal, restart at 0), 1, 2, 1, 2, 1
    assert nxt["reached_position"].tolist() == [1, 2, 1, 2, 1, 2, 1]
    assert nxt["position"].tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert nxt["inner_done"].squeeze(-1).tolist() == [False, True, False, True, False, True, False]
    assert nxt["inner_terminated"].squeeze(-1).tolist() == [False, True, False, True, False, True, False]
    assert (nxt["episode_step"].squeeze(-1) * 7).round().tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert (nxt["meta_step"].squeeze(-1) * 7).round().tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert nxt["done"].squeeze(-1).tolist() == [False] * 6 + [True]
    assert nxt["terminated"].squeeze(-1).tolist() == [False] * 6 + [True]
    assert not nxt["truncated"].any()
    assert rollout["position"].tolist() == [0, 1, 0, 1, 0, 1, 0]  # the policy sees the restart state
    assert nxt["reward"].sum().item() == 7


def test_episode_length_cuts_without_terminating():
    env = TrialEnv(ChainEnv((1,), goal=5), horizon=7, episode_length=3)
    nxt = env.rollout(7, always(1))[0]["next"]
    assert nxt["reached_position"].tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert nxt["inner_done"].squeeze(-1).tolist() == [False, False, True, False, False, True, False]
    assert not nxt["inner_terminated"].any()
    assert (nxt["episode_step"].squeeze(-1) * 3).round().tolist() == [1, 2, 0, 1, 2, 0, 1]


def test_task_sampler_runs_only_at_meta_resets_and_partial_resets_keep_other_rows():
    sampler = GoalSampler()
    env = TrialEnv(ChainEnv((2,)), horizon=5, task_sampler=sampler)
    td = env.reset()
    assert td["goal"].tolist() == [2, 3] and len(sampler.masks) == 1
    for _ in range(3):  # inner restarts (row 0 reaches its goal at step 2) do not sample tasks
        td = env.step(always(1)(td))["next"]
    assert len(sampler.masks) == 1 and td["goal"].tolist() == [2, 3]
    td["_reset"] = torch.tensor([[True], [False]])
    td = env.reset(td)
    assert sampler.masks[-1].tolist() == [True, False]
    assert td["goal"].tolist() == [4, 3]  # row 0: a new task; row 1: the same task, the same trial
    assert td["position"].tolist() == [0, 0] and (td["meta_step"].squeeze(-1) * 5).round().tolist() == [0, 3]
    td = env.step(always(1)(td))["next"]
    assert td["position"].tolist() == [1, 1] and td["reached_position"].tolist() == [1, 1]
    assert (td["meta_step"].squeeze(-1) * 5).round().tolist() == [1, 4]
    td = env.step(always(1)(td))["next"]
    assert td["done"].squeeze(-1).tolist() == [False, True]
    # row 1 restarted after reaching its goal 3 at step 3, so both rows are at 2, short of their goals 4 and 3
    assert td["reached_position"].tolist() == [2, 2] and not td["inner_done"].any()
    with pytest.raises(RuntimeError, match=r"rows \[1\] already took horizon=5"):
        env.step(always(1)(td))


def test_specs_rollout_and_errors():
    env = TrialEnv(ChainEnv((3,)), horizon=6, task_sampler=GoalSampler())
    check_env_specs(env)
    check_env_specs(env, break_when_any_done="both")
    with pytest.raises(RuntimeError, match="before reset"):
        TrialEnv(ChainEnv((1,)), horizon=3).step(TensorDict(action=torch.zeros(1, dtype=torch.long), batch_size=[1]))
    env.reset()
    bad = TensorDict(action=torch.tensor([0, 2, 1]), batch_size=[3])
    with pytest.raises(ValueError, match=r"action 'action' = \[0, 2, 1\] \(torch.int64, shape \(3,\)\) is not in the "
                                         r"env's action spec; allowed: Categorical\(n=2\) of shape \(3,\)"):
        env.step(bad)
    with pytest.raises(ValueError, match=r"action 'action' = None"):
        env.step(TensorDict(batch_size=[3]))
    with pytest.raises(ValueError, match="horizon=0 is out of range"):
        TrialEnv(ChainEnv(), horizon=0)
    with pytest.raises(TypeError, match="env must be a torchrl EnvBase"):
        TrialEnv("FrozenLake-v1", horizon=3)
    with pytest.raises(TypeError, match="task_sampler must be callable"):
        TrialEnv(ChainEnv(), horizon=3, task_sampler=3)
    with pytest.raises(KeyError, match="reached_keys holds 'cell'"):
        TrialEnv(ChainEnv(), horizon=3, reached_keys=["cell"])
    with pytest.raises(ValueError, match="already has the observations"):
        TrialEnv(TrialEnv(ChainEnv(), horizon=3), horizon=3)
    with pytest.raises(AttributeError, match="task_mdp"):
        TrialEnv(ChainEnv(), horizon=3).task_mdp()


@pytest.mark.parametrize("batched", ["serial", "parallel"])
def test_serial_and_parallel_envs_with_reset_data(batched):
    cls = SerialEnv if batched == "serial" else ParallelEnv
    inner = cls(2, ChainEnv, mp_start_method="fork") if batched == "parallel" else cls(2, ChainEnv)
    env = TrialEnv(inner, horizon=5, task_sampler=GoalSampler())
    try:
        check_env_specs(env)
        env.set_seed(0)
        rollout = env.rollout(5, always(1))
        first = rollout["goal"][0, 0].item()  # the goals are handed out in order, one per row
        assert rollout["goal"][:, 0].tolist() == [first, 2 + (first - 1) % 4]
        assert (rollout["goal"] == rollout["goal"][:, :1]).all()  # inner restarts keep the task
        goal = rollout["goal"][:, :1]
        reached = rollout["next", "reached_position"]
        assert torch.equal(rollout["next", "inner_terminated"].squeeze(-1), reached == goal)
        assert rollout["next", "done"][:, -1].all() and not rollout["next", "done"][:, :-1].any()
    finally:
        env.close()


def test_composes_with_meta_inputs_and_the_estimator():
    env = TransformedEnv(
        TrialEnv(ChainEnv((2,), goal=3), horizon=8),
        Compose(MetaRLInputs(), OnlineQEstimator(state_key="position", write_q_values=True, gamma=0.0), InitTracker()),
    )
    check_env_specs(env)
    rollout = env.rollout(8, always(1))
    assert env.transform[1]._config["next_state_key"] == "reached_position"
    assert env.transform[1]._config["terminal_key"] == "inner_terminated"
    # positions seen 1, 2, 0 (3 is the goal: restart), 1, 2, 0, 1, 2: N(s, 1) of each, counting the true
    # transitions 0 -> 1 -> 2 -> 3 (not 2 -> 0)
    counts = rollout["next", "q_features"][..., 3:] * 10
    assert counts[0, :, 1].tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert not counts[..., 0].any()
