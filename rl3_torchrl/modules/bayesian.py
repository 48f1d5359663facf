"""Classical model-based baselines of Duan et al. (2016): a batched posterior over the task family and planners.

The agents know the *prior* of the task family (never the task): a Dirichlet(α·1) over every transition row and,
per state-action pair, a conjugate prior over the mean reward. :class:`TaskPrior` reads it from a
:class:`~rl3_torchrl.envs.RandomMDPEnv`; :class:`PosteriorModel` keeps the counts of a batch of tasks (one per row)
and gives posterior means and samples; a *planner* turns the posterior into finite-horizon action values for the
rest of the inner episode; :class:`ModelBasedPolicy` replans at every inner-episode start and acts greedily (or
ε-greedily) on them. Planning is backward induction with :class:`~rl3_torchrl.transforms.DenseBackup` at γ = 1
(``Q_h = R + P·max_a Q_{h−1}``), with the number of steps to go ``h = min(T − τ, H − t)``.

Planners (each a small callable; hyper-parameters are checked when it is built):

- :class:`PosteriorMeanPlanner`: certainty equivalence on the posterior mean (``greedy``, ``eps_greedy``); with
  ``beta=β`` it adds ``β / (1 + N(s, a))`` to the rewards: BEB (Kolter & Ng, 2009).
- :class:`PosteriorSamplingPlanner`: one posterior sample (PSRL, Strens 2000 / Osband et al. 2013) or, with
  ``num_samples=K > 1``, optimistic PSRL: every backup takes, per ``(s, a)``, the best of ``K`` samples.
- :class:`UCRL2Planner`: extended value iteration (Jaksch et al., 2010) over an L1 ball around the posterior-mean
  transitions and an interval around the mean reward, with Jaksch et al.'s radii times ``scale``.

Reward models. Gaussian rewards (random MDPs): mean ``R ~ N(loc, scale²)`` (a ``"uniform"`` mean distribution is
moment-matched, ``scale²/3``; a clip of the means is ignored), observation ``R + N(0, σ²)``: the Normal–Normal
posterior. Bernoulli rewards (bandits): a Beta(1, 1) prior, exact for the ``bandit`` preset (``p ~ U(0, 1)``) and a
documented approximation for ``bandit_ood`` (clipped normal means). Gridworlds are not supported (their task
distribution is a procedural generator, not a conjugate prior): :meth:`TaskPrior.from_env` raises.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from rl3_torchrl._validation import check_choice, check_float, check_int
from rl3_torchrl.transforms.value_iteration import DenseBackup

REWARD_MODELS = ("gaussian", "bernoulli")
ESTIMATES = ("posterior", "empirical")


@dataclass(frozen=True)
class TaskPrior:
    """The prior of a tabular task family: transitions ~ Dirichlet(α·1), a conjugate prior on mean rewards.

    Args:
        n_states, n_actions (int): ``|S|`` and ``|A|``.
        dirichlet_alpha (float): ``α > 0``.
        reward_model (str): ``"gaussian"`` (Normal–Normal) or ``"bernoulli"`` (Beta–Bernoulli).
        reward_loc, reward_scale (float): gaussian: the prior mean and standard deviation of ``R(s, a)``;
            bernoulli: ignored.
        reward_noise_std (float): gaussian: ``σ`` of the observed reward around ``R(s, a)``.
        beta_prior (tuple): bernoulli: ``(a, b)`` of the Beta prior (default ``(1, 1)``, uniform).

    Examples:
        >>> from rl3_torchrl.envs import RandomMDPEnv
        >>> prior = TaskPrior.from_env(RandomMDPEnv.from_preset("ood"))
        >>> prior.dirichlet_alpha, prior.reward_loc, prior.reward_scale, prior.reward_noise_std
        (0.25, 1.0, 1.0, 1.0)
    """

    n_states: int
    n_actions: int
    dirichlet_alpha: float = 1.0
    reward_model: str = "gaussian"
    reward_loc: float = 1.0
    reward_scale: float = 1.0
    reward_noise_std: float = 1.0
    beta_prior: tuple = (1.0, 1.0)

    def __post_init__(self):
        check_int("n_states", self.n_states, low=1)
        check_int("n_actions", self.n_actions, low=1)
        check_float("dirichlet_alpha", self.dirichlet_alpha, low=0.0, low_inclusive=False)
        check_choice("reward_model", self.reward_model, REWARD_MODELS)
        check_float("reward_scale", self.reward_scale, low=0.0)
        check_float("reward_noise_std", self.reward_noise_std, low=0.0)
        for name, value in zip(("beta_prior[0]", "beta_prior[1]"), self.beta_prior):
            check_float(name, value, low=0.0, low_inclusive=False)

    @classmethod
    def from_env(cls, env) -> "TaskPrior":
        """The prior of an env's task distribution (a :class:`~rl3_torchrl.envs.RandomMDPEnv`, wrapped or not)."""
        base = getattr(env, "base_env", env)
        if not hasattr(base, "dirichlet_alpha"):
            raise ValueError(
                f"the model-based baselines need a random-MDP or bandit task (a Dirichlet/conjugate prior); got "
                f"env={type(base).__name__}. Allowed: RandomMDPEnv tasks (random_mdp*, bandit*)."
            )
        if base.episode_length is None:
            raise ValueError("the model-based baselines plan to the end of the inner episode: episode_length=None.")
        if base.reward_distribution == "bernoulli":
            return cls(base.n_states, base.n_actions, base.dirichlet_alpha, "bernoulli")
        variance = base.reward_mean_scale**2 / (3.0 if base.reward_mean_distribution == "uniform" else 1.0)
        return cls(
            base.n_states,
            base.n_actions,
            base.dirichlet_alpha,
            "gaussian",
            base.reward_mean_loc,
            math.sqrt(variance),
            base.reward_noise_std,
        )

    @property
    def reward_range(self) -> float:
        """The scale of one reward observation (``σ``, or 1 for Bernoulli rewards) used by confidence radii."""
        return self.reward_noise_std if self.reward_model == "gaussian" else 1.0


