"""Where a collection step's time goes: the stock Collector's step against its parts measured alone, in one run.

For a config's env pipeline and actor (the default config, RL³, or ``--algo rl2``, ``--config paper_random_mdp``,
``--device cuda``) it times, per batched step of ``num_envs`` envs over whole meta-episodes: the env with every
transform (random actions, through ``step_and_maybe_reset``); the backbone's cached step alone
(``MetaCausalTransformer.step`` on a ready token); the bare actor step, i.e. the actor's arithmetic in plain torch
on plain tensors (token concatenation, the backbone's step, the head, the categorical sample and its log-prob, no
TensorDict); the whole actor (TensorDict in and out, distribution object, sampling); and a full step of the stock
``Collector`` built as the ``Trainer`` builds it (``make_collector``).
It prints each in ms and the issue-#14 ratio: collector step / (env + transforms + bare actor step), target ≤ 1.5
(and, for comparison with earlier runs, the ratio with the bare backbone step in place of the bare actor step).

    python benchmarks/collection_step.py --threads 1
    python benchmarks/collection_step.py --threads 1 --algo rl2 --num-envs 64
    python benchmarks/collection_step.py --config paper_random_mdp --device cuda --repeats 3
"""
from __future__ import annotations

import argparse
import time

import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rl3_torchrl.collectors import make_collector
from rl3_torchrl.modules import MetaTransformerModule
from rl3_torchrl.modules.actor_critic import _sample_categorical
from rl3_torchrl.tasks import make_meta_env
from rl3_torchrl.training import actor_critic_from_config, load_config


def best_of(repeats: int, parts: dict) -> dict:
    """The fastest of ``repeats`` runs of each part (seconds per step, as each returns it), the parts interleaved
    in every round so that a slow spell of the machine falls on all of them alike."""
    for fn in parts.values():
        fn()  # warm-up
    rounds = [{name: fn() for name, fn in parts.items()} for _ in range(repeats)]
    return {name: min(r[name] for r in rounds) for name in parts}


def bare_actor_step(module: MetaTransformerModule, values: list, is_init: torch.Tensor, cache) -> tuple:
    """The actor's step arithmetic in plain torch on plain tensors: the token (``values`` in the token's key order),
    the backbone's cached step, the head, then the categorical sample and its log-prob that ``CategoricalActor``
    draws (its own helper). Returns ``(action, log_prob)``, each ``[N]``."""
    (head,) = module.heads
    return _sample_categorical(head(module.backbone.step(torch.cat(values, -1), is_init, cache)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="rl3", choices=["rl2", "rl3"])
    parser.add_argument("--config", default="default", help="a named config (default: the recipe's default)")
    parser.add_argument("--num-envs", type=int, default=None, help="default: the config's")
    parser.add_argument("--horizon", type=int, default=None, help="default: the config's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = load_config([f"algo={args.algo}"], config=None if args.config == "default" else args.config)
    H, B, device = args.horizon or cfg.horizon, args.num_envs or cfg.num_envs, torch.device(args.device)
    env = make_meta_env(cfg.env, args.algo, B, horizon=H, seed=0, device=device,
                        prev_observation=cfg.model.prev_observation)  # fmt: skip
    actor, _ = actor_critic_from_config(env, cfg, device)
    module = next(m for m in actor.modules() if isinstance(m, MetaTransformerModule))
    n_actions = env.action_spec.space.n

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def env_only():
        td = env.reset()
        start = clock()
        for _ in range(H):
            td["action"] = torch.randint(n_actions, (B,), device=device)
            _, td = env.step_and_maybe_reset(td)
        return (clock() - start) / H

    # the actor's inputs of one real meta-episode, replayed on their own
    with torch.no_grad():
        inputs, td = [], env.reset()
        for _ in range(H):
            inputs.append(td.clone())
            _, td = env.step_and_maybe_reset(actor(td))

    tokens = [module._inputs(x) for x in inputs]

    def backbone_only():
        cache = module.backbone.make_cache(tokens[0][0])
        start = clock()
        for x, is_init in tokens:
            module.backbone.step(x, is_init, cache)
        return (clock() - start) / H

    # the same inputs as plain float tensors, in the token's key order
    parts = [[x.get(key).reshape(B, -1).to(tokens[0][0].dtype) for key in module.token_keys] for x in inputs]

    def bare_actor():
        cache = module.backbone.make_cache(tokens[0][0])
        start = clock()
        for values, (_, is_init) in zip(parts, tokens):
            bare_actor_step(module, values, is_init, cache)
        return (clock() - start) / H

    def actor_only():
        module.reset_cache()
        copies = [x.clone() for x in inputs]
        start = clock()
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):  # as the collector samples
            for x in copies:
                actor(x)
        return (clock() - start) / H

    collector = make_collector("single", None, actor, env=env, frames_per_batch=B * H, total_frames=-1,
                               device=device)
    batches = iter(collector)

    def collector_step():
        start = clock()
        next(batches)
        return (clock() - start) / H

    times = best_of(args.repeats, {"env + transforms": env_only, "backbone step": backbone_only,
                                   "bare actor step": bare_actor, "actor step": actor_only,
                                   "collector step": collector_step})
    collector.shutdown()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; {args.algo}, {cfg.env}, {B} "
          f"envs, H = {H}, {args.config} config's model; best of {args.repeats} meta-episodes, ms per batched step")
    for name, seconds in times.items():
        print(f"{name:<18}{seconds * 1e3:8.3f} ms")
    ratio = times["collector step"] / (times["env + transforms"] + times["bare actor step"])
    print(f"collector step / (env + transforms + bare actor step) = {ratio:.2f}  target ≤ 1.5: "
          f"{'met' if ratio <= 1.5 else 'missed'}")
    backbone_ratio = times["collector step"] / (times["env + transforms"] + times["backbone step"])
    print(f"collector step / (env + transforms + backbone step) = {backbone_ratio:.2f}  (earlier, stricter reading)")
    print(f"actor step / bare actor step = {times['actor step'] / times['bare actor step']:.2f}")
    return {**times, "ratio": ratio, "backbone ratio": backbone_ratio}


if __name__ == "__main__":
    main()
