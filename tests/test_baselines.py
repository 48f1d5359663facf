"""The classical baselines against independent oracles: posteriors by hand and in closed form, sample moments,
extended value iteration against a linear program, finite-horizon plans against the exact oracle, and bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl3_torchrl.envs import RandomMDPEnv, finite_horizon_values
from rl3_torchrl.evaluation import BASELINE_REGISTRY, BASELINES, baseline_policy, evaluate_baseline
from rl3_torchrl.modules.bayesian import (
    ModelBasedPolicy,
    PosteriorMeanPlanner,
    PosteriorModel,
    PosteriorSamplingPlanner,
    TaskPrior,
    UCRL2Planner,
    optimistic_transition_values,
)
from rl3_torchrl.tasks import make_meta_env

NEW = ("psrl", "opsrl", "ucrl2", "beb", "eps_greedy", "greedy")

# (row, s, a, r, s') observed in that order, in two tasks of a 3-state, 2-action family
SEQUENCE = [(0, 0, 1, 2.0, 2), (1, 2, 0, -1.0, 0), (0, 0, 1, 0.5, 2), (0, 2, 1, 1.5, 1), (0, 0, 1, 3.0, 0)]


def _feed(model, sequence):
    B = model.counts.shape[0]
    for row, s, a, r, s2 in sequence:
        mask = torch.arange(B) == row
        full = lambda v: torch.full((B,), v)  # noqa: E731
        model.update(full(s), full(a), full(r).double(), full(s2), mask)


def test_posterior_update_matches_a_sequential_bayes_update_by_hand():
    prior = TaskPrior(3, 2, dirichlet_alpha=0.5, reward_loc=1.0, reward_scale=2.0, reward_noise_std=0.5)
    model = PosteriorModel(prior, 2)
    _feed(model, SEQUENCE)
    transition, reward = model.mean()
    _, variance = model.reward_posterior()
    for row in range(2):
        for s in range(3):
            for a in range(2):
                seen = [(r, s2) for b, s_, a_, r, s2 in SEQUENCE if (b, s_, a_) == (row, s, a)]
                # one observation at a time: precision-weighted mean of prior and observation
                mean, var = 1.0, 4.0
                for r, _ in seen:
                    gain = var / (var + 0.25)
                    mean, var = mean + gain * (r - mean), var * (1 - gain)
                assert reward[row, s, a].item() == pytest.approx(mean, rel=1e-12)
                assert variance[row, s, a].item() == pytest.approx(var, rel=1e-12)
                counts = [sum(1 for _, s2 in seen if s2 == j) for j in range(3)]
                expected = [(c + 0.5) / (len(seen) + 1.5) for c in counts]
                assert transition[row, s, a].tolist() == pytest.approx(expected, rel=1e-12)
    assert model.counts.sum() == len(SEQUENCE)
    model.reset(torch.tensor([True, False]))
    assert model.counts[0].sum() == 0 and model.counts[1].sum() == 1


def test_bernoulli_posterior_is_a_beta_with_closed_form_mean():
    model = PosteriorModel(TaskPrior(1, 3, reward_model="bernoulli"), 1)
    rewards = [1.0, 0.0, 1.0, 1.0]
    _feed(model, [(0, 0, 2, r, 0) for r in rewards])
    a, b = model.reward_posterior()
    assert (a[0, 0, 2].item(), b[0, 0, 2].item()) == (4.0, 2.0)
    assert model.mean()[1][0, 0].tolist() == pytest.approx([0.5, 0.5, 4 / 6])


def test_prior_is_read_from_the_env():
    assert TaskPrior.from_env(RandomMDPEnv.from_preset("ood")).dirichlet_alpha == 0.25
    bandit = TaskPrior.from_env(make_meta_env("bandit", "rl2", 1))
    assert (bandit.reward_model, bandit.n_states, bandit.beta_prior) == ("bernoulli", 1, (1.0, 1.0))
    uniform = TaskPrior.from_env(RandomMDPEnv(reward_mean_distribution="uniform", reward_mean_scale=3.0))
    assert uniform.reward_scale == pytest.approx(math.sqrt(3.0))  # moment-matched: 3² / 3
    with pytest.raises(ValueError, match="GridworldEnv"):
        TaskPrior.from_env(make_meta_env("gridworld_11x11", "rl2", 1))


def test_posterior_samples_have_the_posterior_moments():
    prior = TaskPrior(3, 1, dirichlet_alpha=1.0, reward_loc=0.0, reward_scale=1.0, reward_noise_std=1.0)
    model = PosteriorModel(prior, 1)
    _feed(model, [(0, 0, 0, 2.0, 1), (0, 0, 0, 1.0, 1), (0, 0, 0, 0.0, 2)])
    transition, reward = model.sample(40000, torch.Generator().manual_seed(0))
    alpha = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    a0 = alpha.sum()
    p = transition[:, 0, 0, 0]
    assert p.mean(0).tolist() == pytest.approx((alpha / a0).tolist(), abs=0.005)
    assert p.var(0).tolist() == pytest.approx((alpha * (a0 - alpha) / (a0**2 * (a0 + 1))).tolist(), rel=0.05)
    r = reward[:, 0, 0, 0]  # N(3 / 4, 1 / 4): three observations summing to 3, prior N(0, 1), noise 1
    assert (r.mean().item(), r.var().item()) == (pytest.approx(0.75, abs=0.01), pytest.approx(0.25, rel=0.05))
    bernoulli = PosteriorModel(TaskPrior(1, 1, reward_model="bernoulli"), 1)
    _feed(bernoulli, [(0, 0, 0, 1.0, 0)] * 3)
    draws = bernoulli.sample(40000, torch.Generator().manual_seed(1))[1].flatten()  # Beta(4, 1)
    assert (draws.mean().item(), draws.var().item()) == (pytest.approx(0.8, abs=0.005),
                                                         pytest.approx(4 / (25 * 6), rel=0.05))


def _lp_optimum(p_hat, radius, value):
    """max p·V over the simplex with ‖p − p̂‖₁ ≤ radius, by linear programming on (p, u) with |p − p̂| ≤ u."""
    from scipy.optimize import linprog

    n = len(p_hat)
    c = [-v for v in value] + [0.0] * n
    a_ub, b_ub = [], []
    for i in range(n):
        e = [0.0] * (2 * n)
        e[i], e[n + i] = 1.0, -1.0
        a_ub.append(e), b_ub.append(p_hat[i])
        e = [0.0] * (2 * n)
        e[i], e[n + i] = -1.0, -1.0
        a_ub.append(e), b_ub.append(-p_hat[i])
    a_ub.append([0.0] * n + [1.0] * n), b_ub.append(radius)
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=[[1.0] * n + [0.0] * n], b_eq=[1.0], bounds=[(0, None)] * (2 * n))
    return -res.fun


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6), st.floats(0.0, 2.5))
def test_extended_value_iteration_step_matches_a_linear_program(seed, n, radius):
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(seed)
    p_hat = torch.rand(n, generator=g, dtype=torch.float64) ** 3
    p_hat /= p_hat.sum()
    value = torch.randn(n, generator=g, dtype=torch.float64).round(decimals=1)  # with ties
    ours = optimistic_transition_values(p_hat.view(1, 1, 1, n), torch.tensor([[[radius]]], dtype=torch.float64),
                                        value.view(1, n)).item()
    assert ours == pytest.approx(_lp_optimum(p_hat.tolist(), radius, value.tolist()), abs=1e-7)
    assert float(p_hat @ value) - 1e-12 <= ours <= float(value.max()) + 1e-12


def test_ucrl2_radii_in_closed_form_and_zero_width_equals_the_posterior_mean():
    model = PosteriorModel(TaskPrior(3, 2), 1)
    _feed(model, [(0, 1, 0, 1.0, 2)] * 4)
    transition, reward = UCRL2Planner(delta=0.2, scale=0.5).radii(model, torch.tensor([9]))
    assert transition[0, 1, 0].item() == pytest.approx(0.5 * math.sqrt(14 * 3 * math.log(2 * 2 * 10 / 0.2) / 4))
    assert reward[0, 0, 0].item() == pytest.approx(0.5 * math.sqrt(7 * math.log(2 * 3 * 2 * 10 / 0.2) / 2))
    tiny = UCRL2Planner(delta=0.5, scale=1e-12)(model, 5, torch.tensor([0]))
    assert torch.allclose(tiny, PosteriorMeanPlanner()(model, 5), atol=1e-9)
    assert (UCRL2Planner(scale=1.0)(model, 5, torch.tensor([0])) >= tiny - 1e-9).all()  # optimism


def _tasks_and_model(num=3, seed=0):
    env = RandomMDPEnv(num, horizon=20, seed=seed, episode_length=6)
    env.reset()
    model = PosteriorModel(TaskPrior.from_env(env), num)
    g = torch.Generator().manual_seed(seed)
    s, a = torch.randint(10, (50, num), generator=g), torch.randint(5, (50, num), generator=g)
    for t in range(50):
        model.update(s[t], a[t], torch.randn(num, generator=g, dtype=torch.float64), torch.randint(10, (num,)))
    return env, model


def test_finite_horizon_plan_of_the_posterior_mean_matches_the_exact_oracle():
    env, model = _tasks_and_model()
    transition, reward = model.mean()
    tasks = env.task_mdp()
    tasks["transition"], tasks["reward"] = transition, reward
    exact = finite_horizon_values(tasks, 6)[:, :, 0]  # an inner episode of 6 steps from τ = 0: no restart reached
    plan = PosteriorMeanPlanner()(model, 6)
    assert torch.allclose(plan[-1].amax(-1), exact, atol=1e-10)


def test_beb_with_zero_bonus_is_greedy_and_a_bonus_adds_its_value():
    _, model = _tasks_and_model()
    assert torch.equal(PosteriorMeanPlanner(beta=0.0)(model, 4), PosteriorMeanPlanner()(model, 4))
    one_step = PosteriorMeanPlanner(beta=2.0)(model, 1)[0] - PosteriorMeanPlanner()(model, 1)[0]
    assert torch.allclose(one_step, 2.0 / (1 + model.counts))
    kwargs = dict(horizon=20, num_tasks=16, seed=2)
    assert evaluate_baseline("beb", "random_mdp", params={"beta": 0.0}, **kwargs) == evaluate_baseline(
        "greedy", "random_mdp", **kwargs)


def test_optimistic_psrl_dominates_each_of_its_samples_and_one_sample_is_psrl():
    _, model = _tasks_and_model()
    q1 = PosteriorSamplingPlanner(1)(model, 5, generator=torch.Generator().manual_seed(3))
    q1_again = PosteriorSamplingPlanner(1)(model, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(q1, q1_again)
    transition, reward = model.sample(4, torch.Generator().manual_seed(4))
    q4 = PosteriorSamplingPlanner(4)(model, 5, generator=torch.Generator().manual_seed(4))
    for k in range(4):
        single = PosteriorMeanPlanner()  # plan on sample k alone, through a model whose mean is that sample
        fake = PosteriorModel(model.prior, reward.shape[1])
        fake.mean = lambda k=k: (transition[k], reward[k])
        assert (q4 >= single(fake, 5) - 1e-9).all()


@pytest.mark.parametrize("name", NEW)
def test_new_baselines_beat_random_and_stay_below_the_oracle(name):
    kwargs = dict(horizon=60, num_tasks=100, batch_size=100, seed=1)
    random = evaluate_baseline("random", "random_mdp", **kwargs)
    result = evaluate_baseline(name, "random_mdp", **kwargs)
    assert result["return_mean"] > random["return_mean"] + 3 * random["return_stderr"]
    assert result["normalized_mean"] < 1.0


@pytest.mark.parametrize("name", ["psrl", "ucrl2"])
def test_bandits_are_supported(name):
    kwargs = dict(horizon=50, num_tasks=100, seed=1)
    random = evaluate_baseline("random", "bandit", **kwargs)
    result = evaluate_baseline(name, "bandit", **kwargs)
    assert result["return_mean"] > random["return_mean"] + 3 * random["return_stderr"]


def test_same_seed_same_results_other_seed_other_results():
    a = evaluate_baseline("psrl", "random_mdp", horizon=20, num_tasks=10, seed=5)
    assert a == evaluate_baseline("psrl", "random_mdp", horizon=20, num_tasks=10, seed=5)
    assert a != evaluate_baseline("psrl", "random_mdp", horizon=20, num_tasks=10, seed=6)


def test_the_policy_records_every_transition_of_its_rows():
    env = make_meta_env("random_mdp", "rl2", 2, horizon=12)
    policy = ModelBasedPolicy.from_env(env, PosteriorMeanPlanner(), seed=0)
    rollout = env.rollout(12, policy)
    rollout = env.rollout(5, policy, tensordict=env.reset())  # a new task forgets the old counts
    assert policy.model.counts.sum().item() == 2 * 4
    s, a = rollout["state"][:, :4], rollout["action"][:, :4]
    for row in range(2):
        for t in range(4):
            assert policy.model.counts[row, s[row, t], a[row, t]] >= 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    result = evaluate_baseline("opsrl", "random_mdp", horizon=20, num_tasks=8, device="cuda")
    assert 0 < result["normalized_mean"] < 1


def test_bad_input_is_rejected_before_any_work(monkeypatch):
    import rl3_torchrl.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("work started"))
    cases = [
        ("nope", {}, "method='nope'"),
        ("beb", {"beta": -1.0}, "beta=-1.0"),
        ("eps_greedy", {"epsilon": -0.1}, "epsilon=-0.1"),
        ("eps_greedy", {"epsilon": 1.5}, "epsilon=1.5"),
        ("eps_greedy_q", {"epsilon": 2.0}, "epsilon=2.0"),
        ("mbie_eb", {"beta": -2.0}, "beta=-2.0"),
        ("ucrl2", {"delta": 0.0}, r"delta=0.0 .*\(0, 1\)"),
        ("ucrl2", {"delta": 1.0}, r"delta=1.0 .*\(0, 1\)"),
        ("ucrl2", {"scale": 0.0}, "scale=0.0"),
        ("opsrl", {"num_samples": 0}, "num_samples=0"),
        ("greedy", {"estimate": "mle"}, "estimate='mle'"),
        ("psrl", {"beta": 1.0}, r"no hyper-parameter beta=1.0; allowed: none"),
    ]
    for name, params, match in cases:
        with pytest.raises(ValueError, match=match):
            evaluate_baseline(name, "random_mdp", params=params)
    for name in NEW:
        with pytest.raises(ValueError, match=f"method='{name}'.*GridworldEnv.*random_mdp"):
            evaluate_baseline(name, "gridworld_11x11")
    with pytest.raises(TypeError, match="num_samples"):
        baseline_policy("opsrl", RandomMDPEnv(), num_samples=2.5)


def test_one_registry_row_per_method():
    assert set(BASELINES) == set(BASELINE_REGISTRY) >= {"random", "oracle", "greedy_q", "eps_greedy_q", "mbie_eb",
                                                        *NEW}
    for name, spec in BASELINE_REGISTRY.items():
        assert spec.summary and spec.algo in ("rl2", "rl3"), name
