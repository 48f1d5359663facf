"""Where a collection step's time goes: the stock Collector's step against its parts measured alone, in one run.

For a config's env pipeline and actor (the default config, RL³, or ``--algo rl2``, ``--config paper_random_mdp``,
``--device cuda``) it times, per batched step of ``num_envs`` envs over whole meta-episodes: the env with every
transform (random actions, through ``step_and_maybe_reset``); the backbone's cached step alone
(``MetaCausalTransformer.step`` on a ready token); the whole actor (TensorDict in and out, heads, distribution,
sampling); and a full step of the stock ``Collector``.
It prints each in ms and the issue-#14 ratio: collector step / (env + transforms + bare backbone step), target ≤ 1.5.

    python benchmarks/collection_step.py --threads 1
    python benchmarks/collection_step.py --threads 1 --algo rl2 --num-envs 64
    python benchmarks/collection_step.py --config paper_random_mdp --device cuda --repeats 3
"""
from __future__ import annotations

import argparse
import time

import torch
from torchrl.collectors import Collector

from rl3_torchrl.modules import MetaTransformerModule
from rl3_torchrl.tasks import make_meta_env
from rl3_torchrl.training import actor_critic_from_config, load_config


def best_of(repeats: int, fn) -> float:
    """The fastest of ``repeats`` runs of ``fn`` (seconds per step, as ``fn`` returns it)."""
    fn()  # warm-up
    return min(fn() for _ in range(repeats))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="rl3", choices=["rl2", "rl3"])
    parser.add_argument("--config", default="default", help="a named config (default: the recipe's default)")
    parser.add_argument("--num-envs", type=int, default=None, help="default: the config's")
    parser.add_argument("--horizon", type=int, default=None, help="default: the config's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
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

    def backbone_only():
        tokens = [module._inputs(x) for x in inputs]
        cache = module.backbone.make_cache(tokens[0][0])
        start = clock()
        for x, is_init in tokens:
            module.backbone.step(x, is_init, cache)
        return (clock() - start) / H

    def actor_only():
        module.reset_cache()
        copies = [x.clone() for x in inputs]
        start = clock()
        with torch.no_grad():
            for x in copies:
                actor(x)
        return (clock() - start) / H

    collector = Collector(env, actor, frames_per_batch=B * H, total_frames=-1, reset_at_each_iter=True,
                          auto_register_policy_transforms=False)
    batches = iter(collector)

    def collector_step():
        start = clock()
        next(batches)
        return (clock() - start) / H

    times = {name: best_of(args.repeats, fn) for name, fn in (
        ("env + transforms", env_only), ("backbone step", backbone_only), ("actor step", actor_only),
        ("collector step", collector_step))}
    collector.shutdown()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; {args.algo}, {cfg.env}, {B} "
          f"envs, H = {H}, {args.config} config's model; best of {args.repeats} meta-episodes, ms per batched step")
    for name, seconds in times.items():
        print(f"{name:<18}{seconds * 1e3:8.3f} ms")
    parts = times["env + transforms"] + times["backbone step"]
    ratio = times["collector step"] / parts
    print(f"collector step / (env + transforms + backbone step) = {ratio:.2f}  target ≤ 1.5: "
          f"{'met' if ratio <= 1.5 else 'missed'}")
    print(f"actor step / backbone step = {times['actor step'] / times['backbone step']:.2f}")
    return {**times, "ratio": ratio}


if __name__ == "__main__":
    main()
