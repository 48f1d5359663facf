"""One-command accelerator check: CUDA tests, host syncs, training throughput and peak memory; JSON + markdown out.

On a fresh machine with one NVIDIA GPU and this repository (``pip install -e ".[dev]"`` first, about a minute):

    python benchmarks/gpu_check.py                          # cuda, the paper configs, a few iterations each
    python benchmarks/gpu_check.py --device cpu --quick     # the same stages, tiny sizes, on CPU (CI runs this)

Stages, each recorded in ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``:

1. **tests**: ``pytest -m cuda`` (the tests that need an accelerator; they skip on CPU);
2. **host syncs**: one collection step (actor step + env step with every transform) and one PPO update, run under
   ``torch.cuda.set_sync_debug_mode("warn")``; every synchronising call is listed with the line that made it
   (CUDA only: on CPU nothing synchronises);
3. **throughput**: frames/s of RL² and RL³ (and RL³-coarse on grids) for the paper's random-MDP and gridworld
   configs (``benchmarks/train_throughput.py``'s runs, after one warm-up iteration), of RL³ on the random-MDP
   config with ``collector.backend=async`` (collection in a worker process, overlapped with the update), and of the
   random-MDP config with larger env batches (``--scale``), with the time of collection and update;
4. **memory**: the peak allocated accelerator memory of each run (``torch.cuda.max_memory_allocated``), or the
   process's peak RSS on CPU; of the trainer process only (an ``async`` run's worker is not counted).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import run as train_run, timing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: (config, algos, overrides) of the throughput stage; ``--quick`` adds :data:`QUICK` to every run.
CONFIGS = [
    ("paper_random_mdp", ["rl2", "rl3"], []),
    ("paper_gridworld", ["rl2", "rl3", "rl3_coarse"], []),
]
QUICK = ["num_envs=4", "horizon=24", "ppo.epochs=1", "ppo.minibatch_episodes=2"]
PAPER_TARGET = 50_000  # frames/s of the paper's random-MDP config on one GPU (issue #14)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory since the last reset, or the process's peak RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_tests(device: torch.device) -> dict:
    """``pytest -m cuda`` in a subprocess; returns its exit code, summary line and wall time."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
        cwd=REPO, capture_output=True, text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    # exit code 5: every selected test skipped or none selected (on a machine without an accelerator)
    ok = proc.returncode == 0 or (proc.returncode == 5 and device.type != "cuda")
    return {"returncode": proc.returncode, "ok": ok, "summary": summary, "seconds": time.perf_counter() - start,
            "output_tail": proc.stdout[-3000:] if not ok else ""}


def _short_path(filename: str) -> str:
    """A source file as ``rl3_torchrl/...`` or ``torchrl/...`` (its package), so that a sync names its owner."""
    path = Path(filename)
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    parts = path.parts
    return str(Path(*parts[parts.index("site-packages") + 1:])) if "site-packages" in parts else path.name


