"""Studies: cells from a study file, resumable training/evaluation, the report's figures against hand computations."""
import csv
import importlib.util
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rl3_torchrl.study import (
    aggregate_cells,
    evaluate_study,
    frames_to_reach,
    learning_curves,
    load_study,
    named_studies,
    report_study,
    study_cells,
    train_study,
    validate_study,
    write_manifest,
)
from rl3_torchrl.training import Trainer

TINY_MODEL = {"d_model": 8, "hidden_sizes": [8], "ffn_dim": 8, "num_heads": 2, "num_layers": 1}
RECIPE = Path(__file__).parents[1] / "recipes" / "study.py"


def _tiny_study(iterations=2, **extra):
    return validate_study(OmegaConf.create(dict(
        name="tiny", env="bandit", algos=["rl2", "rl3"], seeds=[0, 1], horizons={6: {"num_envs": 2}},
        train={"iterations": iterations, "ppo": {"minibatch_episodes": 1, "epochs": 1}, "model": TINY_MODEL,
               "eval": {"every": 1, "num_tasks": 4}, "checkpoint": {"every": 1}},
        evaluation={"num_tasks": 6, "baselines": ["random", "greedy_q"]}, **extra)))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _recipe():
    spec = importlib.util.spec_from_file_location("study_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cells_are_the_product_of_algos_horizons_and_seeds(tmp_path):
    study = load_study("cpu")
    cells = study_cells(study, tmp_path)
    assert len(cells) == len(study.algos) * len(study.horizons) * len(study.seeds)
    assert len({c.output_dir for c in cells}) == len(cells)
    for cell in cells:
        cfg = cell.config()
        assert (cfg.algo, cfg.horizon, cfg.seed) == (cell.algo, cell.horizon, cell.seed)
        assert cfg.model.num_layers == 2 and cfg.ppo.lr == 3e-4
        assert cfg.num_envs == study.horizons[cell.horizon].num_envs
    # equal frames per cell: the claims compare algorithms at equal experience
    assert len({round(c.frames(), -5) for c in cells}) == 1
    assert study_cells(study, tmp_path, algos=["rl2"]) == [c for c in cells if c.algo == "rl2"]


def test_every_paper_cell_builds_its_trainer(tmp_path):
    study = load_study("paper")
    for cell in study_cells(study, tmp_path)[:: len(study.seeds)]:
        cfg = cell.config(output_dir=tmp_path / cell.name)
        assert cfg.num_envs * cfg.horizon == 32768
        Trainer(cfg)


@pytest.mark.slow
def test_first_iteration_of_every_paper_cell(tmp_path):
    for cell in study_cells(load_study("paper"), tmp_path)[:: len(load_study("paper").seeds)]:
        history = Trainer(cell.config(iterations=1, **{"eval.every": 0})).train()
        assert len(history) == 1 and math.isfinite(history[0]["loss_critic"])


def test_study_trains_resumes_evaluates_and_reports(tmp_path):
    study = _tiny_study(iterations=2)
    cells = study_cells(study, tmp_path)
    assert [c.status() for c in cells] == ["todo"] * 4
    assert len(train_study(study, tmp_path, workers=2)) == 4
    assert [c.status() for c in cells] == ["done"] * 4
    assert train_study(study, tmp_path) == []  # finished cells are skipped

    # a longer study over the same folder: every cell is partly done and resumes, logging each iteration once
    longer = _tiny_study(iterations=3)
    assert [c.status() for c in study_cells(longer, tmp_path)] == ["partial"] * 4
    train_study(longer, tmp_path, workers=1)
    for cell in study_cells(longer, tmp_path):
        assert cell.checkpoint_iteration() == 3
        log = cell.output_dir / "logs" / f"bandit_{cell.algo}" / "scalars" / "return.csv"
        assert [int(r.split(",")[0]) for r in log.read_text().splitlines()] == [1, 2, 3]
        assert "resume" in (cell.output_dir / "train.log").read_text()

    evaluate_study(longer, tmp_path, workers=2)
    cells_rows, base_rows = _rows(tmp_path / "cells.csv"), _rows(tmp_path / "baselines.csv")
    assert len(cells_rows) == 4 * 2 and len(base_rows) == 2 * 2  # in-dist and OOD
    evaluate_study(longer, tmp_path)  # nothing is recomputed
    assert len(_rows(tmp_path / "cells.csv")) == 8 and len(_rows(tmp_path / "baselines.csv")) == 4

    text = report_study(longer, tmp_path)
    for row in cells_rows[:1]:
        assert row["algo"] in text
    assert "RL² learns" in text and "Sample efficiency" in text
    for figure in ("return_vs_horizon.png", "learning_curves.png", "entropy_curves.png"):
        assert (tmp_path / figure).stat().st_size > 0
    manifest = write_manifest(longer, tmp_path, command="pytest", wall_s=1.0).read_text()
    assert manifest.count("python recipes/ppo_rl3.py") == 4 and "torchrl" in manifest and "frames" in manifest


def test_gridworld_study_reports_goal_rates_and_claim_6(tmp_path):
    """A family without OOD shifts: no OOD columns or claim 3; every row has its goal rate, claim 6 its numbers."""
    study = _tiny_study(iterations=1)
    study.name, study.env, study.algos, study.seeds = "grid", "gridworld_7x7", ["rl2", "rl3", "rl3_coarse"], [0]
    train_study(study, tmp_path)
    evaluate_study(study, tmp_path, num_tasks=4)
    rows = _rows(tmp_path / "cells.csv") + _rows(tmp_path / "baselines.csv")
    assert len(rows) == 3 + 2 and all(0.0 <= float(r["goal_rate"]) <= 1.0 for r in rows)
    text = report_study(study, tmp_path)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "OOD" not in header and "goal rate" in header and "OOD / in-distribution" not in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len({line.count("|") for line in table}) == 1  # every row has the header's columns
    claim = text[text.index("6. **Grids learn**"):]
    assert all(f"{m} " in claim for m in ("rl2", "rl3", "rl3_coarse", "random")) and "frames/s" in claim


def test_report_figures_match_a_hand_computation(tmp_path):
    rows = [dict(algo="rl3", horizon=8, task="t", seed=s, normalized_mean=v) for s, v in enumerate([0.5, 0.6, 0.9])]
    agg = aggregate_cells(rows)[("rl3", 8, "t")]
    mean = (0.5 + 0.6 + 0.9) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in (0.5, 0.6, 0.9)) / 2 / 3)
    assert agg["mean"] == pytest.approx(mean) and agg["se"] == pytest.approx(se) and agg["seeds"] == 3
    one = aggregate_cells([dict(algo="rl2", horizon=8, task="t", seed=0, normalized_mean=0.4, normalized_stderr=0.02)])
    assert one[("rl2", 8, "t")] == dict(mean=0.4, se=0.02, seeds=1)  # one seed: its SE over tasks
    assert frames_to_reach([1, 2, 3], [0.2, 0.1, 0.3], 0.25) == 3
    assert frames_to_reach([1, 2, 3], [0.2, 0.1, 0.3], 0.5) is None