class PosteriorModel:
    """Counts and the conjugate posterior of a batch of tabular tasks under a :class:`TaskPrior`.

    Holds ``N(s, a, s')``, ``N(s, a)`` and the reward sums per row, float64. The posterior of a row is
    ``P(·|s, a) ~ Dirichlet(α + N(s, a, ·))`` and, for the mean reward, ``N(m, v)`` with
    ``m = (loc·σ² + scale²·Σr) / (σ² + n·scale²)``, ``v = scale²·σ² / (σ² + n·scale²)`` (gaussian) or
    ``Beta(a + Σr, b + n − Σr)`` (bernoulli).

    Args:
        prior (TaskPrior): the prior.
        batch_size (int): the number of tasks.

    Keyword Args:
        device: where the counts live.

    Examples:
        >>> model = PosteriorModel(TaskPrior(2, 1), 1)
        >>> model.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([3.0]), torch.tensor([1]))
        >>> transition, reward = model.mean()
        >>> transition[0, 0, 0].tolist(), reward[0, 0, 0].item()   # Dirichlet(1 + [0, 1]); (1 + 3) / (1 + 1)
        ([0.3333333333333333, 0.6666666666666666], 2.0)
    """

    def __init__(self, prior: TaskPrior, batch_size: int, *, device=None):
        self.prior = prior
        B, S, A = check_int("batch_size", batch_size, low=1), prior.n_states, prior.n_actions
        kw = dict(dtype=torch.float64, device=device)
        self.transition_counts = torch.zeros(B, S, A, S, **kw)
        self.counts = torch.zeros(B, S, A, **kw)
        self.reward_sums = torch.zeros(B, S, A, **kw)

    def reset(self, mask: torch.Tensor) -> None:
        """Forget the observations of the rows where ``mask`` (bool ``[B]``) is True (new tasks)."""
        keep = (~mask).to(self.counts.dtype)
        self.transition_counts *= keep.view(-1, 1, 1, 1)
        self.counts *= keep.view(-1, 1, 1)
        self.reward_sums *= keep.view(-1, 1, 1)

    def update(self, state, action, reward, next_state, mask: torch.Tensor | None = None) -> None:
        """Record one transition ``(s, a, r, s')`` per row (int64 / float ``[B]``), in the rows where ``mask``."""
        B, S, A = self.counts.shape
        weight = torch.ones(B, dtype=self.counts.dtype, device=self.counts.device)
        if mask is not None:
            weight = mask.to(weight.dtype)
        rows = torch.arange(B, device=self.counts.device)
        pair = (rows * S + state) * A + action
        self.counts.view(-1).index_add_(0, pair, weight)
        self.reward_sums.view(-1).index_add_(0, pair, weight * reward.to(weight.dtype))
        self.transition_counts.view(-1).index_add_(0, pair * S + next_state, weight)

    def transition_posterior(self) -> torch.Tensor:
        """The Dirichlet parameters ``α + N(s, a, ·)``, ``[B, S, A, S]``."""
        return self.transition_counts + self.prior.dirichlet_alpha

    def reward_posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gaussian: the posterior mean and variance of ``R(s, a)``; bernoulli: the Beta parameters ``(a, b)``."""
        p = self.prior
        if p.reward_model == "bernoulli":
            return p.beta_prior[0] + self.reward_sums, p.beta_prior[1] + self.counts - self.reward_sums
        prior_var, noise_var = p.reward_scale**2, p.reward_noise_std**2
        denominator = (noise_var + self.counts * prior_var).clamp_min(1e-300)
        mean = (p.reward_loc * noise_var + prior_var * self.reward_sums) / denominator
        return mean, prior_var * noise_var / denominator

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior-mean model: ``(P [B, S, A, S], R [B, S, A])``; unseen pairs get the prior mean."""
        alpha = self.transition_posterior()
        first, second = self.reward_posterior()
        reward = first / (first + second) if self.prior.reward_model == "bernoulli" else first
        return alpha / alpha.sum(-1, keepdim=True), reward

    def empirical(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The maximum-likelihood model of the seen pairs, the prior mean for unseen ones: ``(P, R)``."""
        transition, reward = self.mean()
        seen = self.counts > 0
        n = self.counts.clamp_min(1.0)
        transition = torch.where(seen.unsqueeze(-1), self.transition_counts / n.unsqueeze(-1), transition)
        return transition, torch.where(seen, self.reward_sums / n, reward)

    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None):
        """Draw tasks from the posterior: ``(P [K, B, S, A, S], R [K, B, S, A])`` with ``K = num_samples``."""
        K = check_int("num_samples", num_samples, low=1)
        alpha = self.transition_posterior().expand(K, *self.transition_counts.shape)
        gamma = torch._standard_gamma(alpha.contiguous(), generator=generator)  # Dirichlet = normalised Gamma
        transition = gamma / gamma.sum(-1, keepdim=True).clamp_min(1e-300)
        first, second = (x.expand(K, *x.shape).contiguous() for x in self.reward_posterior())
        if self.prior.reward_model == "bernoulli":
            a, b = torch._standard_gamma(first, generator=generator), torch._standard_gamma(second, generator=generator)
            reward = a / (a + b).clamp_min(1e-300)
        else:
            reward = first + second.sqrt() * torch.randn(first.shape, generator=generator, dtype=first.dtype,
                                                         device=first.device)
        return transition, reward


def finite_horizon_q(backup, steps: int, q0: torch.Tensor) -> torch.Tensor:
    """Backward induction: ``Q_h = backup(Q_{h−1})`` from ``Q_0 = q0`` (zeros); returns ``[steps, B, S, A]``.

    ``backup`` maps ``Q [B, S, A]`` to ``R + P·max_a Q`` (a :class:`~rl3_torchrl.transforms.DenseBackup` with
    γ = 1, or an optimistic variant); entry ``h − 1`` holds the values with ``h`` steps to go.

    Examples:
        >>> P = torch.ones(1, 1, 1, 1)                       # one state, one action, reward 2
        >>> finite_horizon_q(DenseBackup.from_tabular(P, torch.full((1, 1, 1), 2.0)), 3, torch.zeros(1, 1, 1)).flatten()
        tensor([2., 4., 6.])
    """
    out, q = [], q0
    for _ in range(check_int("steps", steps, low=1)):
        q = backup(q)
        out.append(q)
    return torch.stack(out)


class PosteriorMeanPlanner:
    """Plan on the posterior-mean model, optionally with the BEB bonus ``beta / (1 + N(s, a))``.

    Args:
        beta (float): ``β ≥ 0`` of BEB (0: certainty equivalence, i.e. ``greedy``).
        estimate (str): ``"posterior"`` (the posterior mean) or ``"empirical"`` (the maximum-likelihood model of
            the seen pairs, the prior mean for unseen ones).

    Examples:
        >>> model = PosteriorModel(TaskPrior(2, 3), 1)
        >>> q = PosteriorMeanPlanner(beta=1.0)(model, 2)
        >>> q.shape, q[0, 0, 0, 0].item()              # prior mean reward 1, plus β / (1 + 0)
        (torch.Size([2, 1, 2, 3]), 2.0)
    """

    def __init__(self, beta: float = 0.0, estimate: str = "posterior"):
        self.beta = check_float("beta", beta, low=0.0)
        self.estimate = check_choice("estimate", estimate, ESTIMATES)

    def __call__(self, model: PosteriorModel, steps: int, meta_step=None, generator=None) -> torch.Tensor:
        transition, reward = model.mean() if self.estimate == "posterior" else model.empirical()
        if self.beta:
            reward = reward + self.beta / (1.0 + model.counts)
        return finite_horizon_q(DenseBackup.from_tabular(transition, reward), steps, torch.zeros_like(reward))


class PosteriorSamplingPlanner:
    """Plan on posterior samples: PSRL with one sample; optimistic PSRL with ``num_samples = K > 1`` (every
    backup takes, for each ``(s, a)``, the largest ``R_k + P_k·V`` over the ``K`` samples).

    Args:
        num_samples (int): ``K ≥ 1``.

    Examples:
        >>> model = PosteriorModel(TaskPrior(3, 2), 4)
        >>> PosteriorSamplingPlanner(num_samples=5)(model, 10, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([10, 4, 3, 2])
    """

    def __init__(self, num_samples: int = 1):
        self.num_samples = check_int("num_samples", num_samples, low=1)

    def __call__(self, model: PosteriorModel, steps: int, meta_step=None, generator=None) -> torch.Tensor:
        K = self.num_samples
        transition, reward = model.sample(K, generator)
        B, S, A = reward.shape[1:]
        flat = DenseBackup.from_tabular(transition.transpose(0, 1).reshape(B * K, S, A, S),
                                        reward.transpose(0, 1).reshape(B * K, S, A))

        def backup(q):
            return flat(q.unsqueeze(1).expand(B, K, S, A).reshape(B * K, S, A)).view(B, K, S, A).amax(1)

        return finite_horizon_q(backup, steps, torch.zeros_like(reward[0]))


def optimistic_transition_values(transition: torch.Tensor, radius: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``max_p p·V`` over the distributions ``p`` with ``‖p − P(·|s, a)‖₁ ≤ radius(s, a)`` (Jaksch et al., 2010).

    Moves ``radius / 2`` of mass (at most what the others hold) onto the best state and takes it from the worst
    states first.

    Args:
        transition (Tensor): ``[B, S, A, S]``.
        radius (Tensor): ``[B, S, A]``, ``≥ 0``.
        value (Tensor): ``V [B, S]``.

    Returns:
        ``[B, S, A]``.

    Examples:
        >>> P = torch.tensor([[[[0.5, 0.3, 0.2]]]])
        >>> optimistic_transition_values(P, torch.tensor([[[0.4]]]), torch.tensor([[0.0, 1.0, 2.0]]))
        tensor([[[1.1000]]])
    """
    B, S, A, N = transition.shape
    order = value.argsort(-1, descending=True)  # best first
    sorted_value = value.gather(-1, order)
    p = transition.gather(-1, order.view(B, 1, 1, N).expand(B, S, A, N))
    best = (p[..., :1] + radius.unsqueeze(-1) / 2).clamp_max(1.0)
    excess = best - p[..., :1]
    rest = p[..., 1:]
    # mass held by the states worse than each one: remove from the worst first
    worse = rest.flip(-1).cumsum(-1).flip(-1) - rest
    removed = (excess - worse).clamp(min=0).minimum(rest)
    p = torch.cat([best, rest - removed], -1)
    return (p * sorted_value.view(B, 1, 1, N)).sum(-1)


class UCRL2Planner:
    """Extended value iteration of UCRL2 on the posterior-mean model, finite-horizon per inner episode.

    Confidence radii (Jaksch et al., 2010), ``n = max(1, N(s, a))``, ``t`` the steps taken so far in the task:
    transitions ``‖p − P̂‖₁ ≤ scale·sqrt(14·S·log(2·A·t/δ) / n)``, rewards
    ``|r − R̂| ≤ scale·ρ·sqrt(7·log(2·S·A·t/δ) / (2n))`` with ``ρ`` the prior's reward range (σ, or 1 for
    Bernoulli rewards). ``scale = 1`` is the paper's; smaller values trade the worst-case guarantee for return.

    Args:
        delta (float): ``δ ∈ (0, 1)``.
        scale (float): ``> 0``, multiplies both radii.

    Examples:
        >>> model = PosteriorModel(TaskPrior(3, 2), 2)
        >>> UCRL2Planner(delta=0.1, scale=0.1)(model, 4, meta_step=torch.zeros(2)).shape
        torch.Size([4, 2, 3, 2])
    """

    def __init__(self, delta: float = 0.1, scale: float = 1.0):
        self.delta = check_float("delta", delta)
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta={delta!r} is out of range; allowed: (0, 1).")
        self.scale = check_float("scale", scale, low=0.0, low_inclusive=False)

    def radii(self, model: PosteriorModel, meta_step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The L1 transition radius and the reward radius of every ``(s, a)``: two ``[B, S, A]``."""
        S, A = model.prior.n_states, model.prior.n_actions
        t = (meta_step.to(model.counts.dtype) + 1).view(-1, 1, 1)
        n = model.counts.clamp_min(1.0)
        transition = self.scale * (14 * S * torch.log(2 * A * t / self.delta) / n).sqrt()
        reward = self.scale * model.prior.reward_range * (7 * torch.log(2 * S * A * t / self.delta) / (2 * n)).sqrt()
        return transition, reward

    def __call__(self, model: PosteriorModel, steps: int, meta_step=None, generator=None) -> torch.Tensor:
        transition, reward = model.mean()
        if meta_step is None:
            meta_step = torch.zeros(reward.shape[0], device=reward.device)
        transition_radius, reward_radius = self.radii(model, meta_step)
        reward = reward + reward_radius

        def backup(q):
            return reward + optimistic_transition_values(transition, transition_radius, q.amax(-1))

        return finite_horizon_q(backup, steps, torch.zeros_like(reward))


class ModelBasedPolicy(TensorDictModuleBase):
    """A Bayesian/optimistic tabular agent: posterior updates every step, a plan per inner episode.

    At each call it records the previous transition (its own last state and action, ``prev_reward`` and
    ``reached_state`` of the tensordict), forgets the rows where ``is_init`` (new tasks), replans the rows at an
    inner-episode start (``episode_step == 0``) with ``planner`` for the whole inner episode, and plays the action
    maximising the plan's ``Q`` with ``min(T − τ, H − t)`` steps to go (ties at random; with probability
    ``epsilon`` a uniform action). It reads the keys of a ``"rl2"`` meta env (:func:`~rl3_torchrl.tasks.make_meta_env`).

    Args:
        planner (callable): ``(model, steps, meta_step, generator) -> Q [steps, B, S, A]``, e.g.
            :class:`PosteriorSamplingPlanner`.
        prior (TaskPrior): the task family's prior.
        horizon (int): ``H``.
        episode_length (int): ``T``.

    Keyword Args:
        epsilon (float): the probability of a uniform action, in ``[0, 1]``.
        seed (int, optional): seeds a private generator (posterior samples, ties, ε).

    Examples:
        >>> from rl3_torchrl.tasks import make_meta_env
        >>> env = make_meta_env("random_mdp", "rl2", 3, horizon=20)
        >>> policy = ModelBasedPolicy.from_env(env, PosteriorSamplingPlanner(), seed=0)
        >>> env.rollout(20, policy, break_when_any_done=False)["action"].shape
        torch.Size([3, 20])
        >>> int(policy.model.counts.sum())  # 19 transitions per task seen (the 20th comes with the next call)
        57
    """

    def __init__(self, planner, prior: TaskPrior, horizon: int, episode_length: int, *, epsilon: float = 0.0,
                 seed: int | None = None):
        super().__init__()
        self.planner, self.prior = planner, prior
        self.horizon = check_int("horizon", horizon, low=1)
        self.episode_length = check_int("episode_length", episode_length, low=1)
        self.epsilon = check_float("epsilon", epsilon, low=0.0, high=1.0)
        self.seed = seed
        self.in_keys = ["state", "reached_state", "prev_reward", "is_init", "meta_step", "episode_step"]
        self.out_keys = ["action"]
        self.model = None
        self._rng = None
        self._plan = self._last_state = self._last_action = None

    @classmethod
    def from_env(cls, env, planner, **kwargs) -> "ModelBasedPolicy":
        """The agent for an env's task family (its prior, ``H`` and ``T``)."""
        base = getattr(env, "base_env", env)
        prior = TaskPrior.from_env(base)
        return cls(planner, prior, base.horizon, base.episode_length, **kwargs)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        state = tensordict.get("state")
        B, device = state.shape[0], state.device
        if self.model is None:
            self.model = PosteriorModel(self.prior, B, device=device)
            if self.seed is not None:
                self._rng = torch.Generator(device=device).manual_seed(self.seed)
            self._plan = torch.zeros(self.episode_length, B, self.prior.n_states, self.prior.n_actions,
                                     dtype=torch.float64, device=device)
        init = tensordict.get("is_init").view(B)
        if self._last_state is not None:
            reward = tensordict.get("prev_reward").view(B)
            self.model.update(self._last_state, self._last_action, reward, tensordict.get("reached_state"), ~init)
        self.model.reset(init)
        t = (tensordict.get("meta_step").view(B) * self.horizon).round().long()
        tau = (tensordict.get("episode_step").view(B) * self.episode_length).round().long()
        start = tau == 0
        if bool(start.any()):
            plan = self.planner(self.model, self.episode_length, t, self._rng)
            self._plan = torch.where(start.view(1, B, 1, 1), plan, self._plan)
        to_go = torch.minimum(self.episode_length - tau, self.horizon - t).clamp(1, self.episode_length)
        rows = torch.arange(B, device=device)
        q = self._plan[to_go - 1, rows, state]
        noise = torch.rand(q.shape, generator=self._rng, device=device)
        greedy = torch.where(q == q.amax(-1, keepdim=True), noise, -1.0).argmax(-1)
        explore = torch.rand(B, generator=self._rng, device=device) < self.epsilon
        uniform = torch.randint(q.shape[-1], (B,), generator=self._rng, device=device)
        action = torch.where(explore, uniform, greedy)
        self._last_state, self._last_action = state, action
        tensordict.set("action", action)
        return tensordict
