"""pack_preps (the native fused fold-and-pack, CPU) against the pure-PyTorch reference and
independent oracles; bad input; non-contiguous parameters; backend selection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import netspace_fast as nf
from netspace_fast import archs, fold_bn, pack_preps
from netspace_fast.ops import pack_preps as pack_mod
from conftest import (all_forms, assert_fold_close, expected_rows, flat_params, form_id, make_model,
                      manual_fold_flat)


def _pair(name, ds, bn):
    return [make_model(name, ds, batchnorm=bn) for _ in range(2)]


# ---------------------------------------------------------------------------------------------
# native vs reference, every architecture, widths 8 / 64 / 10000


@pytest.mark.parametrize("width", [8, 64, 10_000])
@pytest.mark.parametrize("form", all_forms(), ids=form_id)
def test_pack_matches_reference(form, width):
    name, ds, bn = form
    models = _pair(name, ds, bn)
    with torch.no_grad():
        native = pack_preps(models, width=width, backend="cpp")
        ref = pack_preps(models, width=width, backend="torch")
        auto = pack_preps(models, width=width)
    P = archs.spec(name, ds).num_params
    assert native.shape == ref.shape == (2, expected_rows(P, width), width)
    assert native.dtype == torch.float32
    assert torch.equal(auto, native)  # the default on CPU is the native kernel
    if models[0].batchnorm:
        assert_fold_close(native, ref)  # relative 1e-6 (see conftest)
        # the copied (non-BN) layers are exact: the final fc of every ResNet is a copy
        fc = sum(p.numel() for p in models[0].fc.parameters())
        assert torch.equal(native.reshape(2, -1)[:, P - fc:P], ref.reshape(2, -1)[:, P - fc:P])
    else:
        assert torch.equal(native, ref)  # copies: exact
    assert not native.reshape(2, -1)[:, P:].any()  # zero padding


@pytest.mark.parametrize("form", all_forms(), ids=form_id)
def test_pack_matches_independent_oracle(form):
    """BN-free: the PRep is cat(flattened params) + zeros (exact). BN: a float64 fold (rel 1e-6)."""
    name, ds, bn = form
    models = _pair(name, ds, bn)
    with torch.no_grad():
        prep = pack_preps(models, width=64)
    flat = prep.reshape(2, -1)
    for b, m in enumerate(models):
        if m.batchnorm:
            expected = manual_fold_flat(m)
            assert_fold_close(flat[b, :expected.numel()], expected)
        else:
            expected = flat_params(m)
            assert torch.equal(flat[b, :expected.numel()], expected)
        assert not flat[b, expected.numel():].any()


@pytest.mark.parametrize("name,ds", [("resnet8", "cifar10"), ("resnet32", "tinyimagenet")])
def test_pack_bn_equals_pack_of_folded(name, ds):
    models = _pair(name, ds, True)
    with torch.no_grad():
        a = pack_preps(models, width=64)
        b = pack_preps(fold_bn(models), width=64)
    assert torch.equal(a, b)


def test_pack_batch_is_per_network():
    models = [make_model("resnet8") for _ in range(3)]
    with torch.no_grad():
        batch = pack_preps(models, width=64)
        for b, m in enumerate(models):
            assert torch.equal(batch[b], pack_preps(m, width=64)[0])
            assert torch.equal(batch[b], pack_preps([m], width=64)[0])


def test_pack_default_width_is_10000():
    prep = pack_preps(archs.build("lenetlike"))
    assert prep.shape == (1, 8, 10_000)


def test_pack_multithreaded():
    """The native CPU kernel splits work with at::parallel_for: run it with 2 threads too."""
    models = [make_model("resnet8") for _ in range(4)]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            native = pack_preps(models, width=64, backend="cpp")
    finally:
        torch.set_num_threads(old)
    with torch.no_grad():
        ref = pack_preps(models, width=64, backend="torch")
    assert_fold_close(native, ref)


def test_pack_custom_eps():
    """Each BatchNorm's own eps is used."""
    m = make_model("resnet8")
    m.bn1.eps = 1e-1
    m.get_submodule("layer2.0.downsample.1").eps = 0.5
    with torch.no_grad():
        prep = pack_preps(m, width=64)
    expected = manual_fold_flat(m)
    assert_fold_close(prep.reshape(-1)[:expected.numel()], expected)