def test_learning_curves_average_the_seeds_at_common_iterations(tmp_path):
    study = _tiny_study(iterations=2)
    cells = study_cells(study, tmp_path)
    for cell, offset in zip(cells, (0.0, 0.2, 0.1, 0.3)):
        scalars = cell.output_dir / "logs" / f"bandit_{cell.algo}" / "scalars"
        scalars.mkdir(parents=True)
        lines = [f"{i},{0.1 * i + offset}" for i in (1, 2, 3)][: 3 if cell.seed == 0 else 2]
        (scalars / "eval_normalized_return.csv").write_text("\n".join(lines) + "\n")
    curves = learning_curves(cells)
    frames, mean, se, seeds = curves[("rl2", 6)]
    assert frames == [12, 24] and seeds == 2  # iteration × num_envs × H, only where both seeds logged
    assert mean == pytest.approx([0.2, 0.3]) and se == pytest.approx([0.1, 0.1])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"env": "nope"}, "tiny.env='nope' is not allowed"),
        ({"algos": ["rl4"]}, "tiny.algos='rl4' is not allowed"),
        ({"seeds": [-1]}, "tiny.seeds=-1 is out of range"),
        ({"config": "nope"}, "tiny.config='nope' is not allowed"),
        ({"evaluation": {"baselines": ["psrl", "nope"]}}, "tiny.evaluation.baselines='nope' is not allowed"),
    ],
)
def test_bad_study(change, match):
    study = _tiny_study()
    study.merge_with(change)
    with pytest.raises(ValueError, match=match):
        validate_study(study)


