"""Batched meta-RL task families as TorchRL environments, and their exact oracles."""
from rl3_torchrl.envs.meta_env import MetaTaskEnv, stream_seed
from rl3_torchrl.envs.oracle import finite_horizon_values, oracle_return, random_policy_return
from rl3_torchrl.envs.random_mdp import RandomMDPEnv

__all__ = [
    "MetaTaskEnv",
    "RandomMDPEnv",
    "finite_horizon_values",
    "oracle_return",
    "random_policy_return",
    "stream_seed",
]
