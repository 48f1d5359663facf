"""Throughput of the RL² input pipeline against the RL³ pipeline (the same plus OnlineQEstimator).

Each configuration runs whole meta-episodes with uniformly random actions written straight into the tensordict
(``step_and_maybe_reset`` loop, no policy overhead). The RL² and RL³ pipelines of one env are interleaved and
repeated; the script prints the median and best env-steps/s of each, their ratio, and for gridworlds the
distribution of value-iteration sweeps per step.

For the 13×13 gridworlds it also runs both estimators with value iteration cut to a single sweep per step (a
"one-sweep floor": everything the estimator does besides iterating). The floor of the coarse variant against the
real fine pipeline bounds the coarse/fine ratio that any faster value iteration for the coarse model could give.

With ``--ours`` it also runs the random-MDP and fine 13×13 estimators under this project's earlier conventions
(``reward_model="pair", restart_features="fresh"``) against the presets' paper rules, to show what the paper's
per-transition reward estimate and cached restart features cost per step.

Run: ``python benchmarks/online_q.py`` (``--repeats``, ``--threads``, ``--ours``; ``--quick`` for a smoke run).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchrl.envs import Compose, TransformedEnv

from rl3_torchrl.envs import GridworldEnv, RandomMDPEnv
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator

TARGETS = {"mdp B=64": 50e3, "mdp B=1024": 300e3, "grid13 B=96": 20e3}


def run_meta_episode(env, steps, sweeps=None, sizes=None, work=None):
    """Reset, then ``steps`` random steps; returns env-steps per second.

    With ``sweeps`` (a list), appends the VI sweeps of every row at every step, and to ``work`` (a list) their
    value-iteration work (sweeps × (edges + known states × actions), the entries one sweep of the sparse backup
    visits); with ``sizes`` (a list), appends the
    mean known states, edges, share of untried (state, action) pairs and value per row just before the final step's
    reset.
    """
    B, A = env.batch_size[0], env.action_spec.space.n
    td = env.reset()
    estimator = env.transform[-1] if isinstance(env.transform[-1], OnlineQEstimator) else None
    start = time.perf_counter()
    for _ in range(steps):
        td["action"] = torch.randint(A, (B,))
        _, td = env.step_and_maybe_reset(td)
        if sweeps is not None and estimator is not None:
            sweeps.append(estimator.sweeps.clone())
            if hasattr(estimator.model, "n_edges"):  # a sweep of the sparse backup visits every edge and (s, a)
                model = estimator.model
                work.append(estimator.sweeps * (model.n_edges + model.n_known * A))
    elapsed = time.perf_counter() - start
    model = None if estimator is None else estimator.model
    if sizes is not None and hasattr(model, "n_edges"):
        td["action"] = torch.randint(A, (B,))  # one more step, reported before its reset
        env.step(td)
        known = model.known(model.q.shape[1])
        untried = ((model.counts == 0) & known[..., None]).flatten(1).sum(-1) / (known.sum(-1) * A)
        value = (model.q.amax(-1) * known).sum(-1) / known.sum(-1)
        sizes.append([x.float().mean().item() for x in (model.n_known, model.n_edges, untried, value)])
    return B * steps / elapsed


def pipelines(base, preset, **estimator_kwargs):
    rl2 = TransformedEnv(base, Compose(MetaRLInputs()))
    rl3 = TransformedEnv(base, Compose(MetaRLInputs(), OnlineQEstimator.from_preset(preset, **estimator_kwargs)))
    return rl2, rl3


def describe_sweeps(sweeps, work):
    per_row = torch.stack(sweeps).flatten().float()
    entries = torch.stack(work).flatten().float()
    per_step = torch.stack(sweeps).amax(1).float()
    q = torch.tensor([0.5, 0.9, 0.99, 1.0])
    rq, sq = per_row.quantile(q).tolist(), per_step.quantile(q).tolist()
    fmt = "p50 {:.0f} / p90 {:.0f} / p99 {:.0f} / max {:.0f}"
    return (
        f"    VI sweeps per row-step: mean {per_row.mean():.2f}, {fmt.format(*rq)}\n"
        f"    VI sweeps per step (slowest row): mean {per_step.mean():.2f}, {fmt.format(*sq)}\n"
        f"    VI work per row-step (sweeps × (edges + known states × actions)): mean {entries.mean():.0f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the 2-core VMs are shared)")
    parser.add_argument("--quick", action="store_true", help="short meta-episodes, one repeat")
    parser.add_argument("--ours", action="store_true", help="also time our earlier conventions (pair, fresh)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    short = 40 if args.quick else None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {repeats}")

    ours = dict(reward_model="pair", restart_features="fresh")
    cases = []
    for B in (64, 1024):
        base = RandomMDPEnv(num_envs=B, horizon=short or 512, seed=0, validate_actions=False)
        cases.append((f"mdp B={B}", base, "random_mdp", {}))
        if args.ours:
            cases.append((f"mdp B={B} ours", base, "random_mdp", ours))
    grid = GridworldEnv.from_preset("13x13", num_envs=96, seed=0, validate_actions=False)
    if short:
        grid = GridworldEnv.from_preset("13x13", num_envs=96, seed=0, validate_actions=False, horizon=short)
    cases.append(("grid13 B=96", grid, "gridworld", {}))
    if args.ours:
        cases.append(("grid13 B=96 ours", grid, "gridworld", ours))
    cases.append(("grid13 B=96 coarse", grid, "gridworld_coarse", {}))
    one_sweep = dict(max_sweeps=1, tol=None)
    cases.append(("grid13 B=96 1-sweep", grid, "gridworld", one_sweep))
    cases.append(("grid13 coarse 1-sweep", grid, "gridworld_coarse", one_sweep))

    results = {}
    for name, base, preset, kwargs in cases:
        rl2, rl3 = pipelines(base, preset, **kwargs)
        steps = base.horizon
        run_meta_episode(rl2, min(steps, 20)), run_meta_episode(rl3, min(steps, 20))  # warm-up
        fast, slow, sweeps, sizes, work = [], [], [], [], []
        for _ in range(repeats):
            fast.append(run_meta_episode(rl2, steps))
            slow.append(run_meta_episode(rl3, steps - 1, sweeps, sizes, work))
        results[name] = statistics.median(slow)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"  target ≥ {target / 1e3:.0f}k: {'met' if results[name] >= target else 'MISSED'}"
        print(
            f"{name:20s} H={steps:4d}  RL² {statistics.median(fast) / 1e3:8.1f}k (best {max(fast) / 1e3:.1f}k)  "
            f"RL³ {statistics.median(slow) / 1e3:8.1f}k (best {max(slow) / 1e3:.1f}k) env-steps/s  "
            f"RL³/RL² {statistics.median(slow) / statistics.median(fast):.3f}{verdict}"
        )
        if preset.startswith("gridworld") and kwargs.get("max_sweeps") is None:
            print(describe_sweeps(sweeps, work))
            known, edges, untried, value = map(statistics.mean, zip(*sizes))
            print(f"    model at the end of a meta-episode: {known:.1f} known states, {edges:.1f} distinct "
                  f"transitions, {untried:.0%} untried pairs, mean V {value:.1f} per row")  # fmt: skip
    fine = results["grid13 B=96"]
    ratio = results["grid13 B=96 coarse"] / fine
    verdict = "met" if ratio >= 1.5 else "MISSED"
    print(f"coarse / fine RL³ throughput on 13x13: {ratio:.2f}x  target ≥ 1.5x: {verdict}")
    bound = results["grid13 coarse 1-sweep"] / fine
    print(f"coarse with a one-sweep VI / fine as is: {bound:.2f}x (the most a faster coarse VI could give)")


if __name__ == "__main__":
    main()
