"""Batched meta-RL task families as TorchRL environments, and their exact oracles."""
from rl3_torchrl.envs.gridworld import GridworldEnv
from rl3_torchrl.envs.gridworld_generator import GridGenerator, grid_values
from rl3_torchrl.envs.meta_env import MetaTaskEnv, stream_seed
from rl3_torchrl.envs.oracle import finite_horizon_values, optimal_actions, oracle_return, random_policy_return
from rl3_torchrl.envs.random_mdp import RandomMDPEnv
from rl3_torchrl.envs.trial import TrialEnv, reached_key
from rl3_torchrl.envs.rendering import plot_grid, render_text

__all__ = [
    "GridGenerator",
    "GridworldEnv",
    "MetaTaskEnv",
    "RandomMDPEnv",
    "TrialEnv",
    "finite_horizon_values",
    "grid_values",
    "optimal_actions",
    "oracle_return",
    "plot_grid",
    "random_policy_return",
    "reached_key",
    "render_text",
    "stream_seed",
]
