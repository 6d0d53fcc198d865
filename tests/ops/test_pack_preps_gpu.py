"""CUDA checks (marked gpu; skipped without a CUDA device): the native CUDA kernel and the Triton
kernel against the reference, fold_bn on CUDA, NaN refusal, and one kernel launch per call.
Tolerances as in conftest.py: copies exact, folds relative 1e-6, network outputs rel 1e-5."""

from __future__ import annotations

import pytest
import torch

import netspace_fast as nf
from netspace_fast import archs, fold_bn, pack_preps
from netspace_fast.ops.pack_preps_ref import COPY, FOLD_B, FOLD_W, pack_preps_reference
from conftest import all_forms, assert_fold_close, form_id, make_model, random_input, rel_err
from test_pack_preps import assert_nonfinite_only_at

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
op = torch.ops.netspace_fast.pack_preps


def test_cuda_build_present():
    """A silent CPU-only build would show up here (and make every other CUDA test meaningless)."""
    rep = nf.backends()
    assert rep["cuda"] == {"compiled": True, "usable": True}
    assert rep["triton"]["usable"] is True
    assert nf.ops.backend.select("pack_preps", CUDA) == "cuda"


@pytest.mark.parametrize("width", [8, 10_000])
@pytest.mark.parametrize("form", all_forms(), ids=form_id)
def test_cuda_pack_vs_reference(form, width):
    name, ds, bn = form
    models = [make_model(name, ds, batchnorm=bn) for _ in range(3)]
    with torch.no_grad():
        ref = pack_preps(models, width=width, backend="torch")  # on CPU
        gpu_models = [m.to(CUDA) for m in models]
        out = pack_preps(gpu_models, width=width)
        assert out.device.type == "cuda"
        ref_gpu = pack_preps(gpu_models, width=width, backend="torch")
    if gpu_models[0].batchnorm:
        assert_fold_close(out.cpu(), ref)
        assert_fold_close(out.cpu(), ref_gpu.cpu())
    else:
        assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("name,bn", [("lenetlike", True), ("resnet8", True), ("resnet32", True), ("resnet56", False),
                                     ("siren", True)])
def test_triton_cuda_vs_reference(name, bn):
    models = [make_model(name, "cifar10", batchnorm=bn).to(CUDA) for _ in range(3)]
    with torch.no_grad():
        out = pack_preps(models, width=64, backend="triton")
        ref = pack_preps(models, width=64, backend="torch")
    if models[0].batchnorm:
        assert_fold_close(out.cpu(), ref.cpu())
    else:
        assert torch.equal(out, ref)


