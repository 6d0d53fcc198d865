"""PRepPacker (a reusable packing plan) against pack_preps: same values, same checks, in-place updates
seen, replaced tensors not seen until refresh(), ``out=``, the finite check, no autograd.

Plain tests run the CPU route (the op with the gathered arguments). The ``triton`` tests run the
prebuilt-table Triton route: on CPU tensors under the interpreter
(``TRITON_INTERPRET=1 pytest -m triton tests/prep/test_packer.py``: it must be set before triton is
imported), on CUDA tensors where a GPU is present; skipped otherwise. Tolerances as in conftest.py:
copies exact; the same kernel on the same values is exact too; folds of two kernels relative 1e-6.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import netspace_fast as nf
from netspace_fast import PRepPacker, archs, pack_preps
from netspace_fast.prep import PRepPacker as PRepPackerFromPrep
from conftest import HAS_CUDA, assert_fold_close, expected_rows, make_model

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = torch.device("cpu") if INTERPRET else torch.device("cuda")
needs_triton = pytest.mark.skipif(not (INTERPRET or HAS_CUDA),
                                  reason="Triton route: needs TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device")

FORMS = [("lenetlike", "cifar10", True), ("vanillacnn", "tinyimagenet", True), ("resnet8", "cifar10", False),
         ("resnet8", "cifar10", True), ("resnet8", "tinyimagenet", True), ("siren", "cifar10", True)]


def _form_id(form):
    name, ds, bn = form
    return f"{name}-{ds}-{'bn' if bn else 'nobn'}"


def _models(form, n=2):
    name, ds, bn = form
    return [make_model(name, ds, batchnorm=bn) for _ in range(n)]


def _ref(models, **kw):
    with torch.no_grad():
        return pack_preps(models, **kw)


def _error(fn):
    """(type, message) of the exception ``fn()`` raises."""
    with pytest.raises((TypeError, ValueError)) as info:
        fn()
    return type(info.value), str(info.value)


def _param_list(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return nn.ParameterList([nn.Parameter(torch.randn(s, generator=g)) for s in shapes])


def test_exported():
    assert PRepPacker is PRepPackerFromPrep is nf.prep.pack.PRepPacker
    assert "PRepPacker" in nf.__all__ and "PRepPacker" in nf.prep.__all__


# ---------------------------------------------------------------------------------------------
# values: the packer is pack_preps


@pytest.mark.parametrize("width", [8, 64, 10_000])
@pytest.mark.parametrize("form", FORMS, ids=_form_id)
def test_packer_matches_pack_preps(form, width):
    models = _models(form)
    packer = PRepPacker(models, width=width)
    out = packer()
    ref = _ref(models, width=width)
    P = archs.spec(form[0], form[1]).num_params
    assert packer.backend == "cpp" and packer.device == torch.device("cpu")
    assert out.shape == ref.shape == packer.shape == (2, expected_rows(P, width), width)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, ref)  # the same kernel on the same values
    assert torch.equal(packer.pack(), ref)  # and again
    if models[0].batchnorm:
        assert_fold_close(out, _ref(models, width=width, backend="torch"))
    else:
        assert torch.equal(out, _ref(models, width=width, backend="torch"))


@pytest.mark.parametrize("backend", ["cpp", "torch", "auto"])
def test_packer_backends(backend):
    models = _models(("resnet8", "cifar10", True))
    packer = PRepPacker(models, width=64, backend=backend)
    assert packer.backend == ("cpp" if backend == "auto" else backend)
    ref = _ref(models, width=64, backend=packer.backend)
    assert torch.equal(packer(), ref)


def test_packer_plain_modules():
    def make(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(20, 7),
                             nn.LayerNorm(7), nn.Linear(7, 2, bias=False))

    models = [make(s) for s in range(3)]
    packer = PRepPacker(models, width=16)
    ref = _ref(models, width=16)
    assert torch.equal(packer(), ref)
    P = sum(p.numel() for p in models[0].parameters())
    flat = packer().reshape(3, -1)
    for b, m in enumerate(models):  # a plain module without BatchNorm: its parameters, copied
        assert torch.equal(flat[b, :P], torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
        assert not flat[b, P:].any()
    lin = nn.Linear(3, 4)
    single = PRepPacker(lin, width=8)  # one module, not a list
    assert single.shape == (1, 4, 8) and single.num_nets == 1
    assert torch.equal(single(), _ref(lin, width=8))


def test_packer_height_and_odd_shapes():
    models = [_param_list([(0,), (3, 0), (1,), (5, 2), ()], seed) for seed in range(2)]  # empty tensors too
    P = 1 + 10 + 1
    packer = PRepPacker(models, width=8, height=12)
    assert packer.shape == (2, 12, 8) and packer.num_values == P
    out = packer()
    assert torch.equal(out, _ref(models, width=8, height=12))
    assert not out.reshape(2, -1)[:, P:].any()
    one = PRepPacker([_param_list([(1,)], 0)], width=8)
    assert one.shape == (1, 4, 8)
    assert torch.equal(one(), _ref([_param_list([(1,)], 0)], width=8))


# ---------------------------------------------------------------------------------------------
# in-place updates are seen; replaced tensors are not, until refresh()


def test_packer_sees_inplace_updates():
    models = _models(("resnet8", "cifar10", True))
    packer = PRepPacker(models, width=64)
    before = packer().clone()
    # an optimizer step (parameters), a training-mode forward (BN running statistics, in place)
    opt = torch.optim.SGD([p for m in models for p in m.parameters()], lr=0.1)
    for m in models:
        m.train()
        m(torch.randn(4, *m.spec.input_shape)).square().mean().backward()
    opt.step()
    after = packer()
    assert not torch.equal(after, before)
    assert torch.equal(after, _ref(models, width=64))
    # load_state_dict copies into the existing tensors; copy_ too
    models[0].load_state_dict(make_model("resnet8").state_dict())
    with torch.no_grad():
        models[1].fc.weight.copy_(torch.randn_like(models[1].fc.weight))
        models[1].bn1.running_var.mul_(3.0)
    assert torch.equal(packer(), _ref(models, width=64))
    assert not packer.is_stale()


def test_packer_replaced_parameter_needs_refresh():
    models = _models(("resnet8", "cifar10", True))
    packer = PRepPacker(models, width=64)
    before = packer().clone()
    models[1].fc.weight = nn.Parameter(torch.randn_like(models[1].fc.weight))  # a new object: not seen
    assert packer.is_stale()
    assert torch.equal(packer(), before)
    assert not torch.equal(packer(), _ref(models, width=64))
    assert packer.refresh() is packer
    assert not packer.is_stale()
    assert torch.equal(packer(), _ref(models, width=64))


def test_packer_old_storage_stays_alive():
    """A tensor given new storage (p.data = ...): the packer keeps reading the old storage, which it
    keeps allocated (stale values, never freed memory)."""
    models = _models(("lenetlike", "cifar10", True))
    packer = PRepPacker(models, width=64)
    before = packer().clone()
    w = models[1].fc2.weight
    w.data = torch.full_like(w, 7.0)  # the old storage has no other owner than the packer now
    for _ in range(3):
        torch.randn(1 << 16)  # allocations that could reuse freed memory
    assert torch.equal(packer(), before)
    assert packer.is_stale()
    packer.refresh()
    assert torch.equal(packer(), _ref(models, width=64))


@pytest.mark.parametrize("how", ["data", "double", "meta", "new-parameter", "assign"])
def test_packer_detects_first_tensor_moved(how):
    models = _models(("lenetlike", "cifar10", True))
    packer = PRepPacker(models, width=64)
    if how == "data":
        models[0].conv1.weight.data = models[0].conv1.weight.data.clone()
    elif how == "double":
        models[0].double()  # new .data for the same objects
    elif how == "meta":
        models[0].to("meta")  # new objects
    elif how == "new-parameter":
        models[0].conv1.weight = nn.Parameter(torch.randn_like(models[0].conv1.weight))
    else:
        models[0].load_state_dict(make_model("lenetlike").state_dict(), assign=True)
    with pytest.raises(RuntimeError, match=r"first tensor was replaced or has new storage.*refresh\(\)"):
        packer()
    assert packer.is_stale()
    if how in ("data", "new-parameter", "assign"):
        packer.refresh()
        assert torch.equal(packer(), _ref(models, width=64))
    else:  # refresh re-checks: the same errors as pack_preps
        kind, msg = _error(lambda: pack_preps(models, width=64, backend="torch"))
        with pytest.raises(kind) as info:
            packer.refresh()
        assert str(info.value) == msg


def test_packer_bn_eps_is_part_of_the_plan():
    models = _models(("resnet8", "cifar10", True))
    packer = PRepPacker(models, width=64)
    models[0].bn1.eps = 1e-2
    assert packer.is_stale()
    with pytest.raises(ValueError, match="eps"):  # the models now disagree: pack_preps' EpsMismatch
        packer.refresh()
    models[1].bn1.eps = 1e-2
    packer.refresh()
    assert not packer.is_stale()
    assert torch.equal(packer(), _ref(models, width=64))


def test_failed_refresh_keeps_the_plan():
    models = _models(("lenetlike", "cifar10", True))
    packer = PRepPacker(models, width=64)
    before = packer().clone()
    models[1].fc3.weight = nn.Parameter(torch.randn(10, 85))  # wrong shape
    with pytest.raises(ValueError, match="tensors"):
        packer.refresh()
    assert torch.equal(packer(), before)


# ---------------------------------------------------------------------------------------------
# out=, check_finite, autograd


def test_packer_out():
    models = _models(("resnet8", "cifar10", True))
    packer = PRepPacker(models, width=64)
    buf = torch.full(packer.shape, float("nan"))
    got = packer(out=buf)
    assert got is buf
    assert torch.equal(buf, _ref(models, width=64))
    assert packer.pack(buf) is buf


@pytest.mark.parametrize("bad,kind,match", [
    (lambda s: torch.zeros(s[0], s[1] + 4, s[2]), ValueError, "out: expected shape"),
    (lambda s: torch.zeros(s[1], s[2]), ValueError, "out: expected shape"),
    (lambda s: torch.zeros(s, dtype=torch.float64), TypeError, "out: expected float32"),
    (lambda s: torch.zeros(s, device="meta"), ValueError, "out: expected a tensor on cpu"),
    (lambda s: torch.zeros(s[0], s[2], s[1]).transpose(1, 2), ValueError, "out: expected a contiguous tensor"),
    (lambda s: [[0.0]], TypeError, "out: expected a torch.Tensor"),
], ids=["rows", "2d", "float64", "device", "noncontiguous", "list"])
def test_packer_out_checked(bad, kind, match):
    packer = PRepPacker(_models(("lenetlike", "cifar10", True)), width=64)
    with pytest.raises(kind, match=match):
        packer(out=bad(packer.shape))


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_packer_check_finite(value):
    models = _models(("resnet8", "cifar10", True))
    with torch.no_grad():
        models[1].get_submodule("layer2.0.bn1").running_mean[3] = value
    packer = PRepPacker(models, width=64)  # building does not look at values
    out = packer()  # no check by default (no synchronization)
    assert not bool(torch.isfinite(out).all())
    _, msg = _error(lambda: pack_preps(models, width=64))
    with pytest.raises(ValueError) as info:
        packer(check_finite=True)
    assert str(info.value) == msg
    with torch.no_grad():
        models[1].get_submodule("layer2.0.bn1").running_mean[3] = 0.0
    assert torch.equal(packer(check_finite=True), _ref(models, width=64))


def test_packer_not_differentiable():
    models = _models(("resnet8", "cifar10", True))
    assert all(p.requires_grad for p in models[0].parameters())
    out = PRepPacker(models, width=64)()
    assert not out.requires_grad and out.grad_fn is None
    assert pack_preps(models, width=64).requires_grad  # the differentiable path


# ---------------------------------------------------------------------------------------------
# bad input: pack_preps' errors, word for word


def _same_error(models, **kw):
    """The packer refuses what pack_preps refuses, with the same type and message (the op-level
    checks are those of the Python backends: pack_preps on backend="torch" unless ``kw`` says)."""
    expected = _error(lambda: pack_preps(models, **{"backend": "torch", **kw}))
    assert _error(lambda: PRepPacker(models, **kw)) == expected
    return expected


@pytest.mark.parametrize("width", [0, -8, 4, 12, 8.0, "64", None])
def test_bad_width(width):
    kind, msg = _same_error(archs.build("lenetlike"), width=width)
    assert "width" in msg


def test_bad_height():
    m = archs.build("lenetlike")
    min_h = expected_rows(62006, 64)
    for h in (min_h - 4, min_h + 2, 0, float(min_h)):
        _, msg = _same_error(m, width=64, height=h)
        assert "height" in msg


@pytest.mark.parametrize("models", [[], (), [archs.build("lenetlike"), "resnet8"], "lenetlike", torch.zeros(3)],
                         ids=["empty-list", "empty-tuple", "str-element", "str", "tensor"])
def test_bad_models(models):
    _, msg = _same_error(models, width=64)
    assert "models" in msg


def test_mixed_architectures_and_eps():
    a, b = make_model("resnet8"), make_model("resnet8", batchnorm=False)
    assert "models" in _same_error([a, a, b], width=64)[1]
    assert "models" in _same_error([nn.Linear(3, 4), nn.Linear(4, 3)], width=8)[1]
    c = make_model("resnet8")
    c.bn1.eps = 1e-3
    assert "eps" in _same_error([a, c], width=64)[1]


def test_bad_tensors():
    assert "num_params" in _same_error(nn.ReLU(), width=8)[1]
    m = archs.build("lenetlike")
    m.fc3.weight = nn.Parameter(torch.randn(10, 85))
    assert "tensors" in _same_error(m, width=64)[1]
    m = make_model("resnet8")
    m.bn1.running_var = torch.ones(15)
    assert "tensors" in _same_error(m, width=64)[1]
    assert "float32" in _same_error(archs.build("lenetlike").double(), width=64)[1]
    assert "device" in _same_error([archs.build("lenetlike"), archs.build("lenetlike").to("meta")], width=64)[1]
    m = archs.build("lenetlike")
    m.fc2.weight = nn.Parameter(torch.empty_like(m.fc2.weight, device="meta"))
    assert "device" in _same_error(m, width=64)[1]


def test_bad_backend():
    m = archs.build("lenetlike")
    for backend in ("tpu", "cuda"):
        assert "backend" in _same_error(m, width=64, backend=backend)[1]
    if not INTERPRET:
        assert "backend" in _same_error(m, width=64, backend="triton")[1]


def test_noncontiguous_on_the_op_route():
    """The op route reads non-contiguous sources as they are, at every call (no copy to go stale)."""
    m = make_model("resnet8").to(memory_format=torch.channels_last)
    assert not m.conv1.weight.is_contiguous()
    packer = PRepPacker([m], width=64)
    assert torch.equal(packer(), _ref([m], width=64))
    with torch.no_grad():
        m.conv1.weight.mul_(2.0)
    assert torch.equal(packer(), _ref([m], width=64))


# ---------------------------------------------------------------------------------------------
# property: random small architectures

_shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@settings(max_examples=25)
@given(shape_list=st.lists(_shapes, min_size=1, max_size=6), width=st.integers(1, 6).map(lambda k: 8 * k),
       batch=st.integers(1, 3), extra=st.integers(0, 2), seed=st.integers(0, 2 ** 16))
def test_packer_random_architectures(shape_list, width, batch, extra, seed):
    models = [_param_list(shape_list, seed + b) for b in range(batch)]
    P = sum(math.prod(s) for s in shape_list)
    if P == 0:
        assert _error(lambda: PRepPacker(models, width=width)) == _error(lambda: pack_preps(models, width=width))
        return
    height = expected_rows(P, width) + 4 * extra
    packer = PRepPacker(models, width=width, height=height)
    assert torch.equal(packer(), _ref(models, width=width, height=height))
    with torch.no_grad():
        for m in models:
            for p in m:
                p.mul_(-3.0).add_(1.0)
    assert torch.equal(packer(), _ref(models, width=width, height=height))


# ---------------------------------------------------------------------------------------------
# the Triton route: prebuilt tables, one launch per call


def _to(models):
    return [m.to(TRITON_DEVICE) for m in models]


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("form", FORMS, ids=_form_id)
def test_triton_packer_matches_pack_preps(form):
    models = _to(_models(form))
    packer = PRepPacker(models, width=64, backend="triton")
    assert packer.backend == "triton"
    out = packer()
    assert out.device.type == TRITON_DEVICE.type
    assert torch.equal(out, _ref(models, width=64, backend="triton"))  # the same kernel
    if models[0].batchnorm:
        assert_fold_close(out.cpu(), _ref(models, width=64, backend="torch").cpu())
    else:
        assert torch.equal(out, _ref(models, width=64, backend="torch"))


@pytest.mark.triton
@needs_triton
def test_triton_packer_is_the_default_on_cuda():
    models = _to(_models(("lenetlike", "cifar10", True)))
    packer = PRepPacker(models, width=64)
    assert packer.backend == ("triton" if TRITON_DEVICE.type == "cuda" else "cpp")


@pytest.mark.triton
@needs_triton
def test_triton_packer_builds_once(monkeypatch):
    """After construction a call launches on the prebuilt tables: no table is built again."""
    from netspace_fast.ops import pack_preps_triton as pt

    models = _to(_models(("resnet8", "cifar10", False)))
    packer = PRepPacker(models, width=64, backend="triton")
    tables = packer._tables

    def refuse(*args, **kwargs):
        raise AssertionError("tables rebuilt during a call")

    monkeypatch.setattr(pt, "_tables", refuse)
    monkeypatch.setattr(pt, "build_tables", refuse)
    ref = _ref(models, width=64, backend="torch")
    for _ in range(2):
        assert torch.equal(packer(), ref)
    assert packer._tables is tables


@pytest.mark.triton
@needs_triton
def test_triton_packer_updates_refresh_and_out():
    models = _to(_models(("resnet8", "cifar10", True)))
    packer = PRepPacker(models, width=64, backend="triton")
    with torch.no_grad():
        for m in models:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.is_floating_point():
                    t.mul_(1.5)
    assert torch.equal(packer(), _ref(models, width=64, backend="triton"))
    models[0].fc.bias = nn.Parameter(torch.randn_like(models[0].fc.bias))
    assert not torch.equal(packer(), _ref(models, width=64, backend="triton"))
    packer.refresh()
    buf = torch.full(packer.shape, float("nan"), device=TRITON_DEVICE)
    version = buf._version
    assert packer(out=buf) is buf
    assert buf._version > version  # an in-place write, as autograd sees it
    assert torch.equal(buf, _ref(models, width=64, backend="triton"))
    with pytest.raises(ValueError, match="out: expected shape"):
        packer(out=buf[:1])


@pytest.mark.triton
@needs_triton
def test_triton_packer_old_storage_stays_alive():
    models = _to(_models(("lenetlike", "cifar10", True)))
    packer = PRepPacker(models, width=64, backend="triton")
    before = packer().clone()
    w = models[1].fc2.weight
    w.data = torch.full_like(w, 7.0)
    for _ in range(3):
        torch.randn(1 << 16, device=TRITON_DEVICE)
    assert torch.equal(packer(), before)
    packer.refresh()
    assert torch.equal(packer(), _ref(models, width=64, backend="triton"))


@pytest.mark.triton
@needs_triton
def test_triton_packer_refuses_noncontiguous():
    m = _to([make_model("resnet8")])[0].to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="not contiguous.*would not see later updates"):
        PRepPacker(m, width=64, backend="triton")
    PRepPacker(m.to(memory_format=torch.contiguous_format), width=64, backend="triton")


@pytest.mark.triton
@needs_triton
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inside the interpreter: inf - inf
def test_triton_packer_check_finite():
    models = _models(("lenetlike", "cifar10", True))
    with torch.no_grad():
        models[1].fc3.bias[4] = float("inf")
    models = _to(models)
    packer = PRepPacker(models, width=64, backend="triton")
    assert not bool(torch.isfinite(packer()).all())
    with pytest.raises(ValueError, match="non-finite"):
        packer(check_finite=True)
    with torch.no_grad():
        models[1].fc3.bias[4] = 0.0
    assert torch.equal(packer(check_finite=True), _ref(models, width=64, backend="triton"))


@pytest.mark.triton
@needs_triton
def test_triton_packer_block_edges():
    from netspace_fast.ops.pack_preps_triton import BLOCK

    shapes = [(BLOCK - 1,), (1,), (BLOCK,), (0,), (2, BLOCK // 2 + 1), (3,)]
    models = _to([_param_list(shapes, s) for s in range(2)])
    P = sum(math.prod(s) for s in shapes)
    for width, extra in ((8, 0), (1024, 4)):
        height = expected_rows(P, width) + extra
        packer = PRepPacker(models, width=width, height=height, backend="triton")
        assert torch.equal(packer(), _ref(models, width=width, height=height, backend="torch"))


@pytest.mark.triton
@needs_triton
@settings(max_examples=10)
@given(shape_list=st.lists(_shapes, min_size=1, max_size=4), width=st.integers(1, 4).map(lambda k: 8 * k),
       batch=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_triton_packer_random_architectures(shape_list, width, batch, seed):
    models = _to([_param_list(shape_list, seed + b) for b in range(batch)])
    if sum(math.prod(s) for s in shape_list) == 0:
        return
    packer = PRepPacker(models, width=width, backend="triton")
    assert torch.equal(packer(), _ref(models, width=width, backend="torch"))
    with torch.no_grad():
        for m in models:
            for p in m:
                p.add_(2.0)
    assert torch.equal(packer(), _ref(models, width=width, backend="torch"))


@pytest.mark.gpu
def test_cuda_graph_capture():
    """With out= and no finite check a packing step is capturable: a replay packs the current values."""
    models = [m.cuda() for m in _models(("resnet8", "cifar10", True))]
    packer = PRepPacker(models, width=64)
    assert packer.backend == "triton"
    buf = torch.empty(packer.shape, device="cuda")
    packer(out=buf)  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        packer(out=buf)
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.mul_(-2.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(buf, _ref(models, width=64, backend="triton"))
    assert_fold_close(buf.cpu(), _ref(models, width=64, backend="torch").cpu())
