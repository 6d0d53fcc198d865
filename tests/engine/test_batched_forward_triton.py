"""batched_forward on the Triton backend (CPU tensors under TRITON_INTERPRET=1; CUDA when present):
the whole network, both input modes, against the per-network reference loop."""

from __future__ import annotations

import os

import pytest
import torch

from netspace_fast import archs, prep_shape
from netspace_fast.engine import batched_forward, batched_forward_reference

pytestmark = pytest.mark.triton

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton tests need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device", allow_module_level=True)

from conftest import assert_prep_grad_close, rel_norm  # noqa: E402
from test_batched_forward import (  # noqa: E402
    check_callers_gradient_unchanged, check_inplace_changes_are_errors, check_prep_grad_zero_without_gradient,
    poison_uninitialized, rel, tiny_spec)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-2 if DEVICE == "cuda" else 1e-4  # TF32 on the GPU, exact float32 under the interpreter


@pytest.mark.parametrize("which,shared", [("tiny", True), ("tiny", False), ("lenetlike", False)])
def test_batched_forward_triton_matches_reference(which, shared):
    spec = tiny_spec() if which == "tiny" else archs.spec("lenetlike", "cifar10")
    torch.manual_seed(0)
    B, N = 2, 2
    H, W = prep_shape(spec.num_params, 1024 if which == "lenetlike" else 8)
    preps = (torch.randn(B, H + 4, W, device=DEVICE) * 0.1).requires_grad_()
    shape = (N, *spec.input_shape) if shared else (B, N, *spec.input_shape)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    y = batched_forward(spec, preps, x, backend="triton")
    y_ref = batched_forward_reference(spec, preps, x)
    assert rel(y, y_ref) <= TOL
    g = torch.randn_like(y)
    grads, ref_grads = torch.autograd.grad(y, (preps, x), g), torch.autograd.grad(y_ref, (preps, x), g)
    for a, b in zip(grads, ref_grads):
        assert rel(a, b) <= TOL
    if DEVICE == "cpu":  # exact float32 under the interpreter: every layer's weight and bias on its own scale
        assert_prep_grad_close(grads[0], ref_grads[0], spec, TOL)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_batched_forward_triton_prep_grad_zero_where_no_gradient_flows(monkeypatch, shared):
    """Layers whose output does not reach the network's output and the padding get exactly zero
    PRep gradient, never leftover memory (tests/engine/test_batched_forward.py, on the CPU path)."""
    poison_uninitialized(monkeypatch)
    check_prep_grad_zero_without_gradient("triton", shared, DEVICE)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_batched_forward_triton_inplace_change_after_forward_is_an_error(shared):
    """x and the activations the backward reads are saved with save_for_backward (version counters)."""
    check_inplace_changes_are_errors("triton", shared, DEVICE)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
@pytest.mark.parametrize("last", ["linear", "conv"])
def test_batched_forward_triton_callers_gradient_is_not_modified(last, shared):
    """With act 0 the layer backward hands grad_y on as the residual's gradient; the engine must not
    then accumulate into the caller's tensor."""
    check_callers_gradient_unchanged("triton", last, shared, DEVICE)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
