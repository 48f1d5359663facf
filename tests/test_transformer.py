"""MetaCausalTransformer / MetaTransformerModule: step path (KV cache) vs window path, resets, cache lifecycle,
the inputs they refuse, and the old names."""
import copy
import pickle
import warnings

import pytest
import torch
import torchrl.modules
from hypothesis import given, settings, strategies as st
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

import rl3_torchrl
from rl3_torchrl.modules import MetaCausalTransformer, MetaTransformerModule

F_IN = 5
SMALL = dict(hidden_sizes=(16,), d_model=8, num_heads=2, ffn_dim=16)


def make_module(max_len=32, seed=0, num_layers=2):
    torch.manual_seed(seed)
    backbone = MetaCausalTransformer(F_IN, max_len=max_len, num_layers=num_layers, **SMALL)
    head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return MetaTransformerModule(backbone, head, in_keys=["a", "b"], out_keys=["out"])


def make_data(n, t, is_init, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {"a": torch.randn(n, t, 2, generator=g), "b": torch.randn(n, t, 3, generator=g), "is_init": is_init},
        batch_size=[n, t],
    )


def first_steps(n, t):
    """is_init of n rows that each hold one meta-episode of t steps."""
    is_init = torch.zeros(n, t, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return is_init


def step_through(module, data, start=0, stop=None):
    stop = data.shape[1] if stop is None else stop
    return torch.stack([module(data[:, t].clone())["out"] for t in range(start, stop)], 1)


def window(module, data):
    with set_recurrent_mode(True):
        return module(data.clone())["out"]


def staggered_is_init(n, t, period_by_row):
    """Row i starts a new meta-episode every period_by_row[i] steps, offset by i."""
    steps = torch.arange(t)
    rows = [((steps + i) % p == 0) | (steps == 0) for i, p in enumerate(period_by_row)]
    return torch.stack(rows).unsqueeze(-1)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 4),
    t=st.integers(1, 20),
    seed=st.integers(0, 10_000),
    num_layers=st.integers(0, 2),
    p_reset=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_step_matches_window_with_random_resets(n, t, seed, num_layers, p_reset):
    g = torch.Generator().manual_seed(seed)
    is_init = torch.rand(n, t, 1, generator=g) < p_reset
    is_init[:, 0] = True
    module = make_module(num_layers=num_layers, seed=seed)
    data = make_data(n, t, is_init, seed=seed)
    torch.testing.assert_close(step_through(module, data), window(module, data), atol=1e-5, rtol=1e-5)


def test_staggered_resets_and_positions_restart():
    n, t = 4, 24
    is_init = staggered_is_init(n, t, [24, 5, 7, 11])
    module = make_module()
    data = make_data(n, t, is_init)
    steps = step_through(module, data)
    torch.testing.assert_close(steps, window(module, data), atol=1e-5, rtol=1e-5)
    # row 1 restarts at t=4: from there it equals a fresh sequence started at t=4 (position 0, no leakage)
    sub = data[1:2, 4:9].clone()
    torch.testing.assert_close(steps[1:2, 4:9], window(module, sub), atol=1e-5, rtol=1e-5)
    # and the first steps differ from the output without the restart (the reset has an effect)
    no_reset = data.clone()
    no_reset["is_init"][:, 1:] = False
    assert not torch.allclose(window(module, no_reset)[1, 4:], steps[1, 4:], atol=1e-4)


