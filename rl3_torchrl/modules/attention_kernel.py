"""Causal self-attention on CPU that skips the masked half: a C++ kernel, built on first use.

torch's CPU flash-attention kernel cuts the keys into blocks of 512 and masks inside a block, so up to 512 tokens a
causal call costs as much as a full one, and beyond that only whole blocks past the diagonal are skipped.
:func:`causal_attention` computes, in tiles of 16 queries by 16 keys, only the keys at or before each query, in
float32, and equals ``scaled_dot_product_attention(q, k, v, is_causal=True)`` up to float32 rounding (forward and
gradients). Its forward + backward is ≈ 1.9x faster than SDPA's on the paper's shapes (``[8, 4, 513, 16]``, one
thread), ≈ 1.6x on the default config's and 1.3–1.6x at 1025–2049 tokens (``benchmarks/attention.py``).

The kernel is compiled with :func:`torch.utils.cpp_extension.load` (a C++ compiler and ``ninja``) the first time it
is used, for the CPU it runs on (``-march=native``), and cached under torch's extension directory.
:class:`~rl3_torchrl.modules.MetaCausalTransformer` uses it with ``attention="causal_cpu"``.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import threading

import torch

__all__ = ["causal_attention", "causal_attention_supports", "HEAD_DIMS", "load_kernel"]

#: The head dimensions the kernel is compiled for.
HEAD_DIMS = (16, 32, 64)
_SOURCE = os.path.join(os.path.dirname(__file__), "attention_kernel.cpp")
# 512-bit vectors where the CPU has them (the kernel's vectors are 16 floats); the compiler splits them elsewhere
_X86 = platform.machine() in ("x86_64", "AMD64")
_CFLAGS = ["-O3", "-march=native", *(["-mprefer-vector-width=512"] if _X86 else [])]
_lock = threading.Lock()
_loaded = False


def _cpu_tag() -> str:
    """A short hash of this CPU's model and flags: a build made with -march=native only runs on such a CPU."""
    info = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        pass
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def load_kernel() -> None:
    """Builds (first call on a machine, ≈ 10 s) or loads the C++ kernel; raises a ``RuntimeError`` saying why not.

    Examples:
        >>> load_kernel()
        >>> hasattr(torch.ops.rl3_torchrl, "causal_attention_forward")
        True
    """
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        from torch.utils.cpp_extension import load

        try:
            load(
                name=f"rl3_causal_attention_{_cpu_tag()}",
                sources=[_SOURCE],
                extra_cflags=_CFLAGS,
                is_python_module=False,
                verbose=False,
            )
        except Exception as err:  # no compiler, no ninja, a compiler error: say what to do instead
            raise RuntimeError(
                f"could not build the causal attention kernel ({type(err).__name__}: {err}). It needs a C++ compiler "
                "and the ninja package (pip install ninja); use attention='sdpa' (model.attention=sdpa) instead."
            ) from err
        _loaded = True


def _computable(t: torch.Tensor) -> bool:
    """A float32 CPU tensor whose last dim is one of :data:`HEAD_DIMS`."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.shape[-1] in HEAD_DIMS


def causal_attention_supports(q: torch.Tensor, attn_mask=None, dropout_p: float = 0.0) -> bool:
    """Whether :func:`causal_attention` computes this call: float32 CPU tensors, a head dimension of
    :data:`HEAD_DIMS`, no mask, no dropout, outside ``torch.compile`` (which keeps SDPA).

    Examples:
        >>> causal_attention_supports(torch.zeros(2, 4, 10, 16))
        True
        >>> causal_attention_supports(torch.zeros(2, 4, 10, 16), dropout_p=0.1)
        False
        >>> causal_attention_supports(torch.zeros(2, 4, 10, 12))
        False
    """
    return attn_mask is None and dropout_p == 0.0 and _computable(q) and not torch.compiler.is_compiling()


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        scale = 1.0 / math.sqrt(q.shape[-1])
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out, lse = torch.ops.rl3_torchrl.causal_attention_forward(q, k, v, scale)
        out = out.transpose(1, 2)  # written as [B, L, H, D]: merging the heads afterwards is a view
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        return torch.ops.rl3_torchrl.causal_attention_backward(grad, q, k, v, out, lse, ctx.scale)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(D) + causal mask) v`` for ``q, k, v`` of shape ``[B, H, L, D]`` (float32, CPU).

    The same as ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)`` up to float32 rounding,
    with autograd; ``D`` must be one of :data:`HEAD_DIMS`. The result is a ``[B, H, L, D]`` view of a
    ``[B, L, H, D]`` tensor.

    Examples:
        >>> import torch.nn.functional as F
        >>> q, k, v = torch.randn(3, 2, 2, 37, 16).unbind(0)
        >>> torch.allclose(causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True),
        ...                atol=1e-6)
        True
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"causal_attention expects q, k, v of one shape [B, H, L, D], got {tuple(q.shape)}, {tuple(k.shape)} "
            f"and {tuple(v.shape)}."
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not _computable(t):
            raise ValueError(
                f"causal_attention computes float32 CPU tensors with a head dimension in {list(HEAD_DIMS)}, got "
                f"{name} with dtype={t.dtype}, device={t.device}, D={t.shape[-1]}; use scaled_dot_product_attention "
                "instead."
            )
    load_kernel()
    return _CausalAttention.apply(q, k, v)
