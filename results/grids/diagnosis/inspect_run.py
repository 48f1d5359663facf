"""Inspect a gridworld PPO run's checkpoint: what the policy does and how well the critic follows the returns.

For each run folder (its ``checkpoint.pt``) or checkpoint file given (e.g. ``RUN/checkpoints/iteration_000025.pt``), the
actor and critic of the checkpoint play one meta-episode on each of
``--num-tasks`` fresh held-out grids (test split), the actor taking its most likely action at every step (the mode of
its distribution, not a sample: what the policy prefers, not what a training batch holds); the script prints one
JSON line with:

- ``return``: the mean meta-episode return; ``goal_rate``: the fraction of inner episodes that reached the goal
  (an unfinished last inner episode counts as not reaching it); ``episodes``: inner episodes started per task;
- ``noop``: the fraction of steps whose action is noop; ``on_warning``: the fraction of steps spent on a warning
  tile; ``noop_on_warning``: the policy's mean probability of noop there;
- ``value_over_return``: the critic's mean value (in reward units, i.e. divided by ``ppo.reward_scale``) over the
  mean discounted return-to-go at ``ppo.gamma`` of the same steps; ``explained_variance``: 1 − Var(G − V) / Var(G)
  over all steps of the batch;
- ``advantage_reward_corr``: the correlation of the GAE advantage with the step's own reward, i.e. how much of the
  policy's learning signal is the immediate reward.

Usage: ``python results/grids/diagnosis/inspect_run.py RUN_DIR_OR_CHECKPOINT [...] [--num-tasks 64]``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rl3_torchrl.checkpoint import load_checkpoint
from rl3_torchrl.envs.gridworld_generator import GOAL, WARNING
from rl3_torchrl.tasks import make_meta_env
from rl3_torchrl.training import CHECKPOINT_NAME, CONFIG_NAME, Trainer, load_config


def discounted_return_to_go(reward: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = r_t + γ G_{t+1}`` over each whole meta-episode (``[B, H]``; nothing follows the last step)."""
    out, running = torch.zeros_like(reward), torch.zeros_like(reward[:, 0])
    for t in reversed(range(reward.shape[1])):
        running = reward[:, t] + gamma * running
        out[:, t] = running
    return out


def inspect(path: Path, num_tasks: int, seed: int) -> dict:
    checkpoint = path / CHECKPOINT_NAME if path.is_dir() else path
    run = next(folder for folder in checkpoint.parents if (folder / CONFIG_NAME).exists())
    cfg = load_config([f"config={run / CONFIG_NAME}", "checkpoint.resume=true", "checkpoint.overwrite=false",
                      "logger.backend=\"\""])
    trainer = Trainer(cfg)
    state = load_checkpoint(checkpoint)
    trainer.load_state_dict(state)
    env = make_meta_env(cfg.env, cfg.algo, num_tasks, horizon=trainer.horizon, seed=seed, split="test",
                        observe_tiles=True)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        data = env.rollout(trainer.horizon, trainer.actor, break_when_any_done=False)
        trainer.advantages(data)
    tiles = data["tiles"][:, 0]
    cell, action = data["state"], data["action"]
    reward = data["next", "reward"].squeeze(-1)
    on_warning = tiles.gather(1, cell) == WARNING
    noop_p = data["logits"].softmax(-1)[..., 0]
    goals = (data["next", "inner_terminated"].squeeze(-1) & (tiles.gather(1, data["next", "reached_state"]) == GOAL))
    episodes = data["next", "inner_done"].squeeze(-1).sum(1) + 1 - data["next", "inner_done"][:, -1].squeeze(-1).long()
    value = data["state_value"].squeeze(-1) / cfg.ppo.reward_scale
    target = discounted_return_to_go(reward, cfg.ppo.gamma)
    advantage = data["advantage"].flatten()
    corr = torch.corrcoef(torch.stack([advantage, reward.flatten()]))[0, 1]
    return {
        "checkpoint": str(checkpoint), "iteration": state["iteration"], "algo": cfg.algo, "reward_scale": cfg.ppo.reward_scale,
        "gamma": cfg.ppo.gamma, "return": float(reward.sum(1).mean()),
        "goal_rate": float(goals.sum() / episodes.sum()), "episodes": float(episodes.float().mean()),
        "noop": float((action == 0).float().mean()), "on_warning": float(on_warning.float().mean()),
        "noop_on_warning": float(noop_p[on_warning].mean()) if bool(on_warning.any()) else None,
        "value_over_return": float(value.mean() / target.mean()),
        "explained_variance": float(1 - (target - value).var() / target.var()),
        "advantage_reward_corr": float(corr),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--num-tasks", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2306)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    for path in args.paths:
        print(json.dumps(inspect(path, args.num_tasks, args.seed)), flush=True)


if __name__ == "__main__":
    main()
