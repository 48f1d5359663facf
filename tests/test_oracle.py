"""The exact oracle against a hand-worked MDP, a brute-force recursion, an independent numpy DP and sampling."""
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from tensordict import TensorDict

from rl3_torchrl.envs import RandomMDPEnv, finite_horizon_values, oracle_return, random_policy_return


def _tasks(transition, reward, terminal, start, episode_length):
    transition = torch.as_tensor(transition, dtype=torch.float32)
    B = transition.shape[0]
    return TensorDict(
        {
            "transition": transition,
            "reward": torch.as_tensor(reward, dtype=torch.float32),
            "terminal": torch.as_tensor(terminal, dtype=torch.bool),
            "start_state": torch.as_tensor(start, dtype=torch.long),
            "episode_length": torch.full((B,), episode_length, dtype=torch.long),
        },
        batch_size=[B],
    )


def _hand_mdp():
    # two states; action 0 leads to state 0, action 1 to state 1; R(0,0)=1, R(1,1)=3, else 0;
    # inner episodes of 2 steps from state 0.
    p = np.zeros((1, 2, 2, 2))
    p[0, :, 0, 0] = 1
    p[0, :, 1, 1] = 1
    r = np.array([[[1.0, 0.0], [0.0, 3.0]]])
    return _tasks(p, r, np.zeros((1, 2)), [0], 2)


@pytest.mark.parametrize("horizon, expected", [(1, 1.0), (2, 3.0), (3, 4.0), (4, 6.0), (5, 7.0)])
def test_oracle_on_hand_worked_mdp(horizon, expected):
    # H=3: go to state 1 (0), collect 3, restart in 0 and take 1 -> 4; H=4: (0 + 3) twice -> 6
    assert oracle_return(_hand_mdp(), horizon).item() == pytest.approx(expected)


def test_random_policy_on_hand_worked_mdp():
    # H=2 from state 0: first step E[r]=0.5; then s=0 or 1 w.p. 1/2 each, E[r]=0.5 or 1.5 -> total 1.5
    assert random_policy_return(_hand_mdp(), 2).item() == pytest.approx(1.5)


def _brute_force(p, r, terminal, start, T, H, mode):
    """Plain recursion over (state, inner step, steps to go), independent of the batched DP."""
    S, A = r.shape

    @functools.lru_cache(maxsize=None)
    def value(s, tau, h):
        if h == 0:
            return 0.0
        qs = []
        for a in range(A):
            q = r[s, a]
            for s2 in range(S):
                if p[s, a, s2] == 0:
                    continue
                restart = terminal[s2] or (T > 0 and tau + 1 == T)
                q += p[s, a, s2] * (value(start, 0, h - 1) if restart else value(s2, tau + 1, h - 1))
            qs.append(q)
        return max(qs) if mode == "optimal" else sum(qs) / A

    return value(start, 0, H)


@pytest.mark.parametrize("episode_length", [0, 1, 3])
def test_oracle_equals_brute_force_with_terminals(episode_length):
    rng = np.random.default_rng(0)
    B, S, A, H = 3, 4, 3, 9
    p = rng.dirichlet(np.ones(S), size=(B, S, A))
    r = rng.normal(size=(B, S, A))
    terminal = rng.random((B, S)) < 0.3
    start = rng.integers(0, S, B)
    tasks = _tasks(p, r, terminal, start, episode_length)
    opt, rnd = oracle_return(tasks, H), random_policy_return(tasks, H)
    p32 = tasks["transition"].double().numpy()
    for b in range(B):
        args = (p32[b], r.astype(np.float32)[b].astype(float), terminal[b], int(start[b]), episode_length, H)
        assert opt[b].item() == pytest.approx(_brute_force(*args, "optimal"), rel=1e-6, abs=1e-6)
        assert rnd[b].item() == pytest.approx(_brute_force(*args, "random"), rel=1e-6, abs=1e-6)


def _numpy_dp(p, r, T, H):
    """Independent numpy DP for random MDPs (start 0, no terminals), looping over the inner step explicitly."""
    B, S, A, _ = p.shape
    v = np.zeros((B, S, T))
    for _ in range(H):
        new = np.empty_like(v)
        for tau in range(T):
            nxt = np.repeat(v[:, :1, 0], S, axis=1) if tau == T - 1 else v[:, :, tau + 1]
            q = r + np.einsum("bsan,bn->bsa", p, nxt)
            new[:, :, tau] = q.max(-1)
        v = new
    return v[:, 0, 0]


def test_oracle_equals_numpy_dp_on_random_tasks():
    env = RandomMDPEnv(20, horizon=60, seed=1)
    env.reset()
    tasks = env.task_mdp()
    expected = _numpy_dp(tasks["transition"].double().numpy(), tasks["reward"].double().numpy(), 10, 60)
    np.testing.assert_allclose(oracle_return(env).numpy(), expected, rtol=1e-9)


def test_random_policy_return_matches_sampled_returns():
    B, H = 600, 40
    env = RandomMDPEnv(B, horizon=H, seed=2)
    rng = torch.Generator().manual_seed(0)
    env.reset()
    exact = random_policy_return(env)
    total = torch.zeros(B)
    for _ in range(H):
        total += env.advance_tasks(torch.randint(5, (B,), generator=rng))[1]
    diff = total - exact.float()  # per-task error: zero mean if the exact value is right
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(B)


def test_oracle_env_default_horizon_and_errors():
    env = RandomMDPEnv(2, horizon=15)
    env.reset()
    assert torch.equal(oracle_return(env), oracle_return(env.task_mdp(), 15))
    with pytest.raises(ValueError, match="horizon=None"):
        oracle_return(env.task_mdp())
    with pytest.raises(ValueError, match="horizon=0"):
        oracle_return(env, 0)
    with pytest.raises(ValueError, match="policy='greedy'"):
        finite_horizon_values(env.task_mdp(), 3, policy="greedy")
    with pytest.raises(ValueError, match="lacks the task keys"):
        oracle_return(env.task_mdp().exclude("terminal"), 3)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), H=st.integers(1, 30), alpha=st.floats(0.1, 5.0))
def test_oracle_dominates_random_and_grows_with_horizon(seed, H, alpha):
    env = RandomMDPEnv(4, n_states=4, n_actions=3, horizon=H, dirichlet_alpha=alpha, seed=seed)
    env.reset()
    opt = oracle_return(env)
    assert (opt >= random_policy_return(env) - 1e-9).all()
    values = finite_horizon_values(env.task_mdp(), H, all_steps=True)[:, :, 0, 0]  # from the start state
    # one more step is worth at least the worst reward
    worst = env.task_mdp()["reward"].amin((1, 2)).double()
    assert (values[1:] - values[:-1] >= worst - 1e-6).all()
