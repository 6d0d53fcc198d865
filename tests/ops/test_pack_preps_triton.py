"""The Triton kernel of the op `netspace_fast::pack_preps` (backend="triton": the op's CUDA kernel
in builds without the native one, called directly where another kernel holds the dispatch key).

Runs on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, which must be set before
triton is imported: run this module in its own process,
``TRITON_INTERPRET=1 pytest -m triton tests``), or on CUDA tensors when a GPU is present. Without
either the module is skipped. Tolerances as in conftest.py: copies exact, folds relative 1e-6.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton tests need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device", allow_module_level=True)

from torch.library import opcheck  # noqa: E402

from netspace_fast import archs, pack_preps  # noqa: E402
from netspace_fast.ops.pack_preps import pack_preps as pack_preps_op  # noqa: E402
from netspace_fast.ops.pack_preps_ref import COPY, FOLD_B, FOLD_W, pack_preps_reference  # noqa: E402
from netspace_fast.ops.pack_preps_triton import BLOCK, pack_preps_forward  # noqa: E402
from hypothesis import given, settings  # noqa: E402

from conftest import assert_fold_close, make_model, plans  # noqa: E402
from test_pack_preps import assert_nonfinite_as_oracle, assert_nonfinite_only_at  # noqa: E402

DEVICE = torch.device("cpu") if INTERPRET else torch.device("cuda")


def top(tensors, plan, eps, num_nets, rows, width, check_finite):
    """The op on its Triton kernel."""
    return pack_preps_op(tensors, plan, eps, num_nets, rows, width, check_finite, backend="triton")


def _to(models):
    return [m.to(DEVICE) for m in models]


def _cmp(out, ref, exact):
    assert out.shape == ref.shape and out.device == ref.device
    if exact:
        assert torch.equal(out, ref)
    else:
        assert_fold_close(out.cpu(), ref.cpu())


@pytest.mark.parametrize("name,bn", [("lenetlike", True), ("resnet8", True), ("resnet8", False), ("siren", True)])
def test_triton_pack_vs_reference(name, bn):
    models = _to([make_model(name, "cifar10", batchnorm=bn) for _ in range(2)])
    with torch.no_grad():
        out = pack_preps(models, width=64, backend="triton")
        ref = pack_preps(models, width=64, backend="torch")
    _cmp(out, ref, exact=not models[0].batchnorm)


def test_triton_pack_width_10000():
    models = _to([make_model("lenetlike") for _ in range(2)])
    with torch.no_grad():
        out = pack_preps(models, width=10_000, backend="triton")
        ref = pack_preps(models, width=10_000, backend="torch")
    assert out.shape == (2, 8, 10_000)
    _cmp(out, ref, exact=True)


def _fold_tensors(C, K, bias, g):
    ts = [torch.randn(C * K, generator=g), torch.randn(C, generator=g), torch.randn(C, generator=g),
          torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5]
    if bias:
        ts.append(torch.randn(C, generator=g))
    return ts


# numels around the BLOCK = 1024 chunk boundary, and the padding crossing it too
EDGE = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 2 * BLOCK, 2 * BLOCK + 1]


@pytest.mark.parametrize("numel", EDGE)
def test_triton_copy_block_edges(numel):
    g = torch.Generator().manual_seed(numel)
    B = 2
    tensors = [torch.randn(numel, generator=g).to(DEVICE) for _ in range(B)]
    plan = [COPY, numel, 0, 0, 0, 0, 0]
    for width, extra_rows in [(8, 0), (8, 1), (40, 1), (1024, 2)]:
        rows = -(-numel // width) + extra_rows
        out = top(tensors, plan, [0.0], B, rows, width, True)
        ref = pack_preps_reference(tensors, plan, [0.0], B, rows, width, True)
        _cmp(out, ref, exact=True)


@pytest.mark.parametrize("pad", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1])
def test_triton_padding_block_edges(pad):
    numel = 24
    width = 8
    total = numel + pad
    rows = -(-total // width)
    extra = rows * width - total  # pad rounded up to a full row
    tensors = [torch.randn(numel).to(DEVICE)]
    out = top(tensors, [COPY, numel, 0, 0, 0, 0, 0], [0.0], 1, rows, width, False)
    flat = out.reshape(-1)
    assert torch.equal(flat[:numel], tensors[0])
    assert not flat[numel:].any(), (pad, extra)


@pytest.mark.parametrize("C,K", [(1, BLOCK - 1), (1, BLOCK + 1), (3, BLOCK // 3 + 1), (BLOCK + 1, 1), (7, 293)])
@pytest.mark.parametrize("bias", [False, True])
def test_triton_fold_block_edges(C, K, bias):
    g = torch.Generator().manual_seed(C * K)
    B = 2
    tensors = []
    for _ in range(B):
        tensors += _fold_tensors(C, K, bias, g)
    tensors = [t.to(DEVICE) for t in tensors]
    plan = [FOLD_W, C * K, 0, 1, 4, C, 0, FOLD_B, C, 5 if bias else -1, 1, 2, 3, 4,
            COPY, C, 3, 0, 0, 0, 0]
    eps = [1e-5, 1e-3, 0.0]
    total = C * K + 2 * C
    rows = -(-total // 8) + 1
    out = top(tensors, plan, eps, B, rows, 8, True)
    ref = pack_preps_reference(tensors, plan, eps, B, rows, 8, True)
    _cmp(out, ref, exact=False)
    T = len(tensors) // B
    for b in range(B):  # the copy of running_mean is exact
        assert torch.equal(out[b].reshape(-1)[C * K + C:total], tensors[b * T + 3])


def test_triton_many_small_segments():
    g = torch.Generator().manual_seed(1)
    sizes = [0, 1, 2, 3, 5, 1023, 1, 1025, 0, 7]
    tensors = [torch.randn(n, generator=g).to(DEVICE) for _ in range(2) for n in sizes]
    plan = []
    for i, n in enumerate(sizes):
        plan += [COPY, n, i, 0, 0, 0, 0]
    total = sum(sizes)
    rows = -(-total // 16) + 1
    out = top(tensors, plan, [0.0] * len(sizes), 2, rows, 16, True)
    ref = pack_preps_reference(tensors, plan, [0.0] * len(sizes), 2, rows, 16, True)
    _cmp(out, ref, exact=True)


def test_triton_noncontiguous_sources():
    w = torch.randn(40, 30).t().to(DEVICE)  # (30, 40), column-major
    assert not w.is_contiguous()
    v = torch.randn(100).to(DEVICE)[::3]
    plan = [COPY, w.numel(), 0, 0, 0, 0, 0, COPY, v.numel(), 1, 0, 0, 0, 0]
    rows = -(-(w.numel() + v.numel()) // 8)
    out = top([w, v], plan, [0.0, 0.0], 1, rows, 8, False)
    ref = pack_preps_reference([w, v], plan, [0.0, 0.0], 1, rows, 8, False)
    _cmp(out, ref, exact=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inside the interpreter: inf - inf
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_triton_nonfinite_refused(value):
    models = [archs.build("lenetlike") for _ in range(2)]
    with torch.no_grad():
        models[1].fc3.bias[4] = value
    ref = pack_preps(models, width=64, backend="torch", allow_nonfinite=True)  # on CPU, before _to
    models = _to(models)
    with pytest.raises(ValueError, match="non-finite"):
        pack_preps(models, width=64, backend="triton")
    out = pack_preps(models, width=64, backend="triton", allow_nonfinite=True)
    assert_nonfinite_only_at(out, ref, models[0].spec, "fc3.bias", 4, net=1, value=value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inside the interpreter: sqrt(-2), inf * 0
@pytest.mark.parametrize("where", ["var_negative", "gamma_inf", "mean_-inf"])
def test_triton_nonfinite_fold_refused(where):
    """Refused by default; with allow_nonfinite=True NaN/Inf exactly where the float64 oracle has them."""
    m = make_model("resnet8")
    with torch.no_grad():
        bn = m.get_submodule("layer3.0.bn2")
        if where == "var_negative":
            bn.running_var[5] = -2.0  # sqrt(negative) -> NaN
        elif where == "gamma_inf":
            bn.weight[5] = float("inf")
        else:
            bn.running_mean[5] = float("-inf")
    m = m.to(DEVICE)
    with pytest.raises(ValueError, match="non-finite"):
        pack_preps(m, width=64, backend="triton")
    assert_nonfinite_as_oracle(pack_preps(m, width=64, backend="triton", allow_nonfinite=True), m.cpu())


def test_triton_bad_plans():
    t = [torch.randn(5).to(DEVICE)]
    with pytest.raises(ValueError, match="plan"):
        top(t, [COPY, 5, 1, 0, 0, 0, 0], [0.0], 1, 1, 8, False)
    with pytest.raises(ValueError, match="tensors"):
        top(t, [COPY, 4, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, False)
    with pytest.raises(ValueError, match="rows"):
        top(t, [COPY, 5, 0, 0, 0, 0, 0], [0.0], 1, 0, 8, False)
    with pytest.raises(TypeError, match="float32"):
        top([t[0].double()], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, False)


def test_triton_opcheck():
    """On CUDA the op itself (schema, fake, autograd) with whatever CUDA kernel it has; under the
    interpreter the Triton path's autograd (the op's formula) against the reference's gradients."""
    g = torch.Generator().manual_seed(3)
    tensors = []
    for _ in range(2):
        tensors += _fold_tensors(4, 3, True, g) + [torch.randn(6, generator=g)]
    tensors = [t.to(DEVICE).requires_grad_() for t in tensors]
    plan = [FOLD_W, 12, 0, 1, 4, 4, 0, FOLD_B, 4, 5, 1, 2, 3, 4, COPY, 6, 6, 0, 0, 0, 0]
    args = (tensors, plan, [1e-5, 1e-5, 0.0], 2, 4, 8, True)
    if DEVICE.type == "cuda":
        opcheck(torch.ops.netspace_fast.pack_preps, args)
    out, ref = top(*args), pack_preps_reference(*args)
    assert_fold_close(out.detach(), ref.detach())
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((out * w).sum(), tensors), torch.autograd.grad((ref * w).sum(), tensors)):
        assert_fold_close(a, b, rtol=1e-5)


