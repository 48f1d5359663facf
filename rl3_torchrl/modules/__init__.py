"""Policy-side modules: the causal Transformer with a KV cache and the RL²/RL³ actor-critic builders."""
from .actor_critic import INPUT_KEYS, RL2_INPUT_KEYS, RL3_INPUT_KEYS, make_actor_critic
from .tabular import OraclePolicy, QGreedyPolicy, RandomPolicy
from .transformer import CausalTransformer, TransformerModule

__all__ = [
    "CausalTransformer",
    "TransformerModule",
    "make_actor_critic",
    "RL2_INPUT_KEYS",
    "RL3_INPUT_KEYS",
    "INPUT_KEYS",
    "OraclePolicy",
    "QGreedyPolicy",
    "RandomPolicy",
]
