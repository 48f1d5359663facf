"""Comparing studies at equal frames (``recipes/study.py --compare``) on the committed ablation's logs."""
import csv
import math
from pathlib import Path

import pytest

from rl3_torchrl.study import compare_studies, load_study, study_cells

ROOT = Path(__file__).resolve().parents[1]
ABLATION = ROOT / "rl3_torchrl/configs/studies/ablation"


def _read(path: Path) -> dict[int, float]:
    with open(path) as f:
        return {int(float(step)): float(value) for step, value in csv.reader(f)}


def test_compare_studies_averages_the_seeds_that_reached_each_frame_count(tmp_path):
    groups = {}
    for variant in ("base", "batch_128"):
        study = load_study(str(ABLATION / f"{variant}.yaml"))
        groups[variant] = study_cells(study, ROOT / "results/ablation" / variant)
    if not all((c.output_dir / "logs").exists() for cells in groups.values() for c in cells):
        pytest.skip("the ablation's logs are not in this checkout")
    table = compare_studies(groups, tmp_path)
    assert (tmp_path / "comparison.png").exists() and (tmp_path / "comparison.md").read_text() == table
    # brute force: 1.6M frames is iteration 500 of the 32-env base and iteration 125 of the 128-env variant
    expected = {}
    for variant, iteration in (("base", 500), ("batch_128", 125)):
        values = []
        for cell in groups[variant]:
            log = cell.output_dir / "logs" / "random_mdp_rl2" / "scalars" / "eval_normalized_return.csv"
            values += [v for step, v in _read(log).items() if step == iteration]
        mean = sum(values) / len(values)
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
        expected[variant] = f"{mean:.3f} ± {se:.3f} [{len(values)}]"
    header = table.splitlines()[4].split(" | ")
    column = header.index("1.60M frames")
    for line in table.splitlines()[6:]:
        cells = line.strip("| ").split(" | ")
        assert cells[column].startswith(expected[cells[0]])


def test_the_study_recipe_compares_and_names_what_it_needs(tmp_path, capsys):
    from _shared import load_recipe

    study = load_recipe("study")
    entry = f"{ABLATION / 'one_layer.yaml'}:{ROOT / 'results/ablation/one_layer'}"
    with pytest.raises(SystemExit):
        study.main(["--compare", entry])  # no --out
    assert "--compare needs --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["cpu", "--compare", entry, "--out", str(tmp_path)])  # a study and --compare
    study.main(["--compare", entry, "--algos", "rl2", "--horizon", "100", "--out", str(tmp_path)])
    assert "| one_layer |" in (tmp_path / "comparison.md").read_text()


def test_compare_studies_names_an_empty_selection(tmp_path):
    with pytest.raises(ValueError, match=r"empty: \['one_layer'\]"):
        compare_studies({"one_layer": []}, tmp_path)
    with pytest.raises(ValueError, match="at least one group"):
        compare_studies({}, tmp_path)


def test_several_algorithms_are_compared_per_algorithm_never_pooled(tmp_path):
    from _shared import load_recipe

    cells = study_cells(load_study("cpu"), ROOT / "results/cpu")
    if not all((c.output_dir / "logs").exists() for c in cells):
        pytest.skip("the cpu study's logs are not in this checkout")
    load_recipe("study").main(["--compare", f"cpu:{ROOT / 'results/cpu'}", "--algos", "rl2", "rl3", "--horizon", "100",
                               "--out", str(tmp_path)])
    rows = [line for line in (tmp_path / "comparison.md").read_text().splitlines() if line.startswith("| cpu")]
    assert [row.split(" | ")[0] for row in rows] == ["| cpu rl2", "| cpu rl3"]
    assert all(value.split("[")[1].startswith("3]") for row in rows for value in row.split(" | ")[1:])
