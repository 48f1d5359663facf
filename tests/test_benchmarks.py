"""The benchmark scripts' entry points still run (tiny sizes, CPU): a renamed API breaks them here, not on a GPU."""
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config, algo", [("default", "rl3"), ("paper_random_mdp", "rl2")])
def test_collection_step_times_every_part(config, algo):
    times = load("collection_step").main(["--config", config, "--algo", algo, "--horizon", "6", "--num-envs", "2",
                                          "--repeats", "1", "--device", "cpu"])  # fmt: skip
    parts = ("env + transforms", "backbone step", "bare actor step", "actor step", "collector step")
    assert all(times[part] > 0 for part in parts)
    assert times["ratio"] == pytest.approx(times["collector step"] / (times["env + transforms"] + times["bare actor step"]))
    assert times["backbone ratio"] == pytest.approx(
        times["collector step"] / (times["env + transforms"] + times["backbone step"])
    )
