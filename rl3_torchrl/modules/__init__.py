"""Policy-side modules: the causal Transformer with a KV cache, the RL²/RL³ actor-critic builders and the baseline
policies (tabular ones, and the model-based agents of :mod:`rl3_torchrl.modules.bayesian`)."""
from .bayesian import (
    ModelBasedPolicy,
    PosteriorMeanPlanner,
    PosteriorModel,
    PosteriorSamplingPlanner,
    TaskPrior,
    UCRL2Planner,
    finite_horizon_q,
    optimistic_transition_values,
)
from .actor_critic import INPUT_KEYS, RL2_INPUT_KEYS, RL3_INPUT_KEYS, CategoricalActor, make_actor_critic
from .tabular import OraclePolicy, QGreedyPolicy, RandomPolicy
from .attention_kernel import causal_attention
from .transformer import ATTENTIONS, POSITIONS, MetaCausalTransformer, MetaTransformerModule, _old_name_getattr

__getattr__ = _old_name_getattr(__name__)

__all__ = [
    "MetaCausalTransformer",
    "MetaTransformerModule",
    "POSITIONS",
    "ATTENTIONS",
    "causal_attention",
    "make_actor_critic",
    "CategoricalActor",
    "RL2_INPUT_KEYS",
    "RL3_INPUT_KEYS",
    "INPUT_KEYS",
    "OraclePolicy",
    "QGreedyPolicy",
    "RandomPolicy",
    "ModelBasedPolicy",
    "PosteriorModel",
    "TaskPrior",
    "PosteriorMeanPlanner",
    "PosteriorSamplingPlanner",
    "UCRL2Planner",
    "finite_horizon_q",
    "optimistic_transition_values",
]
