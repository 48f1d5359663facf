"""rl3_torchrl: RL³ (meta-RL with online Q-value estimates) as composable TorchRL components."""
from rl3_torchrl.envs import (
    MetaTaskEnv,
    RandomMDPEnv,
    finite_horizon_values,
    oracle_return,
    random_policy_return,
)

__version__ = "0.1.0"

__all__ = [
    "MetaTaskEnv",
    "RandomMDPEnv",
    "finite_horizon_values",
    "oracle_return",
    "random_policy_return",
]
