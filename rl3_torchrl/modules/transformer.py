"""Causal Transformer backbone with a module-owned KV cache, wrapped as a TensorDictModule.

Two execution paths share the very same weights and code:

* the **window path** (training, ``recurrent_mode()`` is True, e.g. inside every ``LossModule.forward``)
  encodes whole ``[B, T, F]`` sequences under a causal mask; ``is_init`` inside a row starts a new
  meta-episode (block-diagonal mask, positions restart);
* the **step path** (collection) encodes one token per stream and call against a key/value cache kept by
  :class:`MetaTransformerModule` itself, outside the TensorDict, so collected data do not grow with the context.

The names carry a ``Meta`` prefix because ``torchrl>=0.15`` exports its own ``TransformerModule`` and
``CausalTransformer`` (``torchrl.modules``): both packages can be star-imported side by side. The old names stay
importable from this package for a while, with a ``DeprecationWarning``.
"""
from __future__ import annotations

from typing import Sequence

import warnings

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase, is_batchedtensor
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.modules import recurrent_mode

from rl3_torchrl.modules.attention_kernel import HEAD_DIMS, causal_attention, causal_attention_supports, load_kernel

__all__ = ["MetaCausalTransformer", "MetaTransformerModule", "POSITIONS", "ATTENTIONS"]

#: The choices of :class:`MetaCausalTransformer`'s ``positions``.
POSITIONS = ("learned", "none")
#: The choices of :class:`MetaCausalTransformer`'s ``attention``.
ATTENTIONS = ("sdpa", "causal_cpu")
_MAX_LEN_HINT = "max_len must be >= H + 1, where H is the meta-episode length (env.horizon)"
_SHIFTED_HINT = (
    "build the value estimator with shifted=True, which calls the critic once on each row plus its last next step: "
    "GAE(gamma=..., lmbda=..., value_network=critic, shifted=True), or, for the loss's own estimator, "
    "loss = ClipPPOLoss(actor, critic, functional=False) and "
    "loss.make_value_estimator(ValueEstimators.GAE, gamma=..., lmbda=..., shifted=True) (torchrl refuses shifted=True "
    "with the separate target parameters of a functional loss)"
)
_WHOLE_EPISODES_HINT = (
    "collect whole meta-episodes (Collector(..., frames_per_batch=num_envs * H, reset_at_each_iter=True)) and sample "
    "whole rows of them (e.g. ReplayBuffer(storage=LazyTensorStorage(num_envs)) over the [num_envs, H] batch)"
)
_OLD_NAMES = {"CausalTransformer": "MetaCausalTransformer", "TransformerModule": "MetaTransformerModule"}


def _old_name_getattr(module_name: str):
    """A module ``__getattr__`` resolving the names used before the ``Meta`` prefix, with a DeprecationWarning."""

    def __getattr__(name: str):
        if name not in _OLD_NAMES:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        new = _OLD_NAMES[name]
        warnings.warn(
            f"rl3_torchrl's {name} is now {new} (torchrl>=0.15 exports a different {name}); "
            "the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]

    return __getattr__


__getattr__ = _old_name_getattr(__name__)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}.")


class _CausalSelfAttention(nn.Module):
    """Multi-head self-attention whose q/k/v projection is shared by the window and step paths."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, attention="sdpa", device=None, dtype=None):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"d_model must be divisible by num_heads, got d_model={d_model}, num_heads={num_heads}."
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention = attention
        self.qkv = nn.Linear(d_model, 3 * d_model, device=device, dtype=dtype)
        self.proj = nn.Linear(d_model, d_model, device=device, dtype=dtype)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [N, L, d]`` -> q, k, v, each ``[N, heads, L, d // heads]``."""
        n, length, d = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, d // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def attend(self, q, k, v, attn_mask=None, is_causal=False) -> torch.Tensor:
        """Scaled dot-product attention followed by the output projection; returns ``[N, L, d]``.

        With ``attention="causal_cpu"``, causal calls without a mask that the kernel computes
        (:func:`~rl3_torchrl.modules.attention_kernel.causal_attention_supports`) go to it; all others to SDPA.
        """
        dropout = self.dropout if self.training else 0.0
        if self.attention == "causal_cpu" and is_causal and causal_attention_supports(q, attn_mask, dropout):
            out = causal_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).flatten(-2))


