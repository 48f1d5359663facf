"""Gymnasium toy-text task families: TrialEnv on GymEnv, the estimator against a brute-force model, exact oracles."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.envs import Compose, GymEnv, InitTracker, SerialEnv, TransformedEnv, check_env_specs

pytest.importorskip("gymnasium")

from _shared import TINY_RUN, load_recipe  # noqa: E402
from test_online_q import PaperBruteForce  # noqa: E402  the brute-force count model (dicts and loops)

from rl3_torchrl.envs import TrialEnv, oracle_return, random_policy_return  # noqa: E402
from rl3_torchrl.envs.toy_text import FrozenLakeFamily, TaxiFamily, make_toy_text_env, toy_text_model  # noqa: E402
from rl3_torchrl.modules import make_actor_critic  # noqa: E402
from rl3_torchrl.tasks import TASKS, make_meta_env, task_family  # noqa: E402
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator  # noqa: E402


def test_estimator_on_a_gym_frozenlake_trial_matches_the_brute_force_model():
    # stock GymEnv: one-hot int64 observations and actions; the trial restarts inner episodes at holes and the goal
    inner = SerialEnv(2, lambda: GymEnv("FrozenLake-v1", map_name="4x4", is_slippery=True))
    estimator = OnlineQEstimator.from_preset("toy_text", state_key="observation", dtype=torch.float64, tol=1e-12,
                                             max_sweeps=100000, check_every=1)  # fmt: skip
    env = TransformedEnv(TrialEnv(inner, horizon=80, seed=1), estimator)
    check_env_specs(env)
    torch.manual_seed(0)
    rollout = env.rollout(80)
    assert int(rollout["next", "inner_terminated"].sum()) >= 4  # holes and goals were entered and restarted
    state = rollout["observation"].argmax(-1)
    reached = rollout["next", "reached_observation"].argmax(-1)
    shown = rollout["next", "observation"].argmax(-1)
    for b in range(2):
        brute = PaperBruteForce(16, 4, laplace=0.01, gamma=0.95, tol=1e-12)
        for t in range(80):
            nxt = rollout["next"][b, t]
            expected = brute.step(int(state[b, t]), int(rollout["action"][b, t].argmax()), float(nxt["reward"]),
                                  int(reached[b, t]), bool(nxt["inner_terminated"]), int(shown[b, t]))  # fmt: skip
            np.testing.assert_allclose(nxt["q_features"].numpy(), expected, atol=1e-8, err_msg=f"row {b} step {t}")


def test_toy_text_model_is_gymnasium_p_and_the_oracle_is_exact_on_a_hand_worked_map():
    # 2x2 map, deterministic: S F / F G. Two steps (right, down) reach the goal (+1) and restart at S.
    family = FrozenLakeFamily(size=2, slippery=False)
    model = toy_text_model(family, ("SF", "FG"))
    assert model["terminal"].tolist() == [False, False, False, True]
    assert model["transition"][0, 2].tolist() == [0.0, 1.0, 0.0, 0.0]  # action 2 = right: 0 -> 1
    assert model["reward"][1, 1].item() == 1.0 and model["reward"].sum().item() == 2.0  # into G from 1 or 2
    tasks = {key: value.unsqueeze(0) for key, value in model.items()}
    from tensordict import TensorDict

    tasks = TensorDict({**tasks, "episode_length": torch.zeros(1, dtype=torch.long)}, [1])
    assert [oracle_return(tasks, h).item() for h in (1, 2, 5, 6)] == [0.0, 1.0, 2.0, 3.0]
    # Taxi: action a performs the Gymnasium action labels[a]
    taxi = TaxiFamily()
    task = (123, (5, 4, 3, 2, 1, 0))
    model, raw = toy_text_model(taxi, task), taxi.build(task).unwrapped
    for s in (0, 123, 499):
        for a in range(6):
            (_, s_next, r, _), = raw.P[s][5 - a]
            assert model["transition"][s, a, s_next] == 1.0 and model["reward"][s, a] == r
    assert int(model["start_state"]) == 123


def test_frozenlake_tasks_env_specs_seeds_and_task_changes_only_at_meta_resets():
    env = make_toy_text_env(FrozenLakeFamily(size=4), 3, horizon=30, seed=0)
    check_env_specs(env)
    env.set_seed(0)
    maps = lambda e: [row.task for row in e.task_sampler.rows]  # noqa: E731
    first = env.rollout(30)
    drawn = maps(env)
    assert len(set(drawn)) == 3 and all(m[0][0] == "S" and m[-1][-1] == "G" for m in drawn)
    assert int(first["next", "inner_done"].sum()) > 0  # inner restarts happened, with the same maps
    again = make_toy_text_env(FrozenLakeFamily(size=4), 3, horizon=30, seed=0)
    again.reset()
    assert maps(again) == drawn
    test_split = make_toy_text_env(FrozenLakeFamily(size=4), 3, horizon=30, seed=0, split="test")
    test_split.reset()
    assert maps(test_split) != drawn  # another stream (4x4 maps may repeat: all-frozen has probability 0.04)
    env.rollout(30)
    assert maps(env) != drawn  # the next meta-episode draws new maps
    oracle, random = oracle_return(env), random_policy_return(env)
    assert bool((oracle > random).all()) and bool((random >= 0).all())
    holes = make_toy_text_env(FrozenLakeFamily(size=4, frozen_prob=0.6), 60, horizon=5, seed=0)
    holes.reset()
    fraction = lambda e: np.mean([row.count("H") for m in maps(e) for row in m]) / 4  # noqa: E731
    many = make_toy_text_env(FrozenLakeFamily(size=4), 60, horizon=5, seed=0)
    many.reset()
    assert fraction(holes) > fraction(many) + 0.1  # the OOD maps have more holes


def test_named_tasks_pipeline_actor_and_taxi_rows():
    assert task_family("frozenlake_8x8") == ["frozenlake_8x8", "frozenlake_8x8_holes"]
    assert task_family("taxi") == ["taxi", "taxi_rainy"]
    env = make_meta_env("frozenlake_4x4", "rl3", 2, horizon=12)
    td = env.reset()
    assert td["q_features"].shape == (2, 9) and td["observation"].shape == (2, 16)
    actor, critic = make_actor_critic(env, "rl3", d_model=8, hidden_sizes=(8,), ffn_dim=8)
    rollout = env.rollout(12, actor)
    assert rollout["next", "done"][:, -1].all()
    taxi = make_meta_env("taxi", "rl2", 2, horizon=5)
    assert taxi.rollout(5)["next", "reward"].shape == (2, 5, 1)
    assert TASKS["taxi"].q_preset == "gridworld"


def test_by_hand_composition_with_one_hot_actions_and_the_recipe(tmp_path):
    # the tutorial's composition: stock GymEnv (one-hot actions), TrialEnv, MetaRLInputs, OnlineQEstimator
    env = TransformedEnv(
        TrialEnv(SerialEnv(2, lambda: GymEnv("FrozenLake-v1", is_slippery=True)), horizon=10),
        Compose(MetaRLInputs(), OnlineQEstimator(state_key="observation"), InitTracker()),
    )
    actor, critic = make_actor_critic(env, "rl3", d_model=8, hidden_sizes=(8,), ffn_dim=8)
    rollout = critic(env.rollout(10, actor))
    assert rollout["action"].shape == (2, 10, 4) and rollout["action"].sum(-1).eq(1).all()
    assert rollout["action_log_prob"].shape == (2, 10) and rollout["state_value"].shape == (2, 10, 1)
    recipe = load_recipe("ppo_rl3")
    history = recipe.main(["env=frozenlake_4x4", "iterations=1", "eval.every=0", f"output_dir={tmp_path / 'run'}",
                           *TINY_RUN])  # fmt: skip
    assert len(history) == 1
    evaluate = load_recipe("evaluate")
    rows = evaluate.main(["--task", "frozenlake_4x4", "--methods", "random", "greedy_q", "--horizons", "8",
                          "--num-tasks", "4", "--out", str(tmp_path / "eval")])  # fmt: skip
    assert {(r["method"], r["task"]) for r in rows} == {
        (m, t) for m in ("random", "greedy_q") for t in ("frozenlake_4x4", "frozenlake_4x4_holes")
    }


def test_a_killed_gym_task_run_resumes_to_the_uninterrupted_run(tmp_path):
    # the slippery dynamics come from each row's Gymnasium np_random: the checkpoint carries them (ToyTextSampler)
    from rl3_torchrl.training import Trainer, load_config

    def config(run, *extra):
        return load_config(["env=frozenlake_4x4", *TINY_RUN, "horizon=12", "iterations=3", "checkpoint.every=1",
                            "eval.every=0", f"output_dir={tmp_path / run}", *extra])  # fmt: skip

    full = Trainer(config("full")).train()
    Trainer(config("killed", "iterations=1")).train()  # the same run, stopped after its first checkpoint
    resumed = Trainer(config("killed", "checkpoint.resume=true")).train()
    assert [r["return"] for r in resumed] == [r["return"] for r in full[1:]]
    assert [r["loss_critic"] for r in resumed] == [r["loss_critic"] for r in full[1:]]
