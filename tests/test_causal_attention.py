"""The C++ causal attention kernel against exact causal attention in float64, and as the Transformer's window path."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from rl3_torchrl.modules import ATTENTIONS, MetaCausalTransformer, causal_attention
from rl3_torchrl.modules.attention_kernel import HEAD_DIMS
from rl3_torchrl.training import Trainer, load_config

from _shared import TINY_RUN


def _exact(q, k, v):
    """Causal softmax attention written out in float64: the oracle."""
    q, k, v = (t.double() for t in (q, k, v))
    length = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def _qkv(batch, heads, length, dim, seed=0):
    """q, k, v as the Transformer makes them: strided views of one [B, L, 3, H, D] projection, with autograd."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, length, 3, heads, dim, generator=gen).requires_grad_()
    return qkv, qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _check_against_exact(batch, heads, length, dim, seed=0):
    qkv, (q, k, v) = _qkv(batch, heads, length, dim, seed)
    grad = torch.randn(batch, heads, length, dim, generator=torch.Generator().manual_seed(seed + 1))
    out = causal_attention(q, k, v)
    (dqkv,) = torch.autograd.grad(out, qkv, grad)
    qkv64 = qkv.detach().double().requires_grad_()
    exact = _exact(*qkv64.permute(2, 0, 3, 1, 4).unbind(0))
    (dqkv64,) = torch.autograd.grad(exact, qkv64, grad.double())
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=2e-6)
    torch.testing.assert_close(dqkv.double(), dqkv64, rtol=0, atol=2e-5)


@pytest.mark.parametrize("length", [1, 15, 16, 17, 100, 257])
@pytest.mark.parametrize("dim", HEAD_DIMS)
def test_equals_exact_causal_attention_and_its_gradients(length, dim):
    _check_against_exact(2, 2, length, dim)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    length=st.integers(1, 70),
    dim=st.sampled_from(HEAD_DIMS),
    seed=st.integers(0, 10_000),
)
def test_equals_exact_causal_attention_for_any_shape(batch, heads, length, dim, seed):
    _check_against_exact(batch, heads, length, dim, seed)


def test_equals_sdpa_and_is_deterministic():
    _, (q, k, v) = _qkv(8, 4, 130, 16)
    out = causal_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=1e-5)
    assert torch.equal(out, causal_attention(q, k, v))
    assert out.shape == (8, 4, 130, 16)
    assert out.transpose(1, 2).is_contiguous()  # merging the heads is a view


def test_a_query_ignores_later_keys_and_large_scores_stay_finite():
    _, (q, k, v) = _qkv(2, 2, 48, 16)
    q, k, v = (t.detach().clone() for t in (q, k, v))
    out = causal_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 30:] = 1e3
    v2[:, :, 30:] = -7.0
    assert torch.equal(causal_attention(q, k2, v2)[:, :, :30], out[:, :, :30])
    big = causal_attention(q * 40, k * 40, v)  # scores of order 1e3: the row maximum is subtracted before exp
    torch.testing.assert_close(big.double(), _exact(q * 40, k * 40, v), rtol=0, atol=1e-5)


@pytest.mark.parametrize("which, dependent", [(0, (21, slice(None))), (1, (slice(21, None), slice(None))),
                                              (2, (slice(21, None), 3))])
def test_a_nan_input_reaches_every_output_that_depends_on_it(which, dependent):
    """NaN must not be rounded away: the Transformer module's finite check relies on it."""
    tensors = [t.detach().clone().requires_grad_() for t in _qkv(1, 2, 40, 16)[1]]
    with torch.no_grad():
        tensors[which][0, 1, 21, 3] = float("nan")
    out = causal_attention(*tensors)
    assert out[0, 1][dependent].isnan().all()
    assert out[0, 0].isfinite().all()  # the other head
    out.sum().backward()
    assert not all(bool(t.grad.isfinite().all()) for t in tensors)


@pytest.mark.parametrize(
    "q, match",
    [
        (torch.zeros(1, 1, 4, 16, dtype=torch.float64), "float32 CPU tensors with a head dimension in"),
        (torch.zeros(1, 1, 4, 12), r"D=12"),
        (torch.zeros(1, 4, 16), r"one shape \[B, H, L, D\]"),
    ],
)
def test_bad_input_is_refused(q, match):
    with pytest.raises(ValueError, match=match):
        causal_attention(q, q, q)
    with pytest.raises(ValueError, match=r"one shape"):
        causal_attention(torch.zeros(1, 1, 4, 16), torch.zeros(1, 1, 5, 16), torch.zeros(1, 1, 4, 16))
    with pytest.raises(ValueError, match=r"got v with dtype=torch.float16"):
        causal_attention(torch.zeros(1, 1, 4, 16), torch.zeros(1, 1, 4, 16), torch.zeros(1, 1, 4, 16).half())