def test_step_after_parameter_update_equals_window_with_new_weights():
    n, t, split = 3, 16, 9
    is_init = staggered_is_init(n, t, [16, 6, 4])
    module = make_module()
    data = make_data(n, t, is_init)
    before = step_through(module, data, 0, split)
    torch.testing.assert_close(before, window(module, data)[:, :split], atol=1e-5, rtol=1e-5)
    optim = torch.optim.Adam(module.parameters(), lr=0.05)
    window(module, data).pow(2).mean().backward()
    optim.step()
    after = step_through(module, data, split)
    new_window = window(module, data)
    assert not torch.allclose(new_window[:, :split], before, atol=1e-3)  # the weights did change
    torch.testing.assert_close(after, new_window[:, split:], atol=1e-5, rtol=1e-5)
    # load_state_dict (copy_ into the parameters) is detected as well
    module.load_state_dict(make_module(seed=3).state_dict())
    module.reset_cache()
    first = step_through(module, data, 0, 5)
    module.load_state_dict(make_module(seed=4).state_dict())
    rest = step_through(module, data, 5)
    torch.testing.assert_close(rest, window(module, data)[:, 5:], atol=1e-5, rtol=1e-5)
    assert first.shape == (n, 5, 3)
    # and so are parameters replaced in their modules (TensorDict.to_module, as a weight sync may do)
    module.reset_cache()
    first = step_through(module, data, 0, 5)
    TensorDict.from_module(module).apply(lambda p: torch.nn.Parameter(p.detach() * 1.5)).to_module(module)
    rest = step_through(module, data, 5)
    torch.testing.assert_close(rest, window(module, data)[:, 5:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rest, step_through(make_module(seed=4), data)[:, 5:], atol=1e-3)


@pytest.mark.parametrize("exact_bound", [True, False])
def test_cache_is_preallocated_and_attends_over_a_bounded_prefix(exact_bound):
    module = make_module(max_len=8)
    n, t = 2, 30
    is_init = staggered_is_init(n, t, [6, 7])
    data = make_data(n, t, is_init)
    module(data[:, 0].clone())
    cache = module._cache
    cache.exact_bound = exact_bound  # False: the sync-free bookkeeping used on accelerators
    keys_ptr = cache.keys[0].data_ptr()
    outputs = []
    for i in range(1, t):  # 30 calls > max_len: the bound is re-synced and never exceeds max_len
        outputs.append(module(data[:, i].clone())["out"])
        assert module._cache is cache and cache.keys[0].data_ptr() == keys_ptr and cache.keys[0].shape[2] == 8
        assert int(cache.length.max()) <= cache.bound <= 8
        if exact_bound:
            assert cache.bound == int(cache.length.max())
    module.reset_cache()
    torch.testing.assert_close(step_through(module, data)[:, 1:], torch.stack(outputs, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(outputs, 1), window(module, data)[:, 1:], atol=1e-5, rtol=1e-5)


def test_cache_rebuilt_on_new_batch_shape_and_reset_cache():
    module = make_module()
    data = make_data(3, 4, first_steps(3, 4))
    step_through(module, data)
    torch.testing.assert_close(step_through(make_module(), data), window(module, data), atol=1e-5, rtol=1e-5)
    other = make_data(5, 4, first_steps(5, 4))
    torch.testing.assert_close(step_through(module, other), window(module, other), atol=1e-5, rtol=1e-5)
    assert module._cache.tokens.shape[0] == 5
    module.reset_cache()
    torch.testing.assert_close(step_through(module, other), window(module, other), atol=1e-5, rtol=1e-5)


def test_cache_excluded_from_pickle_deepcopy_and_state_dict():
    module = make_module(max_len=512)
    size_empty = len(pickle.dumps(module))
    data = make_data(8, 20, first_steps(8, 20))
    expected = step_through(module, data, 0, 10)
    assert module._cache is not None
    assert len(pickle.dumps(module)) == size_empty
    assert copy.deepcopy(module)._cache is None
    assert module._cache is not None  # the original keeps its streams
    assert set(module.state_dict()) == set(make_module().state_dict())
    clone = pickle.loads(pickle.dumps(module))
    torch.testing.assert_close(step_through(clone, data, 0, 10), expected)


def test_too_long_context_raises_naming_max_len():
    module = make_module(max_len=6)
    long = make_data(2, 7, first_steps(2, 7))
    with pytest.raises(ValueError, match=r"max_len=6.*H \+ 1"):
        window(module, long)
    with pytest.raises(ValueError, match=r"max_len=6.*H \+ 1"):
        step_through(module, long)
    # a 7-step window made of two meta-episodes fits
    packed = long.clone()
    packed["is_init"][:, 3] = True
    torch.testing.assert_close(step_through(make_module(max_len=6), packed), window(module, packed),
                               atol=1e-5, rtol=1e-5)


def test_argument_errors():
    with pytest.raises(ValueError, match="d_model=10, num_heads=4"):
        MetaCausalTransformer(3, max_len=4, d_model=10)
    with pytest.raises(ValueError, match="max_len=0"):
        MetaCausalTransformer(3, max_len=0)
    backbone = MetaCausalTransformer(F_IN, max_len=4, **SMALL)
    with pytest.raises(ValueError, match="one head per out key"):
        MetaTransformerModule(backbone, [torch.nn.Linear(8, 1)], in_keys=["a"], out_keys=["x", "y"])
    module = MetaTransformerModule(backbone, torch.nn.Linear(8, 1), in_keys=["a", "b"], out_keys=["x"])
    data = make_data(2, 3, torch.zeros(2, 3, 1, dtype=torch.bool)).exclude("is_init")
    with pytest.raises(KeyError, match="InitTracker"):
        module(data[:, 0])
    with pytest.raises(ValueError, match="in_features"):
        backbone(torch.zeros(2, 3, 4))


def test_window_path_backpropagates_to_every_parameter():
    module = make_module()
    is_init = staggered_is_init(3, 10, [10, 4, 3])
    window(module, make_data(3, 10, is_init)).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_default_recurrent_mode_and_context_override():
    backbone = MetaCausalTransformer(F_IN, max_len=8, **SMALL)
    module = MetaTransformerModule(backbone, torch.nn.Linear(8, 1), in_keys=["a", "b"], out_keys=["x"],
                               default_recurrent_mode=True)
    data = make_data(2, 5, first_steps(2, 5))
    assert module.recurrent_mode and module(data.clone())["x"].shape == (2, 5, 1)
    with set_recurrent_mode(False):
        assert not module.recurrent_mode
        assert module(data[:, 0].clone())["x"].shape == (2, 1)


def test_time_named_data_runs_the_window_path_with_gradients():
    module = make_module()
    data = make_data(3, 10, staggered_is_init(3, 10, [10, 4, 3]))
    data.names = [None, "time"]  # as in collected batches, rollouts and replay-buffer samples
    out = module(data.clone())["out"]
    torch.testing.assert_close(out, window(module, data), atol=0, rtol=0)
    torch.testing.assert_close(out, step_through(make_module(), data), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    with pytest.raises(ValueError, match=r"time dim last.*names=\['time', None\]"):
        module(data.clone().permute(1, 0))


def test_windows_must_start_a_meta_episode():
    module = make_module()
    data = make_data(2, 8, first_steps(2, 8))
    with pytest.raises(ValueError, match=r"do not all start a meta-episode.*frames_per_batch=num_envs \* H, reset_at_each_iter=True"):
        window(module, data[:, 3:])
    lax = MetaTransformerModule(module.backbone, module.heads[0], in_keys=["a", "b"], out_keys=["out"],
                                validate_windows=False)
    assert window(lax, data[:, 3:]).shape == (2, 5, 3)  # the caller's responsibility


def test_start_key_catches_a_rewritten_is_init():
    torch.manual_seed(0)
    backbone = MetaCausalTransformer(F_IN + 1, max_len=16, **SMALL)
    module = MetaTransformerModule(backbone, torch.nn.Linear(8, 1), in_keys=["a", "b", "first"], out_keys=["out"],
                                   start_key="first")
    data = make_data(2, 8, first_steps(2, 8))
    data["first"] = data["is_init"].float()
    window(module, data)
    shifted = data[:, 1:].clone()
    shifted["is_init"][:, 0] = True  # what GAE(shifted=False) does to data["next"]
    with pytest.raises(ValueError, match=r"disagrees with 'first'.*shifted=True"):
        window(module, shifted)


def test_new_streams_must_start_with_is_init():
    module = make_module()
    data = make_data(3, 6, first_steps(3, 6))
    with pytest.raises(ValueError, match=r"new streams \(batch shape \(3, 6\)\).*set_recurrent_mode\(True\)"):
        module(data.clone())  # a [B, T] batch with an unnamed time dim: not 18 streams
    step_through(module, data, 0, 3)
    module.reset_cache()
    with pytest.raises(ValueError, match="new streams"):
        module(data[:, 3].clone())  # the context of these meta-episodes is gone


def test_vmap_raises_with_the_fix():
    module = make_module()
    data = make_data(3, 6, first_steps(3, 6))
    with pytest.raises(ValueError, match=r"cannot run under torch.vmap.*shifted=True"):
        torch.vmap(module, (0,))(torch.stack([data, data]))


def test_mark_weight_update_sees_writes_through_data():
    module = make_module()
    data = make_data(3, 8, staggered_is_init(3, 8, [8, 3, 5]))
    step_through(module, data, 0, 4)
    with torch.no_grad():
        for p in module.parameters():
            p.data.mul_(1.5)  # .data writes do not bump the version counter the cache watches
    module.mark_weight_update()
    torch.testing.assert_close(step_through(module, data, 4), window(module, data)[:, 4:], atol=1e-5, rtol=1e-5)


def test_old_names_warn_and_do_not_clash_with_torchrl():
    with pytest.warns(DeprecationWarning, match="TransformerModule is now MetaTransformerModule"):
        from rl3_torchrl.modules import TransformerModule
    assert TransformerModule is MetaTransformerModule
    with pytest.warns(DeprecationWarning, match="CausalTransformer is now MetaCausalTransformer"):
        assert rl3_torchrl.CausalTransformer is MetaCausalTransformer
    with pytest.raises(AttributeError):
        rl3_torchrl.modules.NoSuchModule
    # the names torchrl>=0.15 exports: `from torchrl.modules import *` then `from rl3_torchrl import *` keeps them
    upstream = {"TransformerModule", "CausalTransformer", "positions_from_is_init", "segment_causal_mask_from_is_init"}
    assert upstream.isdisjoint([*rl3_torchrl.__all__, *rl3_torchrl.modules.__all__])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        namespace = {}
        exec("from torchrl.modules import *\nfrom rl3_torchrl import *", namespace)
    assert namespace["MetaTransformerModule"] is MetaTransformerModule
    assert "TransformerModule" not in namespace  # torchrl 0.14 has none; from 0.15 on it is torchrl's


def test_no_positions_step_path_equals_window_path_and_any_length_fits():
    torch.manual_seed(0)
    net = MetaCausalTransformer(5, max_len=4, hidden_sizes=(8,), d_model=8, num_heads=2, ffn_dim=8, positions="none")
    assert net.pos_embedding is None
    x = torch.randn(2, 3, 5)
    cache = net.make_cache(x[:, 0])
    steps = [net.step(x[:, t], torch.zeros(2, 1, dtype=torch.bool), cache) for t in range(3)]
    assert torch.allclose(torch.stack(steps, 1), net(x), atol=1e-5)
    longer = MetaCausalTransformer(5, max_len=9, hidden_sizes=(8,), d_model=8, num_heads=2, ffn_dim=8,
                                   positions="none")
    longer.load_state_dict(net.state_dict())  # the same weights serve a longer context
    assert torch.allclose(longer(x), net(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"positions='rotary' is not allowed; choose one of \['learned', 'none'\]"):
        MetaCausalTransformer(5, max_len=4, positions="rotary")


@pytest.mark.parametrize("path", ["step", "window"])
def test_token_of_mixed_dtypes_and_layouts_equals_the_float_token(path):
    """Entries without a feature dim, of integer dtype, and an integer ``is_init`` make the token (and outputs) of
    the same values given as float ``[..., F]`` entries with a bool ``is_init``."""
    module = make_module()
    shape = (3,) if path == "step" else (3, 4)
    floats = make_data(3, 4, first_steps(3, 4))
    floats["a"] = torch.randint(0, 5, (3, 4, 2)).float()  # integer-valued, so exact in any dtype
    floats = floats[:, 0] if path == "step" else floats
    mixed = floats.clone()
    mixed["a"] = floats["a"].long()
    mixed["b"] = floats["b"].double()  # float32 values, exact in float64
    mixed["is_init"] = floats["is_init"].reshape(shape).to(torch.uint8)  # no feature dim, not bool
    x_float, init_float = module._inputs(floats)
    x_mixed, init_mixed = module._inputs(mixed)
    assert x_mixed.dtype == torch.float32 and init_mixed.dtype == torch.bool
    assert torch.equal(x_mixed, x_float) and torch.equal(init_mixed, init_float)
    with set_recurrent_mode(path == "window"):
        out_float = module(floats.clone())["out"]
        module.reset_cache()
        out_mixed = module(mixed.clone())["out"]
    assert torch.equal(out_mixed, out_float)
