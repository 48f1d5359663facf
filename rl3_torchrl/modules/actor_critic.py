"""Builders of the RL² / RL³ Transformer actor and critic from an environment's specs."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, skip_existing
from tensordict.nn.probabilistic import interaction_type
from torch import nn
from torchrl.data import Categorical, OneHot
from torchrl.modules import OneHotCategorical, ProbabilisticActor

from .transformer import MetaCausalTransformer, MetaTransformerModule

__all__ = ["RL2_INPUT_KEYS", "RL3_INPUT_KEYS", "INPUT_KEYS", "CategoricalActor", "make_actor_critic"]

#: Per-step token of RL² (paper order): previous action (one-hot), previous reward, first-step flag,
#: t/H, tau/T and the task observation.
RL2_INPUT_KEYS = ("prev_action", "prev_reward", "first_step", "meta_step", "episode_step", "observation")
#: RL³ token: the RL² token plus the online Q-estimate features of the current state.
RL3_INPUT_KEYS = RL2_INPUT_KEYS + ("q_features",)
#: Token keys by algorithm name.
INPUT_KEYS = {"rl2": RL2_INPUT_KEYS, "rl3": RL3_INPUT_KEYS}


class CategoricalActor(ProbabilisticActor):
    """A :class:`~torchrl.modules.ProbabilisticActor` over ``torch.distributions.Categorical(logits=...)`` that
    samples without the generic plumbing.

    ``ProbabilisticActor.forward`` resolves dispatch, key bookkeeping and the interaction type at every call: on a
    CPU core that costs about as much as the head, the sampling and the log-prob together (0.1–0.25 ms per
    collection step of the default config, ``benchmarks/README.md``). When a call samples (``RANDOM`` interaction, as
    collectors set it) on a TensorDict, this actor runs the same arithmetic directly: the policy module, then the
    ops of ``Categorical(logits).sample()`` and its ``log_prob``, written in place, bit-identical, without building
    the distribution object or re-validating the logits (the :class:`MetaTransformerModule` of
    :func:`make_actor_critic` checks its outputs on CPU; the ``Trainer`` checks the logits once per batch).
    Every other call (deterministic or mean interaction, keyword inputs, ``tensordict_out``,
    ``set_skip_existing(True)``) is ``ProbabilisticActor.forward``, and ``get_dist`` (what the losses call) is
    inherited, so losses, value estimators and collectors see a ``ProbabilisticActor``. Takes
    ``ProbabilisticActor``'s arguments, with one policy module, ``distribution_class=torch.distributions.Categorical``
    and ``return_log_prob=True``.

    Examples:
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> logits = TensorDictModule(torch.nn.Linear(3, 4), in_keys=["obs"], out_keys=["logits"])
        >>> actor = CategoricalActor(logits, in_keys=["logits"], distribution_class=torch.distributions.Categorical,
        ...                          return_log_prob=True)
        >>> td = TensorDict(obs=torch.randn(5, 3), batch_size=[5])
        >>> _ = torch.manual_seed(0)
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     fast = actor(td.clone())
        >>> _ = torch.manual_seed(0)
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     stock = ProbabilisticActor.forward(actor, td.clone())
        >>> (fast == stock).all()
        True
    """

    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        last = self._last_module
        if (
            len(self.module) != 2
            or last.distribution_class is not torch.distributions.Categorical
            or not last.return_log_prob
        ):
            raise ValueError(
                f"CategoricalActor samples one torch.distributions.Categorical from one policy module and returns its "
                f"log-prob; got {len(self.module) - 1} policy module(s), distribution_class="
                f"{getattr(last.distribution_class, '__name__', last.distribution_class)}, return_log_prob="
                f"{last.return_log_prob}. Use torchrl.modules.ProbabilisticActor for other settings."
            )
        # what the direct path does not reproduce: it then defers every call to ProbabilisticActor.forward
        self._samples_directly = (
            last.dist_keys == ["logits"]
            and not last.distribution_kwargs
            and last.num_samples is None
            and last._generator is None
            and last._generator_key is None
            and not getattr(last, "safe", False)
            and not self.return_composite
            and not self._select_before_return
            and self.inplace is None
        )

    def forward(self, *args, **kwargs):
        last = self._last_module
        if not (
            self._samples_directly
            and len(args) == 1
            and not kwargs
            and isinstance(args[0], TensorDictBase)
            and (interaction_type() or last.default_interaction_type) is InteractionType.RANDOM
            and not skip_existing()
        ):
            return super().forward(*args, **kwargs)
        tensordict = self.module[0](args[0])
        action, log_prob = _sample_categorical(tensordict.get(last.in_keys[0]))
        tensordict.set(last.dist_sample_keys[0], action)
        tensordict.set(last.log_prob_key, log_prob)
        return tensordict


def _sample_categorical(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Categorical(logits=logits).sample()`` and its ``log_prob``, with torch's own ops (normalised logits,
    ``multinomial`` on their softmax, ``gather``) and without the distribution object; ``logits [..., A]``."""
    log_p = logits - logits.logsumexp(-1, keepdim=True)
    action = torch.multinomial(log_p.softmax(-1).reshape(-1, log_p.shape[-1]), 1, True).reshape(logits.shape[:-1])
    return action, log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def _head(d_model: int, out_features: int, device) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Linear(d_model, out_features, device=device))