# ---------------------------------------------------------------------------------------------
# generic modules (not built by archs.build): parameters in named_parameters order


def test_pack_generic_module():
    m = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2, bias=False), nn.LayerNorm(2))
    prep = pack_preps(m, width=8)
    P = sum(p.numel() for p in m.parameters())
    assert prep.shape == (1, expected_rows(P, 8), 8)
    assert torch.equal(prep.reshape(-1)[:P], flat_params(m))
    assert not prep.reshape(-1)[P:].any()
    lay = nf.PRepLayout.for_module(m, 8)
    m2 = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2, bias=False), nn.LayerNorm(2))
    nf.load_prep(m2, prep[0])
    assert torch.equal(flat_params(m2), flat_params(m))
    assert [n for n, _ in m.named_parameters()] == [e.name for e in lay.entries]


def test_pack_generic_modules_must_match():
    a = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="models"):
        pack_preps([a, nn.Linear(4, 3)], width=8)
    with pytest.raises(ValueError, match="models"):
        pack_preps([a, archs.build("lenetlike")], width=8)


def test_pack_module_without_parameters():
    with pytest.raises(ValueError, match="num_params"):
        pack_preps(nn.ReLU(), width=8)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("width", [0, -8, 4, 12, 10_001])
def test_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        pack_preps(archs.build("lenetlike"), width=width)


@pytest.mark.parametrize("width", [8.0, "64", None])
def test_bad_width_type(width):
    with pytest.raises(TypeError, match="width"):
        pack_preps(archs.build("lenetlike"), width=width)


def test_bad_height():
    m = archs.build("lenetlike")
    min_h = expected_rows(62006, 64)
    with pytest.raises(ValueError, match="height"):
        pack_preps(m, width=64, height=min_h - 4)  # too small
    with pytest.raises(ValueError, match="height"):
        pack_preps(m, width=64, height=min_h + 2)  # not a multiple of 4
    with pytest.raises(ValueError, match="height"):
        pack_preps(m, width=64, height=0)
    with pytest.raises(TypeError, match="height"):
        pack_preps(m, width=64, height=float(min_h))


def test_empty_models():
    with pytest.raises(ValueError, match="models"):
        pack_preps([], width=64)
    with pytest.raises(ValueError, match="models"):
        pack_preps((), width=64)


def test_models_wrong_type():
    with pytest.raises(TypeError, match="models"):
        pack_preps([archs.build("lenetlike"), "resnet8"], width=64)
    with pytest.raises(TypeError, match="models"):
        pack_preps("lenetlike", width=64)
    with pytest.raises(TypeError, match="models"):
        pack_preps(torch.zeros(3), width=64)


@pytest.mark.parametrize("a,b", [
    (("lenetlike", "cifar10", True), ("vanillacnn", "cifar10", True)),
    (("lenetlike", "cifar10", True), ("lenetlike", "tinyimagenet", True)),
    (("resnet8", "cifar10", True), ("resnet8", "cifar10", False)),  # BN and BN-free forms
    (("resnet8", "cifar10", True), ("resnet32", "cifar10", True)),
    (("siren", "cifar10", True), ("resnet8", "cifar10", True)),
], ids=["lenet-vanilla", "cifar-tiny", "bn-nobn", "r8-r32", "siren-r8"])
def test_mixed_architectures(a, b):
    ma, mb = archs.build(a[0], a[1], batchnorm=a[2]), archs.build(b[0], b[1], batchnorm=b[2])
    with pytest.raises(ValueError, match="models"):
        pack_preps([ma, mb], width=64)
    with pytest.raises(ValueError, match="models"):
        pack_preps([ma, ma, mb], width=64)


def test_parameter_replaced_with_wrong_shape():
    """A SpecNet whose parameter no longer has the spec's shape is refused, not read out of bounds."""
    m = archs.build("lenetlike")
    m.fc3.weight = nn.Parameter(torch.randn(10, 85))
    with pytest.raises(ValueError, match="tensors"):
        pack_preps(m, width=64)
    m = make_model("resnet8")
    m.bn1.running_var = torch.ones(15)
    with pytest.raises(ValueError, match="tensors"):
        pack_preps(m, width=64)


def test_bn_eps_mismatch_across_models():
    a, b = make_model("resnet8"), make_model("resnet8")
    b.bn1.eps = 1e-3
    with pytest.raises(ValueError, match="eps"):
        pack_preps([a, b], width=64)


