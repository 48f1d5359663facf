"""The RL² per-step inputs: previous action (one-hot), previous reward and a first-step flag (optionally the previous
observation)."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Unbounded
from torchrl.envs import Transform
from torchrl.envs.transforms.utils import _get_reset

from rl3_torchrl.transforms._spec_utils import action_index, get_key, parent_action_size


class MetaRLInputs(Transform):
    """Add the RL² inputs of every step to the observation.

    After a step: ``prev_action`` is the one-hot of the action just taken (float ``[*B, A]``), ``prev_reward`` the
    reward just received (float ``[*B, 1]``) and ``first_step`` 0. After a reset: zeros, zeros and
    ``first_step = 1``, only in the rows being reset (``_reset`` mask); the other rows keep their values.
    ``A`` is read from the env's action spec, which must be discrete (``Categorical`` or ``OneHot``).

    With ``observation_key`` set it also writes ``prev_observation``: after a step the observation the action was
    taken on, after a reset zeros (same shape and dtype as the observation). A token then carries a whole transition
    (s, a, r, s′) instead of the paper's (a, r, s′), so that a model can pair a state with the reward it led to
    without a second attention step (ours, not the paper's; ``model.prev_observation`` of the recipes).

    Keyword Args:
        action_key, reward_key (NestedKey): where the action and the reward are read (``"action"``, ``"reward"``).
        observation_key (NestedKey, optional): the observation to repeat one step later (default: none).
        prev_action_key, prev_reward_key, first_step_key, prev_observation_key (NestedKey): the keys written
            (``"prev_action"``, ``"prev_reward"``, ``"first_step"``, ``"prev_observation"``).

    Examples:
        >>> from torchrl.envs import TransformedEnv
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> env = TransformedEnv(RandomMDPEnv(num_envs=2, horizon=4, seed=0), MetaRLInputs())
        >>> td = env.reset()
        >>> td["prev_action"].tolist(), td["first_step"].tolist()
        ([[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]], [[1.0], [1.0]])
        >>> td["action"] = torch.tensor([3, 1])
        >>> nxt = env.step(td)["next"]
        >>> nxt["prev_action"].argmax(-1).tolist(), nxt["first_step"].tolist()
        ([3, 1], [[0.0], [0.0]])
        >>> bool((nxt["prev_reward"] == nxt["reward"]).all())
        True
        >>> inputs = MetaRLInputs(observation_key="observation")
        >>> env = TransformedEnv(RandomMDPEnv(num_envs=2, horizon=4, seed=0), inputs)
        >>> td = env.reset()
        >>> td["action"] = torch.tensor([3, 1])
        >>> bool((env.step(td)["next", "prev_observation"] == td["observation"]).all())
        True
    """

    def __init__(
        self,
        *,
        action_key="action",
        reward_key="reward",
        observation_key=None,
        prev_action_key="prev_action",
        prev_reward_key="prev_reward",
        first_step_key="first_step",
        prev_observation_key="prev_observation",
    ):
        out_keys = [prev_action_key, prev_reward_key, first_step_key]
        if observation_key is not None:
            out_keys.append(prev_observation_key)
        super().__init__(in_keys=[], out_keys=out_keys)
        self.action_key, self.reward_key, self.observation_key = action_key, reward_key, observation_key
        self.prev_action_key, self.prev_reward_key, self.first_step_key, self.prev_observation_key = (
            prev_action_key,
            prev_reward_key,
            first_step_key,
            prev_observation_key,
        )

    def set_container(self, container) -> None:
        self._actions = None
        return super().set_container(container)

    def _action_size(self) -> tuple[int, bool]:
        """``(A, one_hot)`` from the env's action spec, read once."""
        if getattr(self, "_actions", None) is None:
            self._actions = parent_action_size(self, self.action_key, "MetaRLInputs")
        return self._actions

    @property
    def n_actions(self) -> int:
        """The number of actions, from the env's action spec."""
        return self._action_size()[0]

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        n_actions, one_hot = self._action_size()
        action = get_key(tensordict, self.action_key, "action_key", "MetaRLInputs")
        reward = get_key(next_tensordict, self.reward_key, "reward_key", "MetaRLInputs")
        if one_hot:
            prev_action = action.to(torch.float32)
        else:
            prev_action = torch.nn.functional.one_hot(action_index(action, False), n_actions).to(torch.float32)
        next_tensordict.set(self.prev_action_key, prev_action)
        next_tensordict.set(self.prev_reward_key, reward.to(torch.float32).reshape(*next_tensordict.shape, 1))
        next_tensordict.set(self.first_step_key, torch.zeros_like(prev_action[..., :1]))
        if self.observation_key is not None:
            observation = get_key(tensordict, self.observation_key, "observation_key", "MetaRLInputs")
            next_tensordict.set(self.prev_observation_key, observation.clone())
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        reset_key = self.parent.reset_keys[0] if self.parent is not None else "_reset"
        reset = _get_reset(reset_key, tensordict).reshape(*tensordict_reset.shape, 1)
        device = tensordict_reset.device or reset.device
        first = reset.to(device=device, dtype=torch.float32)
        tensordict_reset.set(self.prev_action_key, torch.zeros(*tensordict_reset.shape, self.n_actions, device=device))
        tensordict_reset.set(self.prev_reward_key, torch.zeros_like(first))
        tensordict_reset.set(self.first_step_key, first)
        if self.observation_key is not None:
            observation = get_key(tensordict_reset, self.observation_key, "observation_key", "MetaRLInputs")
            tensordict_reset.set(self.prev_observation_key, torch.zeros_like(observation))
        return tensordict_reset

    def transform_observation_spec(self, observation_spec):
        shape, device = observation_spec.shape, observation_spec.device
        observation_spec[self.prev_action_key] = Bounded(
            0.0, 1.0, shape=(*shape, self.n_actions), dtype=torch.float32, device=device
        )
        observation_spec[self.prev_reward_key] = Unbounded(shape=(*shape, 1), dtype=torch.float32, device=device)
        observation_spec[self.first_step_key] = Bounded(0.0, 1.0, shape=(*shape, 1), dtype=torch.float32, device=device)
        if self.observation_key is not None:
            if self.observation_key not in observation_spec.keys(True):
                raise ValueError(
                    f"MetaRLInputs: observation_key={self.observation_key!r} is not in the env's observation_spec; "
                    f"available: {sorted(map(str, observation_spec.keys(True, True)))}."
                )
            observation_spec[self.prev_observation_key] = observation_spec[self.observation_key].clone()
        return observation_spec

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        raise NotImplementedError(
            "MetaRLInputs is an env transform: it reads the action of step t and the reward of step t+1, so it only "
            "runs inside a TransformedEnv."
        )
