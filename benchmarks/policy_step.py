"""Per-step cost of the Transformer actor+critic: KV-cached step path vs recomputing the whole context.

For a batch of B streams (RL³ token of a 10-state / 5-action random MDP, paper-size networks) it measures:

* the cached step path (what the collector runs) at context position t, i.e. the t-th step of a meta-episode;
* recomputing the full context at the same t (the window path on the [B, t] prefix), which is what a policy
  without a cache would pay per step;
* one window-path forward+backward of actor and critic on [B, 512] (the training cost of a minibatch).

Every figure is the best of ``--repeats`` runs (per-step costs: median over steps t-2 .. t+2 of a stream), which
is the least disturbed by other load on a shared machine. Run ``python benchmarks/policy_step.py`` (paper sizes,
B=64, t up to 2048) or ``--quick`` for a smoke run.
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.modules import set_recurrent_mode

from rl3_torchrl.modules import make_actor_critic

N_STATES, N_ACTIONS = 10, 5


def build(batch: int, max_len: int):
    """Actor and critic from make_actor_critic on a spec-only stand-in of the RL³ random-MDP env."""
    widths = dict(observation=N_STATES, prev_action=N_ACTIONS, prev_reward=1, first_step=1, meta_step=1,
                  episode_step=1, q_features=2 * N_ACTIONS + 1)
    spec = Composite({k: Unbounded((batch, n)) for k, n in widths.items()},
                     is_init=Categorical(2, (batch, 1), dtype=torch.bool), shape=(batch,))
    env = SimpleNamespace(observation_spec=spec, action_spec=Categorical(N_ACTIONS, shape=(batch,)),
                          horizon=max_len - 1, device=torch.device("cpu"))
    actor, critic = make_actor_critic(env, "rl3")
    return actor, critic, spec


def random_steps(spec, length: int):
    """A [B, length] TensorDict of random tokens, one meta-episode per row."""
    data = spec.rand().unsqueeze(-1).expand(*spec.shape, length).clone()
    for key in data.keys():
        if key != "is_init":
            data[key] = torch.randn_like(data[key])
    data["is_init"] = torch.zeros_like(data["is_init"])
    data["is_init"][:, 0] = True
    return data


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def step_costs(actor, critic, data, repeats: int) -> torch.Tensor:
    """ms of actor+critic step calls, ``[repeats, T]``; entry ``[r, t - 1]`` is the t-th step of a stream."""
    length = data.shape[1]
    frames = [data[:, t].clone() for t in range(length)]
    out = torch.empty(repeats, length)
    with torch.no_grad():
        critic(actor(frames[0].clone()))  # allocates the caches once
        for r in range(repeats):
            for t, frame in enumerate(frames):
                out[r, t] = timed(lambda: critic(actor(frame.clone())))
    return out


def recompute_cost(actor, critic, data, t: int, repeats: int) -> float:
    """Best ms of encoding the whole [B, t] prefix with actor and critic (a step without a cache)."""
    prefix = data[:, :t].clone()
    with torch.no_grad(), set_recurrent_mode(True):
        return min(timed(lambda: critic(actor(prefix.clone()))) for _ in range(repeats))


def train_cost(actor, critic, data, repeats: int) -> float:
    """Best ms of a window-path forward+backward of actor and critic on ``data``."""
    def run():
        with set_recurrent_mode(True):
            td = critic(actor(data.clone()))
            (td["logits"].logsumexp(-1).mean() + td["state_value"].mean()).backward()

    run()
    return min(timed(run) for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="number of streams B (default 64)")
    parser.add_argument("--ts", default="1,64,256,512,1024,2048", help="context positions t to report")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (best is kept)")
    parser.add_argument("--train-len", type=int, default=512, help="T of the forward+backward window")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="B=8, t up to 128, train T=64, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.ts, args.repeats, args.train_len = 8, "1,16,64,128", 1, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    ts = sorted(int(t) for t in args.ts.split(","))
    torch.manual_seed(0)
    max_len = max(ts[-1], args.train_len) + 1
    actor, critic, spec = build(args.batch, max_len)
    data = random_steps(spec, max(ts[-1], args.train_len))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={args.batch}, max_len={max_len}, "
          f"actor+critic params {sum(p.numel() for p in (*actor.parameters(), *critic.parameters()))}")

    steps = step_costs(actor, critic, data[:, : ts[-1]], args.repeats)
    rows = []
    for t in ts:
        near = steps[:, max(t - 3, 0): t + 2]  # steps t-2 .. t+2: median over them, best over repeats
        rows.append((t, near.median(1).values.min().item(), recompute_cost(actor, critic, data, t, args.repeats)))
    print(f"\n{'t':>6} {'cached ms/step':>15} {'recompute ms/step':>18} {'recompute/cached':>17}")
    for t, cached, full in rows:
        print(f"{t:>6} {cached:>15.2f} {full:>18.2f} {full / cached:>16.1f}x")
    total = steps.sum(1).min().item()
    print(f"\nwhole stream of {ts[-1]} cached steps: {total / 1e3:.2f} s "
          f"({total / ts[-1]:.2f} ms/step on average, {args.batch * ts[-1] / total:.1f} k frames/s)")
    for t in (512, 2048):
        match = [r for r in rows if r[0] == t]
        if match:
            print(f"speed-up of the cache at t={t}: {match[0][2] / match[0][1]:.1f}x")
    fb = train_cost(actor, critic, data[:, : args.train_len], args.repeats)
    print(f"window forward+backward, actor+critic, [{args.batch}, {args.train_len}]: {fb:.1f} ms")


if __name__ == "__main__":
    main()
