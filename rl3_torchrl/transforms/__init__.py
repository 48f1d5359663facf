"""TorchRL transforms of the RL² and RL³ inputs, and the online model machinery behind them."""
from rl3_torchrl.transforms.abstraction import GRID_RADIUS, StateAbstraction, grid_coordinates
from rl3_torchrl.transforms.count_model import DenseCountModel, SparseCountModel
from rl3_torchrl.transforms.meta_inputs import MetaRLInputs
from rl3_torchrl.transforms.online_q import (
    Q_FEATURE_BLOCKS,
    OnlineQEstimator,
    q_feature_size,
    q_feature_slices,
)
from rl3_torchrl.transforms.value_iteration import DenseBackup, SparseBackup, value_iteration

__all__ = [
    "GRID_RADIUS",
    "DenseBackup",
    "DenseCountModel",
    "MetaRLInputs",
    "OnlineQEstimator",
    "Q_FEATURE_BLOCKS",
    "SparseBackup",
    "SparseCountModel",
    "StateAbstraction",
    "grid_coordinates",
    "q_feature_size",
    "q_feature_slices",
    "value_iteration",
]
