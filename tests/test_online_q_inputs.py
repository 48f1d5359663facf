"""OnlineQEstimator on any discrete env: state and action encodings, the terminal flag, settings, errors."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, OneHot, Unbounded
from torchrl.envs import EnvBase, TransformedEnv

from rl3_torchrl.envs import TrialEnv
from rl3_torchrl.transforms import OnlineQEstimator

S, A = 4, 3
ACTIONS = ("index", "int", "bool")


class CycleEnv(EnvBase):
    """An episodic env with every state encoding at once: ``state`` (index), ``one_hot`` (``OneHot`` spec of
    ``one_hot_dtype``) and ``xy`` (float coordinates). ``s' = (s + a + 1) mod S``, reward ``s'``; entering state
    ``S - 1`` terminates. Actions are indices or one-hot vectors (int or bool)."""

    def __init__(self, num_envs=2, action="index", one_hot_dtype=torch.float32):
        super().__init__(batch_size=torch.Size([num_envs]))
        batch = self.batch_size
        self.observation_spec = Composite(
            state=Categorical(S, shape=batch, dtype=torch.long),
            one_hot=OneHot(S, shape=(*batch, S), dtype=one_hot_dtype),
            xy=Unbounded(shape=(*batch, 2)),
            shape=batch,
        )
        if action == "index":
            self.action_spec = Categorical(A, shape=batch, dtype=torch.long)
        else:
            self.action_spec = OneHot(A, shape=(*batch, A), dtype=torch.bool if action == "bool" else torch.long)
        self.reward_spec = Unbounded(shape=(*batch, 1))
        self.one_hot_dtype, self.one_hot_action = one_hot_dtype, action != "index"
        self.state = torch.zeros(batch, dtype=torch.long)

    def _observe(self, **extra):
        one_hot = torch.nn.functional.one_hot(self.state, S).to(self.one_hot_dtype)
        xy = torch.stack([self.state // 2, self.state % 2], -1).float()
        return TensorDict(state=self.state.clone(), one_hot=one_hot, xy=xy, batch_size=self.batch_size, **extra)

    def _reset(self, tensordict):
        mask = torch.ones(self.batch_size, dtype=torch.bool)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict["_reset"].reshape(self.batch_size)
        self.state = torch.where(mask, 0, self.state)
        no = torch.zeros((*self.batch_size, 1), dtype=torch.bool)
        return self._observe(done=no, terminated=no.clone())

    def _step(self, tensordict):
        action = tensordict["action"]
        if self.one_hot_action:
            action = action.long().argmax(-1)
        self.state = (self.state + action + 1) % S
        terminated = (self.state == S - 1).unsqueeze(-1)
        return self._observe(reward=self.state.float().unsqueeze(-1), done=terminated, terminated=terminated.clone())

    def _set_seed(self, seed):
        pass


ACTION_SEQUENCE = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 0], [1, 2], [2, 2], [0, 1], [1, 0], [2, 1], [1, 1]])


def play(env, one_hot_action):
    """Features and Q values along a fixed action sequence (reset, then one step per row of ACTION_SEQUENCE)."""
    td = env.reset()
    features = [td["q_features"]]
    for actions in ACTION_SEQUENCE:
        td["action"] = torch.nn.functional.one_hot(actions, A).to(env.action_spec.dtype) if one_hot_action else actions
        td = env.step(td)["next"]
        features.append(td["q_features"])
    return torch.stack(features)


def trial(estimator, action="index", one_hot_dtype=torch.float32):
    return TransformedEnv(TrialEnv(CycleEnv(action=action, one_hot_dtype=one_hot_dtype), horizon=20), estimator)


@pytest.mark.parametrize("one_hot_dtype", [torch.float32, torch.int64, torch.bool])
@pytest.mark.parametrize("action", ACTIONS)
def test_one_hot_states_fn_states_and_one_hot_actions_give_the_index_features(action, one_hot_dtype):
    settings = dict(laplace=0.1, gamma=0.9, max_sweeps=50, tol=None, dtype=torch.float64)
    reference = play(trial(OnlineQEstimator(**settings)), False)
    assert reference[..., A + 1:].sum() > 0 and reference[..., :A].abs().sum() > 0  # the features are not trivial
    for estimator in (
        OnlineQEstimator(state_key="one_hot", **settings),
        OnlineQEstimator(state_key="xy", state_fn=lambda xy: (xy[:, 0] * 2 + xy[:, 1]).long(), n_states=S, **settings),
    ):
        env = trial(estimator, action, one_hot_dtype)
        assert torch.equal(play(env, action != "index"), reference)
    assert env.transform._config["next_state_key"] == "reached_xy"


def test_terminated_is_the_terminal_flag_without_inner_terminated():
    env = TransformedEnv(CycleEnv(), OnlineQEstimator(gamma=0.0, write_q_values=True))
    assert env.transform._configure(env.base_env.full_observation_spec)["terminal_key"] == "terminated"
    td = env.reset()
    td["action"] = torch.tensor([2, 1])  # row 0 enters the terminal state 3 (reward 3), row 1 enters 2 (reward 2)
    nxt = env.step(td)["next"]
    # the terminal state 3 is absorbing with value 0; state 2 is not terminal: Q(2, ·) = 0 there only as unseen
    assert env.transform.model.terminal[0, 3] and not env.transform.model.terminal[1, 2]
    assert nxt["q_values"][0].tolist() == [0.0] * A


def test_settings_after_a_reset_take_effect_at_the_next_reset_or_raise():
    settings = dict(laplace=0.1, max_sweeps=30, tol=None, dtype=torch.float64)
    env = trial(OnlineQEstimator(gamma=0.9, **settings))
    play(env, False)
    td = env.reset().set("action", torch.tensor([0, 1]))
    env.transform.gamma = 0.5
    with pytest.raises(RuntimeError, match=r"OnlineQEstimator.gamma changed after the reset.*env.reset\(\)"):
        env.step(td)
    partial = TensorDict(_reset=torch.tensor([[True], [False]]), batch_size=[2])
    with pytest.raises(RuntimeError, match="this reset is partial"):
        env.reset(partial)
    assert torch.equal(play(env, False), play(trial(OnlineQEstimator(gamma=0.5, **settings)), False))
    env.transform.max_sweeps = 1  # a value-iteration setting: effective at once, no reset needed
    assert env.transform.max_sweeps == 1
    with pytest.raises(ValueError, match=r"gamma=2.0 is out of range; allowed: \[0.0, 1.0\]"):
        env.transform.gamma = 2.0
    with pytest.raises(AttributeError, match="write_q_values is fixed at construction"):
        env.transform.write_q_values = True
    text = repr(env.transform)
    assert text.startswith("OnlineQEstimator(backup='dense', gamma=0.5, laplace=0.1, max_sweeps=1,")
    assert "state_key='state'" in text and "dtype=torch.float64" in text


def test_bad_states_are_clear_errors():
    with pytest.raises(ValueError, match=r"n_states=9 does not match the one-hot states of state_key='one_hot' "
                                         r"\(width 4\); allowed: n_states=None or 4"):
        trial(OnlineQEstimator(state_key="one_hot", n_states=9)).reset()
    with pytest.raises(TypeError, match=r"state_key='xy' has a UnboundedContinuous spec.*allowed: a Categorical.*"
                                        r"OneHot.*state_fn="):
        trial(OnlineQEstimator(state_key="xy")).reset()
    with pytest.raises(ValueError, match="state_fn= needs n_states="):
        OnlineQEstimator(state_key="xy", state_fn=lambda xy: xy[:, 0].long())
    with pytest.raises(TypeError, match="state_fn must be callable"):
        OnlineQEstimator(state_fn="argmax", n_states=4)
    with pytest.raises(ValueError, match=r"state_fn's output holds states of shape \(2, 2\); allowed: one integer "
                                         r"index per row, shape \(2,\)"):
        trial(OnlineQEstimator(state_key="xy", state_fn=lambda xy: xy.long(), n_states=S)).reset()
    with pytest.raises(TypeError, match=r"state_fn's output holds torch.float32 states; allowed: integer"):
        trial(OnlineQEstimator(state_key="xy", state_fn=lambda xy: xy[:, 0], n_states=S)).reset()
    env = trial(OnlineQEstimator(state_key="one_hot"))
    td = env.reset()
    td["action"] = torch.tensor([0, 0])
    td["one_hot"] = torch.ones(2, S)  # not one-hot: every entry is 1
    with pytest.raises(ValueError, match=r"not one-hot \(exactly one nonzero entry each\)"):
        env.transform._states(td, "one_hot", "state_key", env.transform._config)
    with pytest.raises(ValueError, match=r"holds torch.float32 states of shape \(2, 5\); allowed: one-hot states of "
                                         r"shape \(2, 4\)"):
        env.transform._states(td.set("one_hot", torch.zeros(2, S + 1)), "one_hot", "state_key", env.transform._config)