def make_actor_critic(env, inputs="rl3", *, share_body: bool = False, device=None, is_init_key="is_init",
                      **sizes):
    """Builds the Transformer actor and critic of RL² or RL³ for ``env``.

    The token of each step is the concatenation of the ``inputs`` read from ``env.observation_spec``: the layout
    :data:`RL2_INPUT_KEYS` (``"rl2"``), :data:`RL3_INPUT_KEYS` (``"rl3"``, also what ``rl3_coarse`` reads; see
    :data:`~rl3_torchrl.tasks.ALGORITHMS` for each algorithm's layout) or any sequence of keys: ``inputs`` *is* the
    actor's and critic's ``in_keys`` (one argument for both the named layouts and explicit keys, so there is no
    separate ``in_keys=``). Any env that provides the keys works: ours, a :class:`~rl3_torchrl.envs.TrialEnv` of
    any episodic env with :class:`~rl3_torchrl.transforms.MetaRLInputs` (and
    :class:`~rl3_torchrl.transforms.OnlineQEstimator` for ``"rl3"``), or your own keys. Inputs of any dtype (e.g. a
    Gymnasium env's int64 one-hot observation) are cast to float. The spec must also hold ``is_init`` (add
    :class:`~torchrl.envs.InitTracker`); where it holds ``first_step`` (written by ``MetaRLInputs``) the modules
    check that it agrees with ``is_init``. As in the paper, actor and critic are separate
    networks, each a :class:`~rl3_torchrl.modules.MetaCausalTransformer` followed by a ReLU → Linear head. With
    ``share_body=True`` one :class:`~rl3_torchrl.modules.MetaTransformerModule` computes both ``logits`` and
    ``state_value`` from a single backbone: the critic is then that very module (the actor also writes
    ``state_value`` during collection).

    With stock TorchRL: pass the actor to a ``Collector`` (``frames_per_batch = B * H``,
    ``reset_at_each_iter=True``: each batch row is one whole meta-episode), compute advantages with
    ``GAE(gamma=..., lmbda=..., value_network=critic, shifted=True)`` (one causal pass per row; collected batches
    carry a ``"time"`` dim, so no ``set_recurrent_mode`` is needed) and train with ``ClipPPOLoss(actor, critic)``
    on whole rows. The modules check their inputs against ``first_step`` (``start_key``) and ``is_init``: a value
    estimator with ``shifted=False``, or a batch that is not whole meta-episodes, raises a ``ValueError`` that says
    what to change (see the tutorial *Your own PPO loop*).

    Args:
        env (EnvBase): the (transformed) environment; its ``action_spec`` must be a
            :class:`~torchrl.data.Categorical` (integer actions) or a :class:`~torchrl.data.OneHot` (one-hot
            actions, e.g. a Gymnasium env's default; the actor then samples a ``OneHotCategorical``).
        inputs (str or sequence of NestedKey): the input layout, ``"rl3"`` (default) or ``"rl2"``, or the keys
            themselves (e.g. ``[*RL2_INPUT_KEYS, "my_features"]``).

    Keyword Args:
        share_body (bool): one backbone for actor and critic. Default False.
        device: where to build the networks. Default ``env.device``.
        is_init_key (NestedKey): the reset flag written by ``InitTracker``. Default ``"is_init"``.
        **sizes: keyword arguments of :class:`~rl3_torchrl.modules.MetaCausalTransformer` (``hidden_sizes``,
            ``d_model``, ``num_layers``, ``num_heads``, ``ffn_dim``, ``dropout``, ``max_len``). ``max_len``
            defaults to ``env.horizon + 1``.

    Returns:
        ``(actor, critic)``: a :class:`~torchrl.modules.ProbabilisticActor` writing ``logits``, ``action``
        and ``action_log_prob`` (a :class:`CategoricalActor` sampling ``torch.distributions.Categorical``, or a
        ``ProbabilisticActor`` of torchrl's ``OneHotCategorical`` for a one-hot action spec), and a
        TensorDictModule writing
        ``state_value``. Both run the step path on per-step data and the window path under
        ``set_recurrent_mode(True)`` (i.e. inside every torchrl loss) or on data with a ``"time"`` dim.

    Examples:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical, Composite, Unbounded
        >>> B, S, A = 4, 10, 5
        >>> sizes = dict(observation=S, prev_action=A, prev_reward=1, first_step=1, meta_step=1, episode_step=1,
        ...              q_features=2 * A + 1)
        >>> spec = Composite({k: Unbounded((B, n)) for k, n in sizes.items()},
        ...                  is_init=Categorical(2, (B, 1), dtype=torch.bool), shape=(B,))
        >>> env = SimpleNamespace(observation_spec=spec, action_spec=Categorical(A, shape=(B,)), horizon=16,
        ...                       device=None)
        >>> actor, critic = make_actor_critic(env, "rl3", d_model=16, hidden_sizes=(32,), ffn_dim=32)
        >>> td = critic(actor(spec.zero().set("is_init", torch.ones(B, 1, dtype=torch.bool))))
        >>> td["action"].shape, td["action_log_prob"].shape, td["state_value"].shape
        (torch.Size([4]), torch.Size([4]), torch.Size([4, 1]))
    """
    if isinstance(inputs, str):
        if inputs not in INPUT_KEYS:
            raise ValueError(f"inputs={inputs!r} is not allowed; choose one of {sorted(INPUT_KEYS)} or pass keys.")
        keys = INPUT_KEYS[inputs]
    else:
        keys = tuple(inputs)
        if not keys:
            raise ValueError("inputs=() names no key; pass a layout name or at least one observation key.")
    spec = env.observation_spec
    available = sorted(map(str, spec.keys(include_nested=True, leaves_only=True)))
    for key in (*keys, is_init_key):
        if key not in spec.keys(include_nested=True):
            hint = " (add torchrl.envs.InitTracker)" if key == is_init_key else ""
            raise ValueError(
                f"inputs={inputs!r} needs the observation key {key!r}{hint}, which env.observation_spec lacks; "
                f"available keys: {available}."
            )
    action_spec = env.action_spec
    if isinstance(action_spec, OneHot):
        distribution = OneHotCategorical
    elif isinstance(action_spec, Categorical) and action_spec.shape == env.observation_spec.shape:
        distribution = torch.distributions.Categorical
    else:
        raise ValueError(
            f"make_actor_critic needs one discrete action per row: a torchrl.data.Categorical action_spec of shape "
            f"{tuple(env.observation_spec.shape)} or a OneHot one, got {type(action_spec).__name__} of shape "
            f"{tuple(action_spec.shape)}."
        )
    start_key = "first_step" if "first_step" in spec.keys(include_nested=True) else None
    if "max_len" not in sizes:
        horizon = getattr(env, "horizon", None)
        if horizon is None:
            raise ValueError("pass max_len=H + 1: the env has no `horizon` attribute to derive it from.")
        sizes["max_len"] = int(horizon) + 1
    device = torch.device(device) if device is not None else env.device
    in_features = sum(spec[key].shape[-1] for key in keys)
    num_actions = int(action_spec.space.n)

    def transformer_module(out_keys, out_sizes):
        backbone = MetaCausalTransformer(in_features, device=device, **sizes)
        heads = [_head(backbone.d_model, n, device) for n in out_sizes]
        return MetaTransformerModule(
            backbone, heads, in_keys=list(keys), out_keys=out_keys, is_init_key=is_init_key, start_key=start_key
        )

    if share_body:
        policy_module = critic = transformer_module(["logits", "state_value"], [num_actions, 1])
    else:
        policy_module = transformer_module(["logits"], [num_actions])
        critic = transformer_module(["state_value"], [1])
    actor_class = CategoricalActor if distribution is torch.distributions.Categorical else ProbabilisticActor
    actor = actor_class(
        policy_module,
        in_keys=["logits"],
        spec=action_spec,
        distribution_class=distribution,
        return_log_prob=True,
    )
    return actor, critic
