"""Random tabular MDPs (Duan et al., 2016) and Bernoulli bandits as one batched TorchRL env."""
from __future__ import annotations

import torch

from rl3_torchrl._validation import check_choice, check_float, check_int
from rl3_torchrl.envs.meta_env import MetaTaskEnv

REWARD_DISTRIBUTIONS = ("gaussian", "bernoulli")
MEAN_DISTRIBUTIONS = ("normal", "uniform")
#: Rewards reach at most ``|reward_mean_loc| + REWARD_SIGMAS × (reward_mean_scale + reward_noise_std)`` in
#: practice (normal draws beyond 10σ have probability < 1e-23); this must fit float32.
REWARD_SIGMAS = 10


class RandomMDPEnv(MetaTaskEnv):
    """A batch of random tabular MDPs, one per row, as a TorchRL env.

    Each task draws, for every state-action pair, a transition row ``P(·|s, a) ~ Dirichlet(α·1)`` and a mean
    reward ``R(s, a)``: ``loc + scale·N(0, 1)`` (``"normal"``) or ``U(loc − scale, loc + scale)``
    (``"uniform"``), optionally clipped to ``reward_mean_clip``. The observed reward is ``R(s, a) +
    reward_noise_std·N(0, 1)`` (``"gaussian"``) or a Bernoulli draw of mean ``R(s, a)`` (``"bernoulli"``).
    Inner episodes start in ``start_state`` and last ``episode_length`` steps; a meta-episode lasts ``horizon``
    steps. The defaults are the paper's; :attr:`PRESETS` names the out-of-distribution shift and the bandits.

    Args:
        num_envs (int): the number of tasks held at once.

    Keyword Args:
        n_states (int): ``|S|``, default 10.
        n_actions (int): ``|A|``, default 5.
        horizon (int): ``H``, the meta-episode length, default 512.
        episode_length (int): the inner-episode length, default 10.
        dirichlet_alpha (float): ``α > 0`` of the transition rows, default 1.
        reward_mean_distribution (str): ``"normal"`` or ``"uniform"``.
        reward_mean_loc (float): the location of the mean rewards, default 1.
        reward_mean_scale (float): ``β ≥ 0``, their spread, default 1.
        reward_mean_clip (tuple or None): ``(low, high)`` bounds applied to the sampled means (part of the task
            distribution, e.g. ``(0, 1)`` for Bernoulli arms).
        reward_distribution (str): ``"gaussian"`` or ``"bernoulli"``.
        reward_noise_std (float): the observation noise of ``"gaussian"`` rewards, default 1.
        start_state (int): the state every inner episode starts in, default 0.
        split, seed, validate_actions, device: see :class:`~rl3_torchrl.envs.MetaTaskEnv`.

    Examples:
        >>> from torchrl.envs import TransformedEnv, InitTracker
        >>> env = TransformedEnv(RandomMDPEnv(num_envs=4, horizon=20, seed=0), InitTracker())
        >>> rollout = env.rollout(20)
        >>> rollout.batch_size
        torch.Size([4, 20])
        >>> bool(rollout["next", "done"][:, -1].all())
        True
        >>> bandit = RandomMDPEnv.from_preset("bandit", num_envs=4)
        >>> bandit.n_states, bandit.episode_length
        (1, 1)
    """

    PRESETS = {
        "default": {},
        "ood": {"dirichlet_alpha": 0.25},
        "bandit": {
            "n_states": 1,
            "n_actions": 5,
            "episode_length": 1,
            "horizon": 100,
            "reward_distribution": "bernoulli",
            "reward_mean_distribution": "uniform",
            "reward_mean_loc": 0.5,
            "reward_mean_scale": 0.5,
            "reward_mean_clip": (0.0, 1.0),
        },
        "bandit_ood": {
            "n_states": 1,
            "n_actions": 5,
            "episode_length": 1,
            "horizon": 100,
            "reward_distribution": "bernoulli",
            "reward_mean_distribution": "normal",
            "reward_mean_loc": 0.5,
            "reward_mean_scale": 0.5,
            "reward_mean_clip": (0.0, 1.0),
        },
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        n_states: int = 10,
        n_actions: int = 5,
        horizon: int = 512,
        episode_length: int = 10,
        dirichlet_alpha: float = 1.0,
        reward_mean_distribution: str = "normal",
        reward_mean_loc: float = 1.0,
        reward_mean_scale: float = 1.0,
        reward_mean_clip: tuple[float, float] | None = None,
        reward_distribution: str = "gaussian",
        reward_noise_std: float = 1.0,
        start_state: int = 0,
        split: str = "train",
        seed: int = 0,
        validate_actions: bool | None = None,
        device=None,
    ):
        self.dirichlet_alpha = check_float("dirichlet_alpha", dirichlet_alpha, low=0.0, low_inclusive=False)
        self.reward_mean_distribution = check_choice(
            "reward_mean_distribution", reward_mean_distribution, MEAN_DISTRIBUTIONS
        )
        self.reward_mean_loc = check_float("reward_mean_loc", reward_mean_loc)
        self.reward_mean_scale = check_float("reward_mean_scale", reward_mean_scale, low=0.0)
        self.reward_distribution = check_choice("reward_distribution", reward_distribution, REWARD_DISTRIBUTIONS)
        self.reward_noise_std = check_float("reward_noise_std", reward_noise_std, low=0.0)
        self.reward_mean_clip = _check_clip(reward_mean_clip, self.reward_distribution)
        reach = abs(self.reward_mean_loc) + REWARD_SIGMAS * (self.reward_mean_scale + self.reward_noise_std)
        if reach > torch.finfo(torch.float32).max:
            raise ValueError(
                f"reward_mean_loc={reward_mean_loc!r}, reward_mean_scale={reward_mean_scale!r} and "
                f"reward_noise_std={reward_noise_std!r} overflow float32 rewards: |loc| + {REWARD_SIGMAS} × "
                f"(scale + noise_std) must be at most {torch.finfo(torch.float32).max:.3g}."
            )
        n_states = check_int("n_states", n_states, low=1)
        self._start = check_int("start_state", start_state, low=0, high=n_states - 1)
        super().__init__(
            num_envs,
            n_states,
            n_actions,
            horizon,
            check_int("episode_length", episode_length, low=1),
            observation_dim=n_states,
            split=split,
            seed=seed,
            validate_actions=validate_actions,
            device=device,
        )
        S, A = self.n_states, self.n_actions
        self.register_buffer("_transition", torch.zeros(*self.batch_size, S, A, S, device=self.device))
        self.register_buffer("_transition_cdf", torch.zeros(*self.batch_size, S * A, S, device=self.device))
        self.register_buffer("_mean_reward", torch.zeros(*self.batch_size, S * A, device=self.device))
        self._start_state.fill_(self._start)

    def _sample_tasks(self, mask: torch.Tensor) -> None:
        B, S, A = self.batch_size[0], self.n_states, self.n_actions
        rng = self._task_rng
        alpha = torch.full((B, S, A, S), self.dirichlet_alpha, dtype=torch.float64, device=self.device)
        gamma = torch._standard_gamma(alpha, generator=rng)  # Dirichlet = normalised Gamma(α, 1) draws
        transition = (gamma / gamma.sum(-1, keepdim=True)).to(torch.float32)
        noise = torch.randn(B, S * A, generator=rng, device=self.device)
        if self.reward_mean_distribution == "uniform":
            noise = torch.rand(B, S * A, generator=rng, device=self.device) * 2 - 1
        mean = self.reward_mean_loc + self.reward_mean_scale * noise
        if self.reward_mean_clip is not None:
            mean = mean.clamp(*self.reward_mean_clip)
        cdf = transition.reshape(B, S * A, S).cumsum(-1)
        cdf = cdf / cdf[..., -1:]  # the last entry is exactly 1, so a uniform draw in [0, 1) always lands
        rows = mask.view(B, 1, 1, 1)
        self._transition = torch.where(rows, transition, self._transition)
        self._transition_cdf = torch.where(mask.view(B, 1, 1), cdf, self._transition_cdf)
        self._mean_reward = torch.where(mask.view(B, 1), mean, self._mean_reward)

    def _advance(self, state, action):
        B, S = self.batch_size[0], self.n_states
        pair = (state * self.n_actions + action).view(B, 1)
        cdf = self._transition_cdf.gather(1, pair.unsqueeze(-1).expand(B, 1, S)).squeeze(1)
        draw = torch.rand(B, 1, generator=self._dynamics_rng, device=self.device)
        next_state = (cdf < draw).sum(-1)
        mean = self._mean_reward.gather(1, pair).squeeze(1)
        if self.reward_distribution == "bernoulli":
            reward = (torch.rand(B, generator=self._dynamics_rng, device=self.device) < mean).to(mean.dtype)
        else:
            reward = mean + self.reward_noise_std * torch.randn(B, generator=self._dynamics_rng, device=self.device)
        return next_state, reward, torch.zeros_like(next_state, dtype=torch.bool)

    def _observe(self, state):
        return torch.nn.functional.one_hot(state, self.n_states).to(torch.float32)

    def _task_tensors(self) -> dict:
        B, S, A = self.batch_size[0], self.n_states, self.n_actions
        return {
            "transition": self._transition.clone(),
            "reward": self._mean_reward.view(B, S, A).clone(),
            "terminal": torch.zeros(B, S, dtype=torch.bool, device=self.device),
        }


def _check_clip(clip, reward_distribution):
    if clip is None:
        if reward_distribution == "bernoulli":
            raise ValueError(
                "reward_mean_clip=None is not allowed with reward_distribution='bernoulli': Bernoulli means "
                "must lie in [0, 1]; pass reward_mean_clip=(0.0, 1.0) or a narrower range."
            )
        return None
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise ValueError(f"reward_mean_clip must be None or a (low, high) pair, got {clip!r}.")
    low = check_float("reward_mean_clip[0]", clip[0])
    high = check_float("reward_mean_clip[1]", clip[1], low=low)
    if reward_distribution == "bernoulli" and (low < 0 or high > 1):
        raise ValueError(
            f"reward_mean_clip={tuple(clip)!r} must lie within [0, 1] with reward_distribution='bernoulli'."
        )
    return (low, high)
