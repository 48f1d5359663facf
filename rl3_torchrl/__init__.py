"""rl3_torchrl: RL³ (meta-RL with online Q-value estimates) as composable TorchRL components.

Subpackages: :mod:`rl3_torchrl.envs` (task families and exact oracles), :mod:`rl3_torchrl.transforms` (the RL²
inputs and the online Q estimator), :mod:`rl3_torchrl.modules` (the KV-cached Transformer actor-critic and
baseline policies); modules :mod:`rl3_torchrl.tasks` (named tasks and the env pipeline),
:mod:`rl3_torchrl.training` (PPO meta-training), :mod:`rl3_torchrl.objectives` (decoupled PPO),
:mod:`rl3_torchrl.evaluation` and :mod:`rl3_torchrl.plotting`.
"""
from rl3_torchrl.checkpoint import CheckpointError, RunLock, load_checkpoint, save_checkpoint
from rl3_torchrl.envs import (
    GridworldEnv,
    MetaTaskEnv,
    RandomMDPEnv,
    TrialEnv,
    finite_horizon_values,
    optimal_actions,
    oracle_return,
    plot_grid,
    random_policy_return,
    render_text,
)
from rl3_torchrl.evaluation import evaluate, evaluate_actor, evaluate_baseline, run_meta_episodes
from rl3_torchrl.modules import (
    CategoricalActor,
    MetaCausalTransformer,
    MetaTransformerModule,
    ModelBasedPolicy,
    OraclePolicy,
    QGreedyPolicy,
    RandomPolicy,
    causal_attention,
    make_actor_critic,
)
from rl3_torchrl.minibatch_backward import MinibatchBackward
from rl3_torchrl.modules.transformer import _old_name_getattr
from rl3_torchrl.objectives import DecoupledClipPPOLoss
from rl3_torchrl.tasks import TASKS, make_meta_env, make_task_env, register_task, task_family
from rl3_torchrl.training import NonFiniteError, Trainer, load_actor, load_config, train
from rl3_torchrl.transforms import MetaRLInputs, OnlineQEstimator, StateAbstraction

__version__ = "0.1.0"
__getattr__ = _old_name_getattr(__name__)

__all__ = [
    "TASKS",
    "CategoricalActor",
    "CheckpointError",
    "DecoupledClipPPOLoss",
    "GridworldEnv",
    "MetaCausalTransformer",
    "MetaRLInputs",
    "MetaTaskEnv",
    "MetaTransformerModule",
    "MinibatchBackward",
    "ModelBasedPolicy",
    "NonFiniteError",
    "OnlineQEstimator",
    "OraclePolicy",
    "QGreedyPolicy",
    "RandomMDPEnv",
    "RandomPolicy",
    "RunLock",
    "StateAbstraction",
    "Trainer",
    "TrialEnv",
    "causal_attention",
    "evaluate",
    "evaluate_actor",
    "evaluate_baseline",
    "finite_horizon_values",
    "load_actor",
    "load_checkpoint",
    "load_config",
    "make_actor_critic",
    "make_meta_env",
    "make_task_env",
    "optimal_actions",
    "oracle_return",
    "plot_grid",
    "random_policy_return",
    "register_task",
    "render_text",
    "run_meta_episodes",
    "save_checkpoint",
    "task_family",
    "train",
]