@pytest.mark.parametrize("x_grad", [False, True], ids=["x_no_grad", "x_grad"])
def test_batched_forward_triton_skips_first_input_grad(monkeypatch, shared, x_grad):
    """The input gradient of the first layer (dgrad kernel) is computed only when x requires grad;
    when it does, it still matches the reference."""
    from netspace_fast.ops import batched_layers_triton as bt

    launches = []
    real = bt._batched_conv_dgrad_kernel

    class Spy:
        def __getitem__(self, grid):
            launch = real[grid]

            def call(*args, **kw):
                launches.append(args[2].shape)  # grad_x
                return launch(*args, **kw)

            return call

    monkeypatch.setattr(bt, "_batched_conv_dgrad_kernel", Spy())
    spec = tiny_spec()
    torch.manual_seed(0)
    B, N = 2, 2
    H, W = prep_shape(spec.num_params, 8)
    preps = (torch.randn(B, H, W, device=DEVICE) * 0.3).requires_grad_()
    shape = (N, *spec.input_shape) if shared else (B, N, *spec.input_shape)
    x = torch.randn(shape, device=DEVICE, requires_grad=x_grad)
    y = batched_forward(spec, preps, x, backend="triton")
    g = torch.randn_like(y)
    inputs = (preps, x) if x_grad else (preps,)
    grads = torch.autograd.grad(y, inputs, g)
    layers = sum(1 for layer in spec.layers if layer.kind in ("conv", "linear"))
    assert len(launches) == (layers if x_grad else layers - 1)
    assert (tuple(x.shape) in [tuple(s) for s in launches]) == x_grad
    y_ref = batched_forward_reference(spec, preps, x)
    for a, b in zip(grads, torch.autograd.grad(y_ref, inputs, g)):
        assert rel(a, b) <= TOL


_GPU_ARCHS = [("lenetlike", "cifar10"), ("vanillacnn", "cifar10"), ("resnet8", "cifar10"), ("resnet8", "tinyimagenet"),
              ("resnet32", "cifar10"), ("siren", "cifar10")]
# TF32 on three of them: each (architecture, precision) compiles its own kernels, and the GPU check
# has a time budget (scripts/device_check.sh)
_GPU_CASES = [(n, d, False) for n, d in _GPU_ARCHS] + [(n, d, True) for n, d in _GPU_ARCHS
                                                       if (n, d) in {("lenetlike", "cifar10"), ("resnet8", "cifar10"),
                                                                     ("siren", "cifar10")}]


@pytest.mark.gpu
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
@pytest.mark.parametrize("name,dataset,tf32", _GPU_CASES,
                         ids=[f"{n}-{d}-{'tf32' if t else 'ieee'}" for n, d, t in _GPU_CASES])
def test_batched_forward_triton_gpu_all_archs(monkeypatch, name, dataset, shared, tf32):
    """On the GPU: every architecture, both modes, outputs and gradients vs the loop (cuDNN in IEEE
    float32, conftest.py), by ||a - b|| / ||b||.

    IEEE products (``NETSPACE_TF32=0``): outputs and gradients within 1e-3 (float32 rounding; a rare
    LeakyReLU pre-activation that rounds to the other side of 0 moves a gradient by ~1/sqrt(numel)).
    TF32 products (``NETSPACE_TF32=1``): outputs within 1e-2; gradients only within 1e-1, because every
    LeakyReLU pre-activation within TF32 rounding of 0 takes its branch at random against the
    float32 loop (measured on an H200, 2026-11-27: 1.2-4.8% on the gradients, all outputs < 1e-2);
    the TF32 kernels' exact arithmetic is checked layer by layer in tests/ops/test_batched_layers_triton.py."""
    from netspace_fast import pack_preps
    monkeypatch.setenv("NETSPACE_TF32", "1" if tf32 else "0")
    spec = archs.spec(name, dataset)
    torch.manual_seed(0)
    B, N = 4, 8
    models = [archs.build(name, dataset, batchnorm=False) for _ in range(B)]
    preps = pack_preps(models, 10_000).detach().to("cuda").requires_grad_()
    shape = (N, *spec.input_shape) if shared else (B, N, *spec.input_shape)
    x = torch.randn(shape, device="cuda", requires_grad=True)
    y = batched_forward(spec, preps, x, backend="triton")  # the backend this test is about, forced
    y_ref = batched_forward_reference(spec, preps, x)
    assert rel_norm(y, y_ref) <= (1e-2 if tf32 else 1e-3)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (preps, x), g), torch.autograd.grad(y_ref, (preps, x), g)):
        assert rel_norm(a, b) <= (1e-1 if tf32 else 1e-3)
