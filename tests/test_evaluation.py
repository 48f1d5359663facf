"""Evaluation against exact values: the oracle's normalised return is 1, the random policy's return is its exact
expectation, standard errors and inner-episode curves are right, baselines run on the same tasks."""
import math

import pytest
import torch

from rl3_torchrl.envs import random_policy_return
from rl3_torchrl.evaluation import (
    BASELINES,
    evaluate,
    evaluate_actor,
    evaluate_baseline,
    inner_episode_returns,
    mean_and_stderr,
)
from rl3_torchrl.modules.tabular import OraclePolicy, QGreedyPolicy, RandomPolicy
from rl3_torchrl.tasks import make_meta_env

from _shared import TINY_RUN, load_recipe


@pytest.mark.parametrize("task, horizon", [("random_mdp", 30), ("bandit", 20), ("gridworld_11x11", 40)])
def test_oracle_policy_attains_the_oracle_return(task, horizon):
    result = evaluate_baseline("oracle", task, horizon=horizon, num_tasks=120, batch_size=60)
    # E[return / oracle] = 1 exactly for the optimal policy; allow 4 standard errors
    assert abs(result["normalized_mean"] - 1) < 4 * result["normalized_stderr"] + 1e-9


def test_random_policy_return_matches_its_exact_expectation():
    horizon, n = 30, 400
    result = evaluate_baseline("random", "random_mdp", horizon=horizon, num_tasks=n, batch_size=200, seed=5)
    env = make_meta_env("random_mdp", "rl2", 200, horizon=horizon, seed=5, split="test")
    exact = []
    for _ in range(2):  # the same two chunks of test tasks
        env.reset()
        exact.append(random_policy_return(env.base_env))
    exact = torch.cat(exact).mean().item()
    assert abs(result["return_mean"] - exact) < 4 * result["return_stderr"]


def test_methods_see_the_same_tasks():
    a = evaluate_baseline("oracle", "random_mdp", horizon=10, num_tasks=20, seed=3)
    b = evaluate_baseline("random", "random_mdp", horizon=10, num_tasks=20, seed=3)
    c = evaluate_baseline("random", "random_mdp", horizon=10, num_tasks=20, seed=4)
    assert a["oracle_mean"] == b["oracle_mean"] != c["oracle_mean"]


def test_tabular_baselines_beat_random_on_random_mdps():
    kwargs = dict(horizon=100, num_tasks=100, batch_size=100)
    random = evaluate_baseline("random", "random_mdp", **kwargs)
    for name in ("greedy_q", "eps_greedy_q", "mbie_eb"):
        result = evaluate_baseline(name, "random_mdp", **kwargs)
        assert result["return_mean"] > random["return_mean"] + 3 * random["return_stderr"], name
        assert result["normalized_mean"] < 1.0


def test_mean_and_stderr_on_a_synthetic_case():
    torch.manual_seed(0)
    values = torch.randn(20000) * 3 + 1
    mean, stderr = mean_and_stderr(values)
    assert stderr == pytest.approx(3 / math.sqrt(20000), rel=0.03)
    assert abs(mean - 1) < 4 * stderr
    # the standard error is the spread of the mean over repeated experiments
    means = torch.stack([torch.randn(100).mul(3).mean() for _ in range(2000)])
    assert means.std().item() == pytest.approx(3 / 10, rel=0.05)
    assert mean_and_stderr(torch.tensor([2.0])) == (2.0, 0.0)
    with pytest.raises(ValueError):
        mean_and_stderr(torch.tensor([]))


def test_inner_episode_returns_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    done = torch.tensor([[True, False, True, False, False], [False, False, False, False, True]])
    out = inner_episode_returns(rewards, done, 3)
    assert torch.equal(out[0], torch.tensor([1.0, 5.0, 9.0]))
    assert out[1, 0] == 5 and out[1, 1:].isnan().all()
    # episodes beyond the last column are dropped, not folded into it
    assert torch.equal(inner_episode_returns(rewards, done, 1)[:, 0], torch.tensor([1.0, 5.0]))


def test_evaluate_reports_inner_episode_curves():
    result = evaluate(lambda env: RandomPolicy(5, seed=0), "random_mdp", horizon=30, num_tasks=10, max_inner_episodes=5)
    curve = result["inner_episode_returns"]
    assert len(curve) == 5 and all(math.isnan(c) for c in curve[3:])  # 3 inner episodes of 10 steps
    assert sum(curve[:3]) == pytest.approx(result["return_mean"], rel=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="method='nope'"):
        evaluate_baseline("nope", "random_mdp")
    with pytest.raises(ValueError, match="task='nope'"):
        evaluate_baseline("random", "nope")
    with pytest.raises(ValueError, match="num_tasks=0"):
        evaluate_baseline("random", "random_mdp", num_tasks=0)
    with pytest.raises(ValueError, match="epsilon=1.5"):
        QGreedyPolicy(1.5)
    assert set(BASELINES) >= {"random", "oracle", "greedy_q"}


