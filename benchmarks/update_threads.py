"""A PPO minibatch's backward passes: one thread, torch's intra-op threads, or ``MinibatchBackward`` on two threads.

Builds the trainer of a config (RL³ by default), collects one batch, computes its advantages and times
``MinibatchBackward`` on the same minibatches in three settings, each with the actor training and with the actor
stopped by the KL stop (the critic alone), on an otherwise idle machine and beside a process that spins on one core
(what the ``collector.backend=async`` worker does while it collects). Prints ms per minibatch and each setting's
speed-up over the sequential backward on one torch thread measured in the same run.

    python benchmarks/update_threads.py                           # paper random-MDP config, 6 minibatches each
    python benchmarks/update_threads.py --config default --algo rl2
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import torch

from rl3_torchrl.minibatch_backward import MinibatchBackward
from rl3_torchrl.training import ActorKLStop, Trainer, load_config


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _time(backward: MinibatchBackward, batches: list, actor: bool, threads: int, repeats: int) -> float:
    """Best of ``repeats`` rounds of ms per minibatch, with ``threads`` torch threads on the calling thread."""
    caller = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = float("inf")
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in batches:
                stop = ActorKLStop(None)
                stop.active = actor
                for p in backward.loss_module.parameters():
                    p.grad = None
                backward(batch, stop)
            best = min(best, (time.perf_counter() - start) / len(batches) * 1e3)
    finally:
        torch.set_num_threads(caller)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper_random_mdp", help="default or a named config")
    parser.add_argument("--algo", default="rl3")
    parser.add_argument("--minibatches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="the cores to use (torch threads of the sequential)")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)
    overrides = [f"algo={args.algo}", "iterations=1", "eval.every=0", "logger.backend=''", "progress=false",
                 f"output_dir={tempfile.mkdtemp()}", *args.overrides]  # fmt: skip
    trainer = Trainer(load_config(overrides, config=None if args.config == "default" else args.config))
    with trainer.run() as batches:
        data = next(iter(batches))
        trainer.advantages(data)
        trainer.end_iteration(data, {})
    trainer.buffer.extend(data)
    minibatches = [trainer.buffer.sample() for _ in range(args.minibatches)]
    settings = {
        "sequential, 1 torch thread": (MinibatchBackward(trainer.loss), 1),
        f"sequential, {args.threads} torch threads": (MinibatchBackward(trainer.loss), args.threads),
        f"update_threads={args.threads}": (MinibatchBackward(trainer.loss, threads=args.threads), args.threads),
    }
    print(f"# torch {torch.__version__}, {args.config} {args.algo}, minibatch {tuple(minibatches[0].shape)}, "
          f"best of {args.repeats} rounds of {args.minibatches} minibatches")  # fmt: skip
    print(f"{'load':<12}{'actor':<9}{'setting':<30}{'ms/minibatch':>14}{'speed-up':>10}")
    results = {}
    for load in ("idle", "busy core"):
        context = mp.get_context("fork")  # the spinner runs plain Python: no torch in the child
        stop, spinner = context.Event(), None
        if load == "busy core":
            spinner = context.Process(target=_spin, args=(stop,), daemon=True)
            spinner.start()
        try:
            for actor in (True, False):
                base = None
                for name, (backward, threads) in settings.items():
                    ms = _time(backward, minibatches, actor, threads, args.repeats)
                    base = base or ms
                    phase = "trains" if actor else "stopped"
                    results[(load, phase, name)] = ms
                    print(f"{load:<12}{phase:<9}{name:<30}{ms:>14.1f}{base / ms:>9.2f}×")
        finally:
            stop.set()
            if spinner is not None:
                spinner.join()
    for backward, _ in settings.values():
        backward.close()
    return results


if __name__ == "__main__":
    main()