def _pair(**kwargs):
    sizes = dict(max_len=140, hidden_sizes=(32,), d_model=32, num_heads=2, ffn_dim=32, **kwargs)
    torch.manual_seed(0)
    kernel = MetaCausalTransformer(6, attention="causal_cpu", **sizes)
    sdpa = MetaCausalTransformer(6, **sizes)
    sdpa.load_state_dict(kernel.state_dict())
    return kernel, sdpa


def test_the_transformer_window_path_with_the_kernel_equals_sdpa_forward_and_backward():
    kernel, sdpa = _pair()
    x = torch.randn(4, 139, 6)
    out_kernel, out_sdpa = kernel(x), sdpa(x)
    torch.testing.assert_close(out_kernel, out_sdpa, rtol=0, atol=1e-5)
    out_kernel.square().sum().backward()
    out_sdpa.square().sum().backward()
    for (name, a), b in zip(kernel.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_the_kernels_step_path_and_masked_windows_are_sdpas():
    kernel, sdpa = _pair()
    x = torch.randn(3, 20, 6)
    is_init = torch.zeros(3, 20, 1, dtype=torch.bool)
    is_init[:, 0] = is_init[1, 7] = True  # a restart inside a row: a block-diagonal mask, which SDPA computes
    assert torch.equal(kernel(x, is_init), sdpa(x, is_init))
    cache = kernel.make_cache(x[:, 0])
    steps = torch.stack([kernel.step(x[:, t], is_init[:, t], cache) for t in range(20)], 1)
    torch.testing.assert_close(steps, kernel(x, is_init), rtol=0, atol=1e-5)
    plain = torch.zeros_like(is_init)
    plain[:, 0] = True
    cache = kernel.make_cache(x[:, 0])
    steps = torch.stack([kernel.step(x[:, t], plain[:, t], cache) for t in range(20)], 1)
    torch.testing.assert_close(steps, kernel(x), rtol=0, atol=1e-5)  # the window through the kernel


def test_the_transformers_attention_argument_is_checked():
    assert ATTENTIONS == ("sdpa", "causal_cpu")
    with pytest.raises(ValueError, match=r"attention='flash' is not allowed; choose one of \['sdpa', 'causal_cpu'\]"):
        MetaCausalTransformer(3, max_len=4, attention="flash")
    with pytest.raises(ValueError, match=r"attention='causal_cpu' computes head dimensions \[16, 32, 64\], got "
                                         r"d_model=8 / num_heads=2 = 4"):
        MetaCausalTransformer(3, max_len=4, d_model=8, num_heads=2, attention="causal_cpu")


def test_a_run_with_the_kernel_is_reproducible_matches_sdpa_and_resumes_with_either(tmp_path):
    model = ["model.d_model=16", "model.num_heads=1", "model.hidden_sizes=[16]", "model.ffn_dim=16", "eval.every=0"]

    def config(name, *extra):
        return load_config([*TINY_RUN, *model, "iterations=2", f"output_dir={tmp_path / name}", *extra])

    a = Trainer(config("a", "model.attention=causal_cpu"))
    history = a.train()
    again = Trainer(config("b", "model.attention=causal_cpu")).train()
    assert [r["loss_critic"] for r in history] == [r["loss_critic"] for r in again]
    sdpa = Trainer(config("c"))
    sdpa.train()
    for name, value in a.critic.state_dict().items():
        torch.testing.assert_close(value, sdpa.critic.state_dict()[name], rtol=1e-4, atol=1e-5)
    resumed = Trainer(config("a", "iterations=3", "checkpoint.resume=true"))  # the kernel is not part of the model
    assert len(resumed.train()) == 1
    with pytest.raises(ValueError, match="model.attention"):
        load_config(["model.attention=flash"])


def test_a_failed_build_says_what_to_use_instead(monkeypatch):
    import torch.utils.cpp_extension

    from rl3_torchrl.modules import attention_kernel as module

    def no_compiler(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(module, "_loaded", False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with pytest.raises(RuntimeError, match=r"could not build the causal attention kernel \(RuntimeError: Ninja is "
                                           r"required.*use attention='sdpa' \(model.attention=sdpa\) instead"):
        MetaCausalTransformer(3, max_len=4, d_model=16, num_heads=1, attention="causal_cpu")