def test_cuda_random_plans_vs_reference():
    """Odd plans: numels crossing the CUDA chunk (4096) and Triton BLOCK (1024) boundaries."""
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 1023, 1025, 4095, 4096, 4097, 8193):
        C = 3
        tensors = []
        for _ in range(2):
            tensors += [torch.randn(n, generator=g), torch.randn(C * 7, generator=g), torch.randn(C, generator=g),
                        torch.randn(C, generator=g), torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5]
        plan = [COPY, n, 0, 0, 0, 0, 0, FOLD_W, C * 7, 1, 2, 5, C, 0, FOLD_B, C, -1, 2, 3, 4, 5]
        eps = [0.0, 1e-5, 1e-5]
        rows = -(-(n + 8 * C) // 16) + 300  # padding crossing the chunk size too
        ref = pack_preps_reference(tensors, plan, eps, 2, rows, 16, True)
        cuda_t = [t.to(CUDA) for t in tensors]
        out = op(cuda_t, plan, eps, 2, rows, 16, True)
        tri = torch.ops.netspace_fast.pack_preps_triton(cuda_t, plan, eps, 2, rows, 16, True)
        assert torch.equal(out.cpu().reshape(2, -1)[:, :n], ref.reshape(2, -1)[:, :n])  # the copy: exact
        assert_fold_close(out.cpu(), ref)
        assert_fold_close(tri.cpu(), ref)


def test_cuda_noncontiguous():
    m = make_model("resnet8").to(CUDA).to(memory_format=torch.channels_last)
    assert not m.conv1.weight.is_contiguous()
    with torch.no_grad():
        out = pack_preps(m, width=64)
        ref = pack_preps(m, width=64, backend="torch")
    assert_fold_close(out.cpu(), ref.cpu())


@pytest.mark.parametrize("name", ["resnet8", "resnet32", "resnet56"])
@pytest.mark.parametrize("dataset", ["cifar10", "tinyimagenet"])
def test_fold_bn_cuda(name, dataset):
    models = [make_model(name, dataset).eval().to(CUDA) for _ in range(2)]
    folded = fold_bn(models)
    for m, f in zip(models, folded):
        assert f.conv1.weight.device.type == "cuda"
        x = random_input(m).to(CUDA)
        with torch.no_grad():
            assert rel_err(f.eval()(x), m(x)) <= 1e-5


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_cuda_nonfinite_refused(backend):
    models = [make_model("resnet8") for _ in range(2)]
    with torch.no_grad():
        models[1].fc.weight[0, 0] = float("nan")
    ref = pack_preps(models, width=64, backend="torch", allow_nonfinite=True)  # on CPU
    models = [m.to(CUDA) for m in models]
    with pytest.raises(ValueError, match="non-finite"):
        pack_preps(models, width=64, backend=backend)
    out = pack_preps(models, width=64, backend=backend, allow_nonfinite=True)
    assert_nonfinite_only_at(out, ref, models[0].spec, "fc.weight", 0, net=1, value=float("nan"))  # fc.weight[0, 0]


def test_cuda_gradients_vs_reference():
    m = make_model("resnet8").to(CUDA)
    for b in m.buffers():
        if b.is_floating_point():
            b.requires_grad_(True)
    leaves = list(m.parameters()) + [b for b in m.buffers() if b.requires_grad]
    out = pack_preps(m, width=64)
    ref = pack_preps(m, width=64, backend="torch")
    w = torch.randn_like(ref)
    for x, y in zip(torch.autograd.grad((out * w).sum(), leaves), torch.autograd.grad((ref * w).sum(), leaves)):
        assert_fold_close(x.cpu(), y.cpu(), rtol=1e-5)


def test_cuda_opcheck():
    from torch.library import opcheck
    g = [torch.randn(6, 5), torch.randn(6), torch.randn(6), torch.randn(6), torch.rand(6) + 0.5]
    ts = [t.to(CUDA).requires_grad_() for t in g]
    opcheck(op, (ts, [FOLD_W, 30, 0, 1, 4, 6, 0, FOLD_B, 6, -1, 1, 2, 3, 4], [1e-5, 1e-5], 1, 5, 8, True))


def test_cuda_mixed_devices():
    a = archs.build("lenetlike").to(CUDA)
    b = archs.build("lenetlike")
    for models in ([a, b], [b, a]):
        with pytest.raises(ValueError, match="device"):
            pack_preps(models, width=64)


def test_cuda_backend_cpp_refused():
    with pytest.raises(ValueError, match="backend"):
        pack_preps(archs.build("lenetlike").to(CUDA), width=64, backend="cpp")


def _count_kernels(fn, pattern):
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if pattern in e.name and e.device_type.name == "CUDA")


@pytest.mark.parametrize("check_finite", [False, True])
def test_one_launch_per_call(check_finite):
    models = [make_model("resnet32").to(CUDA) for _ in range(64)]
    with torch.no_grad():
        pack_preps(models, width=10_000, allow_nonfinite=not check_finite)  # warm up
        n = _count_kernels(lambda: pack_preps(models, width=10_000, allow_nonfinite=not check_finite),
                           "pack_kernel")
    assert n == 1


def test_fold_bn_one_launch_per_architecture():
    models = [make_model("resnet8").to(CUDA) for _ in range(64)]
    fold_bn(models)
    n = _count_kernels(lambda: fold_bn(models), "pack_kernel")
    assert n == 1


def test_triton_one_launch_per_call():
    models = [make_model("resnet8").to(CUDA) for _ in range(64)]
    with torch.no_grad():
        pack_preps(models, width=10_000, backend="triton")
        n = _count_kernels(lambda: pack_preps(models, width=10_000, backend="triton"), "_pack_preps_kernel")
    assert n == 1