@pytest.mark.parametrize("order", ["cpu-first", "meta-first"])
def test_models_on_different_devices(order):
    """One model on 'meta', one on CPU: a ValueError naming the tensors/devices, in either order."""
    cpu_model = archs.build("lenetlike")
    meta_model = archs.build("lenetlike").to("meta")
    models = [cpu_model, meta_model] if order == "cpu-first" else [meta_model, cpu_model]
    with pytest.raises(ValueError, match="device"):
        pack_preps(models, width=64)


def test_one_parameter_on_another_device():
    m = archs.build("lenetlike")
    m.fc2.weight = nn.Parameter(torch.empty_like(m.fc2.weight, device="meta"))
    with pytest.raises(ValueError, match="device"):
        pack_preps(m, width=64)


@pytest.mark.parametrize("backend", [None, "cpp", "torch"])
def test_double_model(backend):
    with pytest.raises(TypeError, match="float32"):
        pack_preps(archs.build("lenetlike").double(), width=64, backend=backend)
    m = make_model("resnet8")
    m.bn1.running_var = m.bn1.running_var.double()
    with pytest.raises(TypeError, match="float32"):
        pack_preps(m, width=64, backend=backend)
    with pytest.raises(TypeError, match="float32"):
        pack_preps(archs.build("resnet8").half(), width=64, backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_copy(value, backend):
    models = [archs.build("lenetlike") for _ in range(2)]
    with torch.no_grad():
        models[1].fc2.weight[3, 7] = value
    with pytest.raises(ValueError, match="non-finite"):
        pack_preps(models, width=64, backend=backend)
    prep = pack_preps(models, width=64, allow_nonfinite=True, backend=backend)
    s = archs.spec("lenetlike", "cifar10")
    lay = nf.PRepLayout.for_spec(s, 64)
    e = [e for e in lay.entries if e.name == "fc2.weight"][0]
    flat = prep.reshape(2, -1)
    got = flat[1, e.offset + 3 * e.shape[1] + 7]  # fc2.weight[3, 7]
    assert (math.isnan(value) and torch.isnan(got)) or got.item() == value
    assert torch.isfinite(flat[0]).all()
    assert int((~torch.isfinite(flat[1])).sum()) == 1


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("where", ["conv_weight", "gamma", "beta", "mean", "var_nan", "var_negative"])
def test_nonfinite_fold(where, backend):
    m = make_model("resnet8")
    with torch.no_grad():
        bn = m.get_submodule("layer3.0.bn2")
        if where == "conv_weight":
            m.get_submodule("layer3.0.conv2").weight[5, 0, 1, 1] = float("nan")
        elif where == "gamma":
            bn.weight[5] = float("inf")
        elif where == "beta":
            bn.bias[5] = float("nan")
        elif where == "mean":
            bn.running_mean[5] = float("-inf")
        elif where == "var_nan":
            bn.running_var[5] = float("nan")
        else:
            bn.running_var[5] = -1.0  # sqrt of a negative number: NaN
    with pytest.raises(ValueError, match="non-finite"):
        pack_preps(m, width=64, backend=backend)
    prep = pack_preps(m, width=64, allow_nonfinite=True, backend=backend)
    assert_nonfinite_as_oracle(prep, m)


def assert_nonfinite_only_at(prep: torch.Tensor, reference: torch.Tensor, spec, param: str, flat_index: int,
                             net: int, value: float) -> None:
    """A PRep batch packed with ``allow_nonfinite=True`` from networks whose only non-finite
    parameter is ``param`` (flattened) at ``flat_index`` of network ``net``: that one position
    holds ``value`` (NaN, +Inf or -Inf), found from the PRep layout of ``spec``; every other
    position is finite and as the ``reference`` pack's (a count of non-finite values would pass
    with the value in the wrong place)."""
    flat = prep.detach().cpu().reshape(prep.shape[0], -1)
    ref = reference.detach().cpu().reshape(prep.shape[0], -1)
    e = next(e for e in nf.PRepLayout.for_spec(spec, prep.shape[-1]).entries if e.name == param)
    at = e.offset + flat_index
    where = (~torch.isfinite(flat)).nonzero().tolist()
    assert where == [[net, at]], f"non-finite values at {where[:10]}, expected only [{net}, {at}] ({param})"
    got = flat[net, at].item()
    assert (math.isnan(value) and math.isnan(got)) or got == value, (got, value)
    finite = torch.isfinite(flat)
    assert_fold_close(flat[finite], ref[finite])


def assert_nonfinite_as_oracle(prep: torch.Tensor, model: archs.SpecNet) -> None:
    """The PRep of ``model`` (BN channel 5 of layer3.0 made non-finite) has NaN, +Inf and -Inf exactly
    where the float64 oracle (conftest.manual_fold_flat) has them, all inside channel 5 of
    layer3.0.conv2's folded weight and bias; every other value as the oracle's; the padding zero."""
    flat = prep.detach().cpu().reshape(-1)
    truth = manual_fold_flat(model)
    P = truth.numel()
    got = flat[:P]
    for kind in (torch.isnan, torch.isposinf, torch.isneginf):
        where = (kind(got) != kind(truth)).nonzero().flatten().tolist()
        assert not where, f"{kind.__name__} differs from the oracle at {where[:10]} ({len(where)} positions)"
    lay = nf.PRepLayout.for_spec(model.spec, prep.shape[-1])
    w = next(e for e in lay.entries if e.name == "layer3.0.conv2.weight")
    b = next(e for e in lay.entries if e.name == "layer3.0.conv2.bias")
    per_channel = w.numel // w.shape[0]
    channel5 = torch.zeros(P, dtype=torch.bool)
    channel5[w.offset + 5 * per_channel:w.offset + 6 * per_channel] = True
    channel5[b.offset + 5] = True
    bad = ~torch.isfinite(truth)
    assert bad.any() and not (bad & ~channel5).any()
    assert_fold_close(got[~bad], truth[~bad])
    assert not flat[P:].any()


def test_nonfinite_not_in_packed_values_is_fine():
    """NaN in a buffer that is not packed (BN num_batches_tracked is an int; momentum irrelevant)."""
    m = make_model("resnet8")
    m.bn1.momentum = float("nan")
    with torch.no_grad():
        pack_preps(m, width=64)


def test_noncontiguous_parameters():
    ref_model = make_model("resnet8")
    m = make_model("resnet8")
    m.load_state_dict(ref_model.state_dict())
    with torch.no_grad():
        # transposed-then-transposed-back (column-major) weight
        w = m.fc.weight.data
        m.fc.weight.data = w.t().contiguous().t()
        assert not m.fc.weight.is_contiguous()
        # a strided view with gaps (as_strided into a larger buffer)
        w = m.get_submodule("layer1.0.conv1").weight.data
        big = torch.zeros(w.numel() * 2)
        strided = big.as_strided(w.shape, tuple(2 * s for s in w.stride()))
        strided.copy_(w)
        m.get_submodule("layer1.0.conv1").weight.data = strided
        assert not m.get_submodule("layer1.0.conv1").weight.is_contiguous()
        # non-contiguous BN statistics and gamma
        rv = m.bn1.running_var
        buf = torch.zeros(rv.numel(), 3)
        buf[:, 1] = rv
        m.bn1.running_var = buf[:, 1]
        assert not m.bn1.running_var.is_contiguous()
        g = m.bn1.weight.data
        gbuf = torch.zeros(2 * g.numel())
        gbuf[::2] = g
        m.bn1.weight.data = gbuf[::2]
        assert not m.bn1.weight.is_contiguous()
    with torch.no_grad():
        for backend in ("cpp", "torch"):
            expected = pack_preps(ref_model, width=64, backend=backend)  # same values, contiguous
            assert torch.equal(pack_preps(m, width=64, backend=backend), expected), backend


def test_channels_last_model():
    m = make_model("resnet8")
    cl = make_model("resnet8")
    cl.load_state_dict(m.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    assert not cl.get_submodule("layer1.0.conv1").weight.is_contiguous()
    with torch.no_grad():
        assert torch.equal(pack_preps(cl, width=64), pack_preps(m, width=64))
    bnfree = archs.build("vanillacnn")
    cl2 = archs.build("vanillacnn")
    cl2.load_state_dict(bnfree.state_dict())
    cl2 = cl2.to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(pack_preps(cl2, width=64), pack_preps(bnfree, width=64))


# ---------------------------------------------------------------------------------------------
# backend selection


def test_backends_report():
    rep = nf.backends()
    assert set(rep) >= {"cpu", "cuda", "triton"}
    assert rep["cpu"] == {"compiled": True, "usable": True}
    assert "native_error" not in rep
    for k in ("cuda", "triton"):
        assert set(rep[k]) == {"compiled", "usable"}
        assert isinstance(rep[k]["compiled"], bool) and isinstance(rep[k]["usable"], bool)
    if not torch.cuda.is_available():
        assert rep["cuda"]["usable"] is False


@pytest.fixture
def reference_spy(monkeypatch):
    calls = []
    real = pack_mod.pack_preps_reference

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pack_mod, "pack_preps_reference", spy)
    return calls


def test_backend_argument_torch_forces_reference(reference_spy, monkeypatch):
    monkeypatch.delenv("NETSPACE_BACKEND", raising=False)
    m = make_model("resnet8")
    with torch.no_grad():
        pack_preps(m, width=64)
        assert reference_spy == []  # the default on CPU is the native kernel
        pack_preps(m, width=64, backend="cpp")
        assert reference_spy == []
        pack_preps(m, width=64, backend="torch")
        assert reference_spy == [1]
        fold_bn(m, backend="torch")
        assert reference_spy == [1, 1]


def test_env_torch_forces_reference(reference_spy, monkeypatch):
    monkeypatch.setenv("NETSPACE_BACKEND", "torch")
    m = make_model("resnet8")
    with torch.no_grad():
        a = pack_preps(m, width=64)
        assert reference_spy == [1]
        fold_bn(m)
        assert reference_spy == [1, 1]
        # an explicit argument wins over the environment
        b = pack_preps(m, width=64, backend="cpp")
        assert reference_spy == [1, 1]
    assert_fold_close(b, a)


def test_env_bad_backend(monkeypatch):
    monkeypatch.setenv("NETSPACE_BACKEND", "tpu")
    with pytest.raises(ValueError, match="NETSPACE_BACKEND: expected one of .*got 'tpu'"):
        pack_preps(archs.build("lenetlike"), width=64)


@pytest.mark.parametrize("preferred", ["cuda", "triton"])
def test_env_backend_is_a_preference_per_op(monkeypatch, preferred):
    """NETSPACE_BACKEND names a preference: every op that cannot run it on these tensors (here: CPU
    tensors, no GPU, no interpreter) falls back to its own automatic choice, and the batched layer
    ops (no native CUDA kernel at all) keep working; the backend= argument stays a demand."""
    from netspace_fast.ops.backend import select
    from netspace_fast.ops.batched_layers import batched_linear

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("NETSPACE_BACKEND", preferred)
    cpu = torch.device("cpu")
    for op in ("pack_preps", "batched_conv2d", "batched_linear", "gather_grouped"):
        assert select(op, cpu) == "cpp", op
    m = make_model("resnet8")
    monkeypatch.delenv("NETSPACE_BACKEND")
    expect = pack_preps(m, width=64).detach()
    monkeypatch.setenv("NETSPACE_BACKEND", preferred)
    assert torch.equal(pack_preps(m, width=64).detach(), expect)
    preps = torch.randn(2, 3 * 4 + 4)
    assert batched_linear(torch.randn(5, 3), preps, 0, 12, 4, 3).shape == (2, 5, 4)
    with pytest.raises(ValueError, match="backend"):
        pack_preps(m, width=64, backend=preferred)


def test_bad_backend_argument():
    with pytest.raises(ValueError, match="backend"):
        pack_preps(archs.build("lenetlike"), width=64, backend="numpy")


def test_cuda_backend_on_cpu_tensors():
    with pytest.raises(ValueError, match="backend"):
        pack_preps(archs.build("lenetlike"), width=64, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        fold_bn(archs.build("resnet8"), backend="cuda")


@pytest.mark.skipif(nf.ops.backend.triton_interpreted(), reason="TRITON_INTERPRET=1 makes triton usable on CPU")
def test_triton_backend_on_cpu_without_interpreter():
    with pytest.raises(ValueError, match="backend"):
        pack_preps(archs.build("lenetlike"), width=64, backend="triton")


def test_backend_select_auto(monkeypatch):
    monkeypatch.delenv("NETSPACE_BACKEND", raising=False)
    from netspace_fast.ops.backend import select
    assert select("pack_preps", torch.device("cpu")) == "cpp"
    assert select("pack_preps", torch.device("meta")) == "torch"
    assert select("pack_preps", torch.device("cpu"), "torch") == "torch"