def test_oracle_policy_needs_its_tasks_time_and_state():
    env = make_meta_env("random_mdp", "rl2", 2, horizon=4)
    td = env.reset()
    policy = OraclePolicy.from_env(env)
    assert policy(td)["action"].shape == (2,)


def test_evaluate_recipe_writes_tables_and_figures(tmp_path):
    from rl3_torchrl.training import Trainer, load_config

    tiny = [*TINY_RUN, "ppo.epochs=1", "iterations=1", "eval.every=0"]
    for H in (6, 8):
        Trainer(load_config([*tiny, f"horizon={H}", f"output_dir={tmp_path / f'rl3_H{H}'}"])).train()
    out = tmp_path / "eval"
    rows = load_recipe("evaluate").main([
        "--task", "random_mdp", "--horizons", "6", "8", "--num-tasks", "4", "--methods", "random", "oracle",
        "--checkpoints", f"rl3={tmp_path}/rl3_H{{H}}/checkpoint.pt", "--out", str(out),
    ])
    assert {(r["method"], r["task"], r["horizon"]) for r in rows} == {
        (m, t, h) for m in ("random", "oracle", "rl3") for t in ("random_mdp", "random_mdp_ood") for h in (6, 8)
    }
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 12
    assert "| rl3 | random_mdp_ood | 8 |" in (out / "results.md").read_text()
    for figure in ("return_vs_horizon.png", "inner_episode_returns.png", "training_curves.png"):
        assert (out / figure).stat().st_size > 0, figure
    with pytest.raises(ValueError, match="cannot act on task='bandit'"):
        load_recipe("evaluate").main(["--task", "bandit", "--checkpoints", f"x={tmp_path}/rl3_H6/checkpoint.pt"])
    # an H above the trained one is refused before any work, naming the checkpoint, its H and the requested H
    match = r"rl3_H6/checkpoint.pt' was trained at H=6: its actor cannot act at horizon=8; allowed: \[1, 6\]"
    with pytest.raises(ValueError, match=match):
        load_recipe("evaluate").main(["--horizons", "6", "8", "--checkpoints", f"x={tmp_path}/rl3_H6/checkpoint.pt",
                                       "--methods", "random", "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("argv, match", [
    (["--horizons", "5", "0"], "--horizons takes positive integers, got 0"),
    (["--num-tasks", "-1"], "--num-tasks takes positive integers, got -1"),
    (["--task", "bandit", "--methods", "psrl", "--baseline-params", "psrl.bogus=1"], "no hyper-parameter bogus=1"),
])
def test_evaluate_recipe_checks_every_argument_before_any_work(tmp_path, capsys, argv, match):
    with pytest.raises((SystemExit, ValueError)) as error:
        load_recipe("evaluate").main([*argv, "--out", str(tmp_path / "out")])
    assert match in (str(error.value) + capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_evaluate_recipe_keeps_the_rows_finished_before_a_late_failure(tmp_path):
    recipe = load_recipe("evaluate")
    calls = []

    def fail_on_the_third_row(name, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return evaluate_baseline(name, **kwargs)

    recipe.evaluate_baseline = fail_on_the_third_row
    with pytest.raises(RuntimeError, match="injected"):
        recipe.main(["--task", "bandit", "--in-distribution-only", "--horizons", "4", "6", "--num-tasks", "2",
                     "--methods", "random", "oracle", "--out", str(tmp_path)])
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert [line.split(",")[:3] for line in lines] == [
        ["method", "task", "horizon"], ["random", "bandit", "4"], ["random", "bandit", "6"]
    ]


def test_evaluate_recipe_draws_value_maps_on_gridworlds(tmp_path):
    load_recipe("evaluate").main([
        "--task", "gridworld_11x11", "--in-distribution-only", "--horizons", "20", "--num-tasks", "2",
        "--methods", "greedy_q", "--out", str(tmp_path),
    ])
    assert (tmp_path / "value_map.png").stat().st_size > 0


def test_a_learned_actor_is_evaluated_the_same_way_every_time():
    """Sampled actions come from an RNG seeded by ``seed``: two calls agree whatever the caller's RNG state, and the
    caller's RNG stream is the one it would have been without the evaluation."""
    from rl3_torchrl.modules import make_actor_critic

    env = make_meta_env("random_mdp", "rl3", 1, horizon=12)
    actor, _ = make_actor_critic(env, "rl3", d_model=8, hidden_sizes=[8], ffn_dim=8, num_heads=2, num_layers=1)
    torch.manual_seed(123)
    first = evaluate_actor(actor, "random_mdp", "rl3", horizon=12, num_tasks=20, batch_size=8)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    torch.manual_seed(7)
    assert evaluate_actor(actor, "random_mdp", "rl3", horizon=12, num_tasks=20, batch_size=8) == first