class SyncRecorder:
    """Records every synchronising CUDA call made inside the ``with`` block (``torch.cuda.set_sync_debug_mode``),
    as ``package/file.py:line`` of the Python frame that made it, with counts. A no-op off CUDA."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cuda"
        self.calls: Counter = Counter()

    def __enter__(self):
        if self.active:
            self._catch = warnings.catch_warnings(record=True)
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.active:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(*exc)
            for record in self._records:
                message = str(record.message)
                if "synchronizing" in message and "prototype" not in message:
                    self.calls[f"{_short_path(record.filename)}:{record.lineno}"] += 1
        return False

    def as_list(self) -> list[dict]:
        return [{"where": where, "count": n} for where, n in self.calls.most_common()]


def check_syncs(device: torch.device, quick: bool) -> dict:
    """Host syncs of one collection step (after warm-up steps) and of one PPO update, for RL³ on random MDPs."""
    import tempfile

    from rl3_torchrl.training import Trainer, load_config

    overrides = ["algo=rl3", f"device={device}", "iterations=1", "eval.every=0", "logger.backend=''",
                 "progress=false", f"output_dir={tempfile.mkdtemp()}", *(QUICK if quick else [])]
    trainer = Trainer(load_config(overrides, config="paper_random_mdp"))
    env, actor = trainer.env, trainer.actor
    with torch.no_grad():
        td = env.reset()
        for _ in range(3):  # warm-up: the first step builds the KV cache (one deliberate check of is_init)
            _, td = env.step_and_maybe_reset(actor(td))
        with SyncRecorder(device) as collection:
            _, td = env.step_and_maybe_reset(actor(td))
    with trainer.run() as batches:
        data = next(batches)
        trainer.advantages(data)
        minibatches = trainer.cfg.ppo.epochs * -(-trainer.cfg.num_envs // trainer.cfg.ppo.minibatch_episodes)
        with SyncRecorder(device) as update:
            stats = trainer.update(data)
        trainer.end_iteration(data, stats)
    return {
        "checked": device.type == "cuda",
        "collection_step": collection.as_list(),
        "update": update.as_list(),
        "update_minibatches": minibatches,
    }


def throughput(device: torch.device, quick: bool, iterations: int, scale: list[int]) -> list[dict]:
    """Frames/s, phase times and peak memory of each (config, algo) run."""
    runs = [(config, algo, list(extra), "single") for config, algos, extra in CONFIGS for algo in algos]
    runs.append(("paper_random_mdp", "rl3", [], "async"))
    runs += [("paper_random_mdp", "rl3", [f"num_envs={n}", f"ppo.minibatch_episodes={n // 8}"], "single")
             for n in scale]
    rows = []
    for config, algo, extra, backend in runs:
        extra = extra + (QUICK if quick else [])
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        timed, frames = train_run(config, algo, iterations, str(device), extra, backend)
        times = timing(timed, frames)
        rows.append({
            "config": config, "algo": algo, "overrides": extra, "backend": backend, "frames_per_iteration": frames,
            "frames_per_s": times["frames_per_s"], "collection_s": times["time_collection"],
            "q_estimation_s": times["time_q_estimation"], "update_s": times["time_update"],
            "peak_memory_mb": peak_memory_mb(device), "wall_s": time.perf_counter() - start,
        })
        print(f"  {config:<17}{algo:<11}{' '.join([*extra, f'backend={backend}']):<44}"
              f"{rows[-1]['frames_per_s']:>10.0f} frames/s "
              f"(collect {rows[-1]['collection_s']:.2f} s, update {rows[-1]['update_s']:.2f} s, "
              f"peak {rows[-1]['peak_memory_mb']:.0f} MiB)", flush=True)
    return rows


def environment(device: torch.device) -> dict:
    import tensordict
    import torchrl

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__, "device": str(device), "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# gpu_check on {env.get('gpu', env['device'])}", "",
             f"torch {env['torch']}, torchrl {env['torchrl']}, tensordict {env['tensordict']}, python "
             f"{env['python']}, {env['cpu_threads']} CPU threads; mode {'quick' if report['quick'] else 'full'}; "
             f"{report['wall_s']:.0f} s in all.", ""]
    tests = report.get("tests")
    if tests:
        lines += [f"**Tests** (`pytest -m cuda`): {tests['summary']} ({tests['seconds']:.0f} s)", ""]
    syncs = report["syncs"]
    if not syncs["checked"]:
        lines += ["**Host syncs**: not checked (no CUDA device).", ""]
    else:
        for stage, label in (("collection_step", "one collection step"),
                             ("update", f"one update ({syncs['update_minibatches']} minibatches)")):
            found = syncs[stage]
            lines.append(f"**Host syncs in {label}**: {sum(f['count'] for f in found) or 'none'}")
            lines += [f"- `{f['where']}` × {f['count']}" for f in found]
            lines.append("")
    lines += ["| config | algo | backend | overrides | frames/it | frames/s | collection s | of which Q s | update s "
              "| peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["throughput"]:
        lines.append(f"| {r['config']} | {r['algo']} | {r['backend']} | {' '.join(r['overrides']) or '—'} | "
                     f"{r['frames_per_iteration']:,} | {r['frames_per_s']:,.0f} | {r['collection_s']:.2f} | "
                     f"{r['q_estimation_s']:.2f} | {r['update_s']:.2f} | {r['peak_memory_mb']:,.0f} |")
    target = [r for r in report["throughput"]
              if r["config"] == "paper_random_mdp" and not r["overrides"] and r["backend"] == "single"]
    if target:
        rates = ", ".join(f"{r['algo']} {r['frames_per_s']:,.0f}" for r in target)
        met = any(r["frames_per_s"] >= PAPER_TARGET for r in target)
        lines += ["", f"Paper random-MDP config (64 envs), frames/s: {rates}; target ≥ {PAPER_TARGET:,}: "
                      f"{'met' if met else 'not met'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one timed iteration (a smoke run)")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per run (default 2, quick 1)")
    parser.add_argument("--scale", type=int, nargs="*", default=None,
                        help="extra num_envs of the random-MDP RL³ run (default 512 2048 on cuda, none on cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-tests", action="store_true", help="skip the pytest stage")
    parser.add_argument("--out", default="gpu_check", help="folder of gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device; pass --device cpu")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: choose cuda, cuda:N or cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    iterations = args.iterations or (1 if args.quick else 2)
    scale = args.scale if args.scale is not None else ([] if device.type == "cpu" or args.quick else [512, 2048])
    start = time.perf_counter()
    report = {"environment": environment(device), "quick": args.quick}
    print(json.dumps(report["environment"]), flush=True)
    if not args.skip_tests:
        print("tests: pytest -m cuda", flush=True)
        report["tests"] = run_tests(device)
        print("  " + report["tests"]["summary"], flush=True)
    print("host syncs", flush=True)
    report["syncs"] = check_syncs(device, args.quick)
    print("throughput", flush=True)
    report["throughput"] = throughput(device, args.quick, iterations, scale)
    report["wall_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    if report.get("tests") and not report["tests"]["ok"]:
        print(report["tests"]["output_tail"])
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
