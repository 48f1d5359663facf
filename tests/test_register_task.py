"""register_task: a task family of the user's reaches the config, the recipes and the evaluation unedited."""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

from _shared import TINY_RUN, load_recipe

from rl3_torchrl.config import load_config
from rl3_torchrl.envs import RandomMDPEnv
from rl3_torchrl.tasks import TASKS, make_meta_env, register_task, task_family


@pytest.fixture
def chain_tasks():
    register_task("tiny_mdp", functools.partial(RandomMDPEnv, n_states=3, n_actions=2, horizon=8))
    register_task("tiny_mdp_ood", functools.partial(RandomMDPEnv, n_states=3, n_actions=2, horizon=8,
                                                    dirichlet_alpha=0.1), family="tiny_mdp",
                  q_preset={"laplace": 0.5, "gamma": 0.9})  # fmt: skip
    yield
    del TASKS["tiny_mdp"], TASKS["tiny_mdp_ood"]


def test_registered_tasks_reach_the_pipeline_config_recipe_and_evaluation(chain_tasks, tmp_path):
    assert task_family("tiny_mdp") == ["tiny_mdp", "tiny_mdp_ood"]
    estimator = make_meta_env("tiny_mdp_ood", "rl3", 2).transform[1]
    assert (estimator.laplace, estimator.gamma) == (0.5, 0.9)
    assert load_config(["env=tiny_mdp"]).env == "tiny_mdp"
    history = load_recipe("ppo_rl3").main(["env=tiny_mdp", "iterations=1", "eval.every=0",
                                           f"output_dir={tmp_path / 'run'}", *TINY_RUN])  # fmt: skip
    assert len(history) == 1
    rows = load_recipe("evaluate").main(["--task", "tiny_mdp", "--methods", "random", "oracle", "--horizons", "8",
                                         "--num-tasks", "4", "--out", str(tmp_path / "eval")])  # fmt: skip
    oracle = [r for r in rows if r["method"] == "oracle" and r["task"] == "tiny_mdp"]
    assert len(rows) == 4 and oracle[0]["normalized_mean"] == pytest.approx(1.0, abs=0.5)


def test_bad_registrations_are_clear_errors(chain_tasks):
    with pytest.raises(ValueError, match="name='tiny_mdp' is already a task; pass replace=True"):
        register_task("tiny_mdp", RandomMDPEnv)
    with pytest.raises(TypeError, match="factory must be callable"):
        register_task("other", "RandomMDPEnv")
    with pytest.raises(ValueError, match="family='nowhere' is not a task"):
        register_task("other", RandomMDPEnv, family="nowhere")
    with pytest.raises(ValueError, match="q_preset='grid' is not allowed; choose one of"):
        register_task("other", RandomMDPEnv, q_preset="grid")
    with pytest.raises(ValueError, match="gamma=3 is out of range"):
        register_task("other", RandomMDPEnv, q_preset={"gamma": 3})
    assert "other" not in TASKS


def test_rl3_tasks_environment_variable_imports_the_user_module(tmp_path):
    (tmp_path / "my_tasks.py").write_text(
        "import functools\nfrom rl3_torchrl.envs import RandomMDPEnv\nfrom rl3_torchrl.tasks import register_task\n"
        "register_task('my_mdp', functools.partial(RandomMDPEnv, n_states=4))\n"
    )
    environment = {**os.environ, "RL3_TASKS": "my_tasks", "PYTHONPATH": f"{tmp_path}{os.pathsep}"
                   f"{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    code = "from rl3_torchrl.config import load_config; print(load_config(['env=my_mdp']).env)"
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "my_mdp"
