"""Compare results/baselines/duan_table2/results.csv with Duan et al. (2016) Table 2; write comparison.{csv,md}.

    python results/baselines/compare.py

Tolerance: within 2% of the published total (or 2 SE, whichever is wider) for Random, PSRL, ε-greedy and greedy;
5% for OPSRL, UCRL2 and BEB.
"""
import csv
from pathlib import Path

HERE = Path(__file__).parent
PUBLISHED = {  # n inner episodes of 10 steps: totals per trial (Duan et al. 2016, Table 2)
    "random": {10: 100.1, 25: 250.2, 50: 499.7, 75: 749.9, 100: 999.4},
    "psrl": {10: 138.1, 25: 408.8, 50: 904.4, 75: 1417.1, 100: 1939.5},
    "opsrl": {10: 144.1, 25: 425.2, 50: 930.7, 75: 1449.2, 100: 1973.9},
    "ucrl2": {10: 146.6, 25: 424.1, 50: 918.9, 75: 1427.6, 100: 1942.1},
    "beb": {10: 150.2, 25: 427.8, 50: 917.8, 75: 1422.6, 100: 1935.1},
    "eps_greedy": {10: 132.8, 25: 377.3, 50: 823.3, 75: 1293.9, 100: 1778.2},
    "greedy": {10: 130.8, 25: 378.2, 50: 844.0, 75: 1308.6, 100: 1777.8},
}
RL2 = {10: 156.2, 25: 445.7, 50: 936.1, 75: 1428.8, 100: 1913.7}
TOLERANCE = {"random": 0.02, "psrl": 0.02, "eps_greedy": 0.02, "greedy": 0.02, "opsrl": 0.05, "ucrl2": 0.05,
             "beb": 0.05}


def main():
    rows = list(csv.DictReader(open(HERE / "duan_table2" / "results.csv")))
    out = []
    for r in rows:
        method, n = r["method"], int(r["horizon"]) // 10
        if method not in PUBLISHED:
            continue
        ours, se, ref = float(r["return_mean"]), float(r["return_stderr"]), PUBLISHED[method][n]
        allowed = max(TOLERANCE[method] * ref, 2 * se)
        out.append(dict(method=method, n=n, horizon=n * 10, ours=round(ours, 1), stderr=round(se, 1), published=ref,
                        diff_pct=round(100 * (ours - ref) / ref, 1), allowed=round(allowed, 1),
                        within=abs(ours - ref) <= allowed))
    with open(HERE / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    methods = list(PUBLISHED)
    lines = ["| n (H) | " + " | ".join(methods) + " | RL² (published) |", "|---" * (len(methods) + 2) + "|"]
    for n in (10, 25, 50, 75, 100):
        cells = []
        for m in methods:
            row = next((o for o in out if o["method"] == m and o["n"] == n), None)
            if row is None:
                cells.append("—")
                continue
            mark = "✓" if row["within"] else "✗"
            cells.append(f"{row['ours']} ± {row['stderr']} / {row['published']} ({row['diff_pct']:+}%) {mark}")
        lines.append(f"| {n} ({n * 10}) | " + " | ".join(cells) + f" | {RL2[n]} |")
    text = "\n".join(lines) + "\n\nEach cell: ours ± SE / published (difference) ✓ within tolerance, ✗ not.\n"
    (HERE / "comparison.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