def test_triton_gradients_vs_reference():
    m = make_model("resnet8").to(DEVICE)
    for buf in m.buffers():
        if buf.is_floating_point():
            buf.requires_grad_(True)
    leaves = list(m.parameters()) + [b for b in m.buffers() if b.requires_grad]
    out = pack_preps(m, width=64, backend="triton")
    ref = pack_preps(m, width=64, backend="torch")
    weights = torch.randn_like(ref)
    ga = torch.autograd.grad((out * weights).sum(), leaves)
    gr = torch.autograd.grad((ref * weights).sum(), leaves)
    for x, y in zip(ga, gr):
        assert_fold_close(x.cpu(), y.cpu(), rtol=1e-5)


def test_triton_forward_zero_networks():
    out = pack_preps_forward([], [COPY, 3, 0, 0, 0, 0, 0], [0.0], 0, 4, 8, False)
    assert out.shape == (0, 4, 8)


@settings(max_examples=15)
@given(case=plans())
def test_triton_random_plans_vs_reference(case):
    tensors, plan, eps, num_nets, rows, width = case
    tensors = [t.to(DEVICE) for t in tensors]
    out = top(tensors, plan, eps, num_nets, rows, width, True)
    ref = pack_preps_reference(tensors, plan, eps, num_nets, rows, width, True)
    _cmp(out, ref, exact=False)
