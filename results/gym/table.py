"""Write table.rst (included by docs/gym.rst) from the evaluation CSVs: python results/gym/table.py"""
import csv
from pathlib import Path

HERE = Path(__file__).parent
TASKS = ("frozenlake_4x4", "frozenlake_4x4_holes")
NAMES = {
    "rl3": "RL³ (250 iterations, 800k frames)",
    "rl2": "RL² (250 iterations, 800k frames)",
    "greedy_q": "greedy on RL³'s online Q (``greedy_q``)",
    "random": "random",
    "oracle": "oracle policy (knows the map)",
}
rows = {(r["method"], r["task"]): r for f in ("eval", "eval_rl2") for r in csv.DictReader(open(HERE / f / "results.csv"))}


def cell(r):
    return (f"{float(r['normalized_mean']):.3f} ± {float(r['normalized_stderr']):.3f} "
            f"({float(r['return_mean']):.2f} ± {float(r['return_stderr']):.2f})")


lines = [
    ".. list-table:: Oracle-normalised return (raw return in brackets), mean ± SE over 500 held-out maps, H = 100",
    "   :header-rows: 1",
    "",
    "   * - method",
    "     - held-out maps (frozen probability 0.8)",
    "     - OOD: more holes (0.6)",
]
for method, name in NAMES.items():
    lines += [f"   * - {name}"] + [f"     - {cell(rows[(method, task)])}" for task in TASKS]
oracle = [float(rows[("rl3", task)]["oracle_mean"]) for task in TASKS]
lines += ["", f"The normaliser, the oracle's expected return, is {oracle[0]:.2f} in distribution and {oracle[1]:.2f} "
          "with more holes (mean over the same maps).", ""]
(HERE / "table.rst").write_text("\n".join(lines))