class _DecoderLayer(nn.Module):
    """Post-LN decoder block: ``x = LN(x + attn(x)); x = LN(x + ffn(x))``."""

    def __init__(self, d_model, num_heads, ffn_dim, dropout, attention="sdpa", device=None, dtype=None):
        super().__init__()
        self.attn = _CausalSelfAttention(d_model, num_heads, dropout, attention, device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(d_model, device=device, dtype=dtype)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim, device=device, dtype=dtype),
            nn.GELU(),
            nn.Linear(ffn_dim, d_model, device=device, dtype=dtype),
            nn.Dropout(dropout),
        )
        self.norm2 = nn.LayerNorm(d_model, device=device, dtype=dtype)
        self.drop = nn.Dropout(dropout)

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual + norm around the attention output, then the feed-forward sub-block."""
        x = self.norm1(x + self.drop(attn_out))
        return self.norm2(x + self.ffn(x))


class _StreamCache:
    """Per-stream state of the step path (plain tensors, never in a TensorDict or a state_dict).

    ``tokens [N, max_len, F]`` keeps the raw inputs of the current streams so that K/V can be recomputed when
    the parameters change; ``keys``/``values`` hold one ``[N, heads, max_len, d_head]`` tensor per layer;
    ``length [N]`` is the number of tokens of each stream; ``bound`` is a Python-side upper bound on
    ``length.max()`` so that the step path attends over a prefix without a device sync.
    """

    def __init__(self, n, in_features, model: MetaCausalTransformer, device, dtype):
        shape = (n, model.num_heads, model.max_len, model.head_dim)
        zeros = dict(device=device, dtype=dtype)
        # zero-filled (not empty): masked slots are multiplied by 0 weights and must be finite
        self.tokens = torch.zeros(n, model.max_len, in_features, **zeros)
        self.keys = [torch.zeros(shape, **zeros) for _ in model.layers]
        self.values = [torch.zeros(shape, **zeros) for _ in model.layers]
        self.length = torch.zeros(n, dtype=torch.long, device=device)
        self.rows = torch.arange(n, device=device)
        self.bound = 0
        # reading a CPU tensor is not a device sync: there the bound is exact at every step; on accelerators it
        # only grows (restarted streams keep it) and is re-synced when it would exceed max_len
        self.exact_bound = torch.device(device).type == "cpu"
        self.fingerprint = model.fingerprint()

    def matches(self, x: torch.Tensor) -> bool:
        t = self.tokens
        return (x.shape[0], x.shape[-1], x.device, x.dtype) == (t.shape[0], t.shape[-1], t.device, t.dtype)


class MetaCausalTransformer(nn.Module):
    """Causal decoder-only Transformer over per-step tokens (the RL²/RL³ backbone).

    Input MLP (``in_features -> hidden_sizes... -> d_model`` with ReLU between layers), LayerNorm, a learned
    positional embedding with ``max_len`` positions, then ``num_layers`` post-LN decoder blocks
    (multi-head causal self-attention written with :func:`torch.nn.functional.scaled_dot_product_attention`,
    GELU feed-forward). Defaults are the paper's: 256-64 MLP, d_model 64, 4 heads, FFN 256, 2 layers, no dropout.

    :meth:`forward` is the window path (``[N, T, F]`` with optional ``is_init [N, T, 1]``); :meth:`step` is the
    one-token-per-stream path against a cache made by :meth:`make_cache`. Both call the same helpers, so they
    agree to float precision. Position ``p`` of a token is its index since the last ``is_init`` of its row;
    ``p >= max_len`` raises a ``ValueError``: ``max_len`` must be at least ``H + 1``. Like the backbone of
    ``torchrl>=0.15``'s ``TransformerModule``, it exposes ``num_layers``, ``num_heads`` and ``head_dim``
    (``max_len`` is upstream's ``max_seq_len``).

    Args:
        in_features (int): size of the per-step input token.

    Keyword Args:
        max_len (int): number of learned positions (the paper uses ``H + 1``).
        hidden_sizes (sequence of int): hidden widths of the input MLP. Default ``(256,)``.
        d_model (int): model width. Default 64.
        num_layers (int): decoder blocks. Default 2.
        num_heads (int): attention heads. Default 4.
        ffn_dim (int): feed-forward width. Default 256.
        dropout (float): dropout in attention and feed-forward. Default 0.
        positions (str): ``"learned"`` (default, the paper's: a learned embedding per position, so the model cannot
            act past ``max_len - 1`` steps it was trained on) or ``"none"`` (no positional embedding: order comes
            from the causal mask and the ``t / H`` input; such a model can be rebuilt with a larger ``max_len`` and
            act at a longer ``H`` than it was trained at). One of :data:`POSITIONS`.
        attention (str): how the window path attends: ``"sdpa"`` (default,
            :func:`~torch.nn.functional.scaled_dot_product_attention`) or ``"causal_cpu"`` (this package's C++
            kernel, :func:`~rl3_torchrl.modules.causal_attention`: on CPU in float32 it computes
            only the causal half of the scores, which SDPA's CPU kernel does not skip at these lengths; equal up to
            float32 rounding; built at construction on CPU, so it needs a C++ compiler and ``ninja``). Masked windows
            (``is_init`` inside a row), the step path, other devices and dtypes, dropout and ``torch.compile`` use
            SDPA either way. Not a weight: it can change between runs of the same model. One of :data:`ATTENTIONS`.
        device, dtype: where and how to create the parameters.

    Examples:
        >>> import torch
        >>> net = MetaCausalTransformer(7, max_len=9)
        >>> x = torch.randn(3, 8, 7)
        >>> net(x).shape
        torch.Size([3, 8, 64])
        >>> cache = net.make_cache(x[:, 0])
        >>> steps = [net.step(x[:, t], torch.zeros(3, 1, dtype=torch.bool), cache) for t in range(8)]
        >>> torch.allclose(torch.stack(steps, 1), net(x), atol=1e-5)
        True
    """

    def __init__(
        self,
        in_features: int,
        *,
        max_len: int,
        hidden_sizes: Sequence[int] = (256,),
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 256,
        dropout: float = 0.0,
        positions: str = "learned",
        attention: str = "sdpa",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions={positions!r} is not allowed; choose one of {list(POSITIONS)}.")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention={attention!r} is not allowed; choose one of {list(ATTENTIONS)}.")
        for name, value in (
            ("in_features", in_features),
            ("max_len", max_len),
            ("d_model", d_model),
            ("num_heads", num_heads),
            ("ffn_dim", ffn_dim),
        ):
            _check_positive(name, value)
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be a non-negative integer, got num_layers={num_layers!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout!r}.")
        self.in_features = in_features
        self.max_len = max_len
        self.d_model = d_model
        self.num_layers = num_layers
        self.num_heads = num_heads if num_layers else 1
        self.head_dim = d_model // self.num_heads
        if attention == "causal_cpu" and num_layers:
            if self.head_dim not in HEAD_DIMS:
                raise ValueError(
                    f"attention='causal_cpu' computes head dimensions {list(HEAD_DIMS)}, got d_model={d_model} / "
                    f"num_heads={num_heads} = {self.head_dim}; change them or use attention='sdpa'."
                )
            if torch.device(device or "cpu").type == "cpu":  # elsewhere it loads at its first CPU call, if any
                load_kernel()
        self.attention = attention
        factory = dict(device=device, dtype=dtype)
        widths = [in_features, *hidden_sizes, d_model]
        mlp = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                mlp.append(nn.ReLU())
            mlp.append(nn.Linear(w_in, w_out, **factory))
        mlp.append(nn.LayerNorm(d_model, **factory))
        self.embed = nn.Sequential(*mlp)
        self.positions = positions
        self.pos_embedding = nn.Embedding(max_len, d_model, **factory) if positions == "learned" else None
        self.layers = nn.ModuleList(
            _DecoderLayer(d_model, num_heads, ffn_dim, dropout, attention, **factory) for _ in range(num_layers)
        )
        self._compile_options = None
        self._compiled_encode = None

    def compile_window(self, enabled: bool = True, *, backend: str = "inductor", mode: str | None = None) -> None:
        """Run the window path (critic values, PPO losses) through :func:`torch.compile`.

        Compilation happens at the first window call; if it fails, a warning is emitted and the module stays eager.
        The step path (collection) is not compiled: its cache bookkeeping is Python-side and its attention span
        changes at every step. The compiled function is not pickled (each process compiles its own).

        Examples:
            >>> net = MetaCausalTransformer(3, max_len=4, hidden_sizes=(8,), d_model=8, num_heads=2, ffn_dim=8)
            >>> x = torch.randn(2, 4, 3)
            >>> eager = net(x)
            >>> net.compile_window(backend="eager")
            >>> torch.allclose(net(x), eager)
            True
        """
        self._compile_options = {"backend": backend, "mode": mode} if enabled else None
        self._compiled_encode = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_compiled_encode"] = state["_parameter_owners"] = None
        return state

    def _compile_failed(self, err: Exception) -> None:
        warnings.warn(
            f"torch.compile of the Transformer window path failed ({type(err).__name__}: {err}); running eager.",
            RuntimeWarning,
            stacklevel=3,
        )
        self._compile_options = None
        self._compiled_encode = None

    def _window(self, *args, **kwargs) -> torch.Tensor:
        """:meth:`_encode` for the window path, compiled if :meth:`compile_window` asked for it."""
        options = getattr(self, "_compile_options", None)
        if options is None:
            return self._encode(*args, **kwargs)
        try:
            if self._compiled_encode is None:
                self._compiled_encode = torch.compile(self._encode, **options)
            return self._compiled_encode(*args, **kwargs)
        except Exception as err:  # dynamo / inductor / backend errors: fall back (real errors re-raise eagerly)
            self._compile_failed(err)
            return self._encode(*args, **kwargs)

    def fingerprint(self) -> tuple:
        """Cheap, sync-free identity of the current parameter values (storage pointer and in-place version).

        It reads the parameter dicts of the submodules this model had at its first call, so an optimizer step,
        ``load_state_dict`` or a parameter replaced in its module (``TensorDict.to_module``) all change it, without
        walking the module tree at every step.
        """
        owners = self.__dict__.get("_parameter_owners")
        if owners is None:
            owners = self._parameter_owners = [module._parameters for module in self.modules()]
        return tuple((p.data_ptr(), p._version) for params in owners for p in params.values() if p is not None)

    def _check_in_features(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected input tokens with {self.in_features} features (in_features), got shape {tuple(x.shape)}."
            )

    def _position_error(self, position: int) -> ValueError:
        return ValueError(
            f"context position {position} is out of range for max_len={self.max_len}; {_MAX_LEN_HINT}."
        )

    def _embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The input tokens embedded, plus their learned positions (``positions="learned"``)."""
        h = self.embed(x)
        return h if self.pos_embedding is None else h + self.pos_embedding(positions)

    def _encode(self, x, positions, attn_mask=None, is_causal=False, kv_out=None):
        """Window encoding of ``x [N, L, F]``; optionally writes each layer's (k, v) into ``kv_out``."""
        h = self._embed(x, positions)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.attn.qkv_heads(h)
            if kv_out is not None:
                kv_out[0][i][:, :, : k.shape[2]] = k
                kv_out[1][i][:, :, : v.shape[2]] = v
            h = layer.finish(h, layer.attn.attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal))
        return h

    def forward(self, x: torch.Tensor, is_init: torch.Tensor | None = None) -> torch.Tensor:
        """Window path: encodes ``x [N, T, F]`` causally; returns ``[N, T, d_model]``.

        ``is_init [N, T, 1]`` (bool) marks the first step of a meta-episode. Tokens only attend to earlier
        tokens of their own meta-episode and positions count from its start. Without ``is_init`` (or with
        is_init set only at ``t = 0``) each row is one sequence starting at position 0.
        """
        self._check_in_features(x)
        if x.dim() != 3:
            raise ValueError(f"the window path expects x of shape [N, T, F], got shape {tuple(x.shape)}.")
        n, length, _ = x.shape
        steps = torch.arange(length, device=x.device)
        if is_init is not None:
            is_init = is_init.reshape(n, length).bool()
        if is_init is None or not bool(is_init[:, 1:].any()):
            if length > self.max_len:
                raise self._position_error(length - 1)
            return self._window(x, steps.expand(n, length), is_causal=True)
        start = torch.where(is_init, steps, torch.zeros_like(steps)).cummax(dim=1).values
        positions = steps - start
        if length > self.max_len:
            last = int(positions.max())
            if last >= self.max_len:
                raise self._position_error(last)
        segment = is_init.long().cumsum(1)
        same = segment.unsqueeze(2) == segment.unsqueeze(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        return self._window(x, positions, attn_mask=(same & causal).unsqueeze(1))

    def make_cache(self, x: torch.Tensor) -> _StreamCache:
        """Allocates an empty step cache for ``x.shape[0]`` streams of tokens like ``x [N, F]``."""
        self._check_in_features(x)
        return _StreamCache(x.shape[0], self.in_features, self, x.device, x.dtype)

    def _refresh(self, cache: _StreamCache) -> None:
        """Recomputes the cached keys/values of the live streams with the current parameters."""
        cache.fingerprint = self.fingerprint()
        cache.bound = int(cache.length.max())  # one device sync per parameter change
        if cache.bound == 0:
            return
        positions = torch.arange(cache.bound, device=cache.length.device).expand(cache.length.shape[0], -1)
        self._encode(
            cache.tokens[:, : cache.bound], positions, is_causal=True, kv_out=(cache.keys, cache.values)
        )

    @torch.no_grad()
    def step(self, x: torch.Tensor, is_init: torch.Tensor, cache: _StreamCache) -> torch.Tensor:
        """Step path: one token ``x [N, F]`` per stream; returns ``[N, d_model]`` and advances ``cache``.

        Rows where ``is_init [N, 1]`` is True start a new stream at position 0. Attention runs over the
        first ``bound + 1`` cached slots (an upper bound on the stream lengths, kept on the Python side), so
        the cost of a step grows linearly with the context. On CPU the bound is read exactly at each step; on
        accelerators there is no device sync except when the bound reaches ``max_len`` (it is then refreshed
        from the true lengths: a restarted stream keeps the old bound until then, which with
        ``max_len = H + 1`` and meta-episodes of ``H`` steps costs one long step per meta-episode) and after
        a parameter change, when the cached keys/values are recomputed from the stored inputs (the
        step path therefore always equals the window path under the current parameters). The step path is
        for inference and runs without autograd: train with the window path.
        """
        if not cache.matches(x):
            raise ValueError(
                f"cache built for tokens {tuple(cache.tokens.shape[::2])} on {cache.tokens.device}, "
                f"got x of shape {tuple(x.shape)} on {x.device}; make a new cache with make_cache(x)."
            )
        cache.length.masked_fill_(is_init.reshape(-1).to(torch.bool), 0)
        if cache.fingerprint != self.fingerprint():
            self._refresh(cache)
        if cache.exact_bound or cache.bound + 1 > self.max_len:
            cache.bound = int(cache.length.max())
            if cache.bound >= self.max_len:
                raise self._position_error(cache.bound)
        pos, rows = cache.length, cache.rows
        cache.tokens[rows, pos] = x
        cache.bound += 1
        span = cache.bound
        h = self._embed(x, pos).unsqueeze(1)
        mask = (torch.arange(span, device=x.device) <= pos.unsqueeze(1)).view(-1, 1, 1, span)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.attn.qkv_heads(h)
            keys, values = cache.keys[i], cache.values[i]
            keys[rows, :, pos] = k.squeeze(2)
            values[rows, :, pos] = v.squeeze(2)
            h = layer.finish(h, layer.attn.attend(q, keys[:, :, :span], values[:, :, :span], attn_mask=mask))
        cache.length.add_(1)
        return h.squeeze(1)


class MetaTransformerModule(TensorDictModuleBase):
    """A :class:`MetaCausalTransformer` plus output heads as a TensorDictModule, with a module-owned KV cache.

    The per-step token is the concatenation (last dim) of the ``in_keys`` entries; ``is_init_key`` (written
    by :class:`~torchrl.envs.InitTracker`) marks the first step of a meta-episode. Like torchrl's
    :class:`~torchrl.modules.LSTMModule`, the module has two paths:

    * the **window path** runs when :func:`torchrl.modules.recurrent_mode` is on (set with
      :class:`~torchrl.modules.set_recurrent_mode`; every loss runs in recurrent mode) *or* when the TensorDict has a
      dim named ``"time"`` (collected batches, rollouts, replay-buffer samples and the inputs that stock value
      estimators build from them), which must be its last dim. Earlier batch dims are folded; whole windows are
      encoded under a (block-diagonal, if ``is_init`` fires inside a row) causal mask, with autograd;
    * otherwise the **step path** (collection) runs: every batch element is one stream and receives one token per
      call. Keys and values of the previous tokens live in a cache held by this module (never in the TensorDict),
      cleared per row where ``is_init`` is set, rebuilt if the batch shape, device or dtype changes, and recomputed
      from the stored inputs when the backbone parameters change (e.g. after an optimiser step, or after
      :meth:`mark_weight_update`), so both paths give the same outputs under the current weights. The cache is
      dropped by pickling, deepcopy and :meth:`reset_cache`, and is not part of the ``state_dict``.

    The module cannot see the steps before its input, so it refuses inputs whose context it would have to guess
    (``ValueError``, with what to do): a window whose rows do not start at a meta-episode start (``is_init`` False
    at ``t = 0``: a batch that is not whole meta-episodes); a window where ``is_init`` disagrees with ``start_key``
    (``GAE(shifted=False)`` marks the first step of ``data["next"]`` as an init step and so cuts each row's first
    step); a call under :func:`torch.vmap` (how ``shifted=False`` value estimators call their critic); a step-path
    call whose new streams (a new or resized cache) do not start with ``is_init`` (e.g. a ``[B, T]`` batch with
    its time dim unnamed).

    Args:
        backbone (MetaCausalTransformer): the shared body.
        heads (nn.Module or sequence of nn.Module): one head per out key, each mapping ``[..., d_model]`` to
            the out key's features.

    Keyword Args:
        in_keys (sequence of NestedKey): token entries, concatenated in this order.
        out_keys (sequence of NestedKey): one per head.
        is_init_key (NestedKey): the reset flag. Default ``"is_init"``.
        start_key (NestedKey, optional): an entry of the data that is 1 exactly on the first step of a meta-episode
            (e.g. ``"first_step"`` of :class:`~rl3_torchrl.transforms.MetaRLInputs`). Unlike ``is_init``, callers
            do not rewrite it, so the window path checks ``is_init`` against it. Default None (no such check).
        default_recurrent_mode (bool): path used when ``recurrent_mode()`` is unset and the data has no ``"time"``
            dim. Default False (step path).
        validate_windows (bool): check that windows start at meta-episode starts (one host sync per window
            call, as in ``torchrl>=0.15``'s ``TransformerModule``). Default True.
        check_finite (bool, optional): raise a ``ValueError`` when an output is not finite (NaN inputs or
            weights; a policy would otherwise silently sample action 0 from NaN logits). The check is one host sync
            per call on an accelerator, so the default (``None``) checks on CPU only; on an accelerator the
            :class:`~rl3_torchrl.training.Trainer` checks the logits once per collected batch.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import set_recurrent_mode
        >>> backbone = MetaCausalTransformer(3, max_len=6, hidden_sizes=(16,), d_model=8, num_heads=2, ffn_dim=16)
        >>> module = MetaTransformerModule(backbone, torch.nn.Linear(8, 2), in_keys=["obs"], out_keys=["logits"])
        >>> data = TensorDict({"obs": torch.randn(4, 5, 3), "is_init": torch.zeros(4, 5, 1, dtype=torch.bool)},
        ...                   batch_size=[4, 5])
        >>> data["is_init"][:, 0] = True
        >>> steps = torch.stack([module(data[:, t].clone())["logits"] for t in range(5)], 1)
        >>> with set_recurrent_mode(True):
        ...     window = module(data.clone())["logits"]
        >>> torch.allclose(steps, window, atol=1e-5)
        True
        >>> data.names = [None, "time"]  # as in collected batches: the window path runs without recurrent mode
        >>> torch.allclose(module(data.clone())["logits"], window)
        True
        >>> module(data[:, 2:])
        Traceback (most recent call last):
        ...
        ValueError: MetaTransformerModule got a window whose rows do not all start a meta-episode ...
        >>> module(data.apply(lambda x: x * float("nan") if x.is_floating_point() else x)[:, 0])
        Traceback (most recent call last):
        ...
        ValueError: MetaTransformerModule outputs ['logits'] are not finite: non-finite inputs ['obs'].
    """

    def __init__(
        self,
        backbone: MetaCausalTransformer,
        heads: nn.Module | Sequence[nn.Module],
        *,
        in_keys: Sequence,
        out_keys: Sequence,
        is_init_key="is_init",
        start_key=None,
        default_recurrent_mode: bool = False,
        validate_windows: bool = True,
        check_finite: bool | None = None,
    ):
        super().__init__()
        if not isinstance(backbone, MetaCausalTransformer):
            raise TypeError(f"backbone must be a MetaCausalTransformer, got {type(backbone).__name__}.")
        heads = [heads] if isinstance(heads, nn.Module) else list(heads)
        out_keys = list(out_keys)
        if len(heads) != len(out_keys) or not out_keys:
            raise ValueError(
                f"need one head per out key, got {len(heads)} heads for out_keys={out_keys}."
            )
        self.token_keys = list(in_keys)
        if not self.token_keys:
            raise ValueError("in_keys must name at least one token entry, got an empty list.")
        self.is_init_key = is_init_key
        self.start_key = start_key
        extra = [] if start_key is None or start_key in self.token_keys else [start_key]
        self.in_keys = [*self.token_keys, *extra, is_init_key]
        self.out_keys = out_keys
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self._default_recurrent_mode = bool(default_recurrent_mode)
        self.validate_windows = validate_windows
        self.check_finite = check_finite
        self._cache = None
        self._cache_shape = None

    @property
    def recurrent_mode(self) -> bool:
        """True when ``recurrent_mode()`` selects the window path: the global flag if set, else the default."""
        mode = recurrent_mode()
        return self._default_recurrent_mode if mode is None else bool(mode)

    def reset_cache(self) -> None:
        """Forgets every stream of the step path (the next call must start all rows with ``is_init``)."""
        self._cache = self._cache_shape = None

    def mark_weight_update(self) -> None:
        """Recompute the cached keys/values at the next step, from the stored inputs and the current weights.

        In-place parameter updates are detected anyway; call this after writing weights through ``.data`` (or
        let ``torchrl>=0.15``'s weight synchronisation call it). Unlike ``torchrl``'s ``TransformerModule``, the
        streams survive: the meta-episodes in progress keep their whole context.

        Examples:
            >>> from tensordict import TensorDict
            >>> net = MetaCausalTransformer(2, max_len=4, hidden_sizes=(8,), d_model=8, num_heads=2, ffn_dim=8)
            >>> module = MetaTransformerModule(net, torch.nn.Linear(8, 1), in_keys=["x"], out_keys=["y"])
            >>> td = TensorDict(x=torch.randn(3, 2, 2), is_init=torch.tensor([[True], [False]]).expand(3, 2, 1),
            ...                 batch_size=[3, 2], names=[None, "time"])
            >>> _ = module(td[:, 0].clone())  # one step of each stream
            >>> _ = net.pos_embedding.weight.data.mul_(2)  # a write the parameter fingerprint cannot see
            >>> module.mark_weight_update()
            >>> step = module(td[:, 1].clone())["y"]
            >>> torch.allclose(step, module(td.clone())["y"][:, 1], atol=1e-5)  # equals the new weights' window
            True
        """
        if self._cache is not None:
            self._cache.fingerprint = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = state["_cache_shape"] = None
        return state

    def _inputs(self, tensordict: TensorDictBase):
        values = [tensordict.get(key, None) for key in self.in_keys]
        if any(value is None for value in values):
            raise self._missing_inputs_error(tensordict)
        shape, dtype = tensordict.shape, self.backbone.embed[0].weight.dtype
        ndim = len(shape) + 1  # entries already [*shape, features] of the right dtype go in as they are
        tokens = [
            value if value.dim() == ndim and value.dtype == dtype else value.reshape(*shape, -1).to(dtype)
            for value in values[: len(self.token_keys)]
        ]
        is_init = values[-1]
        if is_init.dim() != ndim or is_init.shape[-1] != 1 or is_init.dtype != torch.bool:
            is_init = is_init.reshape(*shape, 1).bool()
        return torch.cat(tokens, -1), is_init

    def _missing_inputs_error(self, tensordict: TensorDictBase) -> KeyError:
        missing = [key for key in self.in_keys if key not in tensordict.keys(include_nested=True)]
        hint = " (add torchrl.envs.InitTracker to the env)" if self.is_init_key in missing else ""
        return KeyError(
            f"{type(self).__name__} is missing input keys {missing}{hint}; "
            f"available keys: {sorted(map(str, tensordict.keys(include_nested=True, leaves_only=True)))}."
        )

    def _runs_window(self, tensordict: TensorDictBase) -> bool:
        names = tensordict.names
        if "time" in names:
            if names[-1] != "time":
                raise ValueError(
                    f"{type(self).__name__} reads the time dim last, got names={names}; "
                    "permute the TensorDict so that 'time' is its last dim."
                )
            return True
        return self.recurrent_mode

    def _check_window(self, tensordict: TensorDictBase, is_init: torch.Tensor) -> None:
        """One host sync: every row starts a meta-episode, and ``is_init`` agrees with ``start_key``."""
        late_start = ~is_init[:, 0].all()
        if self.start_key is None:
            disagree = torch.zeros_like(late_start)
        else:
            start = tensordict.get(self.start_key).reshape(is_init.shape).bool()
            disagree = (start != is_init).any()
        late_start, disagree = torch.stack([late_start, disagree]).tolist()
        name = type(self).__name__
        if late_start:
            raise ValueError(
                f"{name} got a window whose rows do not all start a meta-episode (is_init is False at t = 0), "
                f"so their context before t = 0 is unknown. This happens when a batch is not whole meta-episodes "
                f"(frames_per_batch smaller than num_envs * H, or slices sampled from inside meta-episodes): "
                f"{_WHOLE_EPISODES_HINT}."
            )
        if disagree:
            raise ValueError(
                f"{name} got a window whose is_init disagrees with {self.start_key!r}: it marks as a meta-episode "
                f"start a step that is not one. A value estimator with shifted=False (the default of GAE, "
                f"deactivate_vmap=True included, and of ClipPPOLoss's own estimator) calls the critic on "
                f"data['next'] as a separate window that drops each row's first step; {_SHIFTED_HINT}."
            )

    def _window_features(self, tensordict: TensorDictBase, x: torch.Tensor, is_init: torch.Tensor) -> torch.Tensor:
        if not tensordict.shape:
            raise ValueError("the window path needs a TensorDict with a time dim, got batch_size=[].")
        length = tensordict.shape[-1]
        x, is_init = x.reshape(-1, length, x.shape[-1]), is_init.reshape(-1, length)
        if self.validate_windows:
            self._check_window(tensordict, is_init)
        return self.backbone(x, is_init.unsqueeze(-1))

    def _step_features(self, tensordict: TensorDictBase, x: torch.Tensor, is_init: torch.Tensor) -> torch.Tensor:
        x, is_init = x.reshape(-1, x.shape[-1]), is_init.reshape(-1, 1)
        if self._cache is None or self._cache_shape != tensordict.shape or not self._cache.matches(x):
            if not bool(is_init.all()):  # one host sync per new cache
                raise ValueError(
                    f"{type(self).__name__}'s step path got new streams (batch shape {tuple(tensordict.shape)}) "
                    "that do not start a meta-episode (is_init False): their context is unknown. For a [B, T] "
                    "batch of steps, run the window path: name its time dim (data.names = [None, 'time'], as "
                    "collectors do) or call under torchrl.modules.set_recurrent_mode(True). For a collection, "
                    "start it with a reset and keep the same env batch (add torchrl.envs.InitTracker)."
                )
            self._cache = self.backbone.make_cache(x)
            self._cache_shape = tensordict.shape
        return self.backbone.step(x, is_init, self._cache)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        x, is_init = self._inputs(tensordict)
        if is_batchedtensor(x):
            raise ValueError(
                f"{type(self).__name__} cannot run under torch.vmap: a value estimator with shifted=False (the "
                "default of GAE and of ClipPPOLoss's own estimator) vmaps the critic over data and data['next'] "
                f"separately, which drops each row's first step from the 'next' context; {_SHIFTED_HINT}."
            )
        if self._runs_window(tensordict):
            features = self._window_features(tensordict, x, is_init)
        else:
            features = self._step_features(tensordict, x, is_init)
        features = features.reshape(*tensordict.shape, -1)
        outputs = [head(features) for head in self.heads]
        check = features.device.type == "cpu" if self.check_finite is None else self.check_finite
        if check and not all(bool(torch.isfinite(out).all()) for out in outputs):
            raise self._nonfinite_error(tensordict, outputs)
        for key, out in zip(self.out_keys, outputs):
            tensordict.set(key, out)
        return tensordict

    def _nonfinite_error(self, tensordict: TensorDictBase, outputs) -> ValueError:
        bad_out = [key for key, out in zip(self.out_keys, outputs) if not bool(torch.isfinite(out).all())]
        bad_in = [key for key in self.token_keys if not bool(torch.isfinite(tensordict.get(key).float()).all())]
        cause = f"non-finite inputs {bad_in}" if bad_in else "the inputs are finite: non-finite weights"
        return ValueError(f"{type(self).__name__} outputs {bad_out} are not finite: {cause}.")