def test_study_file_and_bad_names(tmp_path):
    path = tmp_path / "mine.yaml"
    OmegaConf.save(_tiny_study(), path)
    study = load_study(str(path))
    assert study.name == "mine" and study.source == str(path)
    assert f"study: mine ({path})" in write_manifest(study, tmp_path, command="pytest", wall_s=1.0).read_text()
    assert load_study("cpu").source == "rl3_torchrl/configs/studies/cpu.yaml"
    assert "cpu" in named_studies() and "paper" in named_studies()
    with pytest.raises(ValueError, match="study='nope' is not allowed"):
        load_study("nope")
    with pytest.raises(ValueError, match="lacks the keys"):
        validate_study(OmegaConf.create({"name": "x", "env": "bandit"}))


def test_recipe_lists_cells(tmp_path, capsys):
    _recipe().main(["cpu", "--list", "--out", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(study_cells(load_study("cpu"), tmp_path))
    assert all(" todo " in line and "recipes/ppo_rl3.py" in line for line in out)


def test_a_failed_cell_stops_the_study_without_training_the_queued_cells(tmp_path):
    # H = 4 comes first (cells start in H order) and fails at once (a minibatch larger than its 2 envs); the
    # H = 6 cells are long enough that, without the stop, the pool would go on to train them
    study = _tiny_study(iterations=400)
    study.algos, study.seeds = ["rl2"], [0]
    study.horizons = {4: {"num_envs": 2, "ppo": {"minibatch_episodes": 3}}, 6: {"num_envs": 2}}
    with pytest.raises(ValueError, match="minibatch_episodes=3"):
        train_study(study, tmp_path, workers=1)
    assert [c.status() for c in study_cells(study, tmp_path)] == ["todo", "todo"]


def test_rows_appended_to_a_csv_of_an_earlier_version_keep_their_columns(tmp_path):
    """A results CSV whose header predates a column (e.g. goal_rate) is rewritten with it before the next row, so
    every row stays under its own header and the file reads back."""
    from rl3_torchrl.study import _append_row, _read_rows

    path = tmp_path / "baselines.csv"
    path.write_text("method,horizon,return_mean\nrandom,100,1.5\n")
    _append_row(path, ("method", "horizon", "return_mean", "goal_rate"), {"method": "greedy", "horizon": 512,
                                                                         "return_mean": 2.5, "goal_rate": 0.25})
    _append_row(path, ("method", "horizon", "return_mean", "goal_rate"), {"method": "psrl", "horizon": 512,
                                                                         "return_mean": 3.5})
    assert path.read_text().splitlines()[0] == "method,horizon,return_mean,goal_rate"
    rows = _read_rows(path)
    assert [(r["method"], r["horizon"], r["return_mean"], r["goal_rate"]) for r in rows] == [
        ("random", 100, 1.5, ""), ("greedy", 512, 2.5, 0.25), ("psrl", 512, 3.5, "")]
