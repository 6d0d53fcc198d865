"""The batched layer ops `netspace_fast::batched_conv2d` / `batched_linear` (+ their backward ops) on
the CPU (the C++ kernels, csrc/batched_layers_cpu.cpp): float64 gradcheck, opcheck, hypothesis
properties against the pure-PyTorch references (ops/batched_layers_ref.py) and bad arguments. The
Triton kernels (the ops' CUDA kernels) are tested in test_batched_layers_triton.py; whole networks in
tests/engine/.

Tolerance: every float32 result (the output, the gradients of x, the PReps and the residual) is
compared elementwise with the exact value (the reference in float64 on the same inputs) against its
float32 error bound from a forward error analysis (tests/float_bounds.py: Higham's gamma_k for a sum
of k products in any order, times the sum of the terms' magnitudes; sin(30 z) multiplies the error
of z by 30). The float32 reference must meet the same bounds. No tolerance depends on which BLAS or
oneDNN code path (CPU model, ``MKL_CBWR``, thread count) computed the sums.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import netspace_fast as nf
from netspace_fast.ops.batched_layers import batched_conv2d, batched_linear
from netspace_fast.ops.batched_layers_ref import batched_conv2d_ref, batched_linear_ref
from float_bounds import layer_bounds

native = pytest.mark.skipif(not nf.backends()["cpu"]["compiled"], reason="native CPU kernels not built")


@native
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_layer_ops_gradcheck_float64(act, shared):
    torch.manual_seed(act)
    B, N, P = 2, 2, 200
    preps = (torch.randn(B, P, dtype=torch.float64) * 0.3).requires_grad_()
    x = torch.randn((N, 2, 5, 5) if shared else (B, N, 2, 5, 5), dtype=torch.float64, requires_grad=True)
    res = torch.randn(B, N, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    conv = lambda p, xx, r: batched_conv2d(xx, p, 7, 100, 3, 2, 3, 2, 1, act, r, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(conv, (preps, x, res))
    xl = torch.randn((N, 6) if shared else (B, N, 6), dtype=torch.float64, requires_grad=True)
    rl = torch.randn(B, N, 4, dtype=torch.float64, requires_grad=True)
    lin = lambda p, xx, r: batched_linear(xx, p, 150, 10, 4, 6, act, r, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(lin, (preps, xl, rl))


@native
def test_opcheck_layer_ops():
    torch.manual_seed(0)
    B, N, P = 2, 3, 300
    preps = torch.randn(B, P, requires_grad=True)
    for shared in (True, False):
        x = torch.randn((N, 2, 6, 6) if shared else (B, N, 2, 6, 6), requires_grad=True)
        for act in (0, 1, 2):
            res = torch.randn(B, N, 4, 3, 3)
            torch.library.opcheck(torch.ops.netspace_fast.batched_conv2d,
                                  (x, preps, 5, 200, 4, 2, 3, 2, 1, act, res))
            torch.library.opcheck(torch.ops.netspace_fast.batched_conv2d, (x, preps, 5, 200, 4, 2, 3, 2, 1, act, None))
            y, z = torch.ops.netspace_fast.batched_conv2d(x, preps, 5, 200, 4, 2, 3, 2, 1, act, None)
            torch.library.opcheck(torch.ops.netspace_fast.batched_conv2d_backward,
                                  (torch.randn_like(y), x.detach(), preps.detach(), y.detach(), z.detach(), 5, 200, 4,
                                   2, 3, 2, 1, act, torch.zeros(B, P), True),
                                  test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
        xl = torch.randn((N, 7) if shared else (B, N, 7), requires_grad=True)
        for act in (0, 1, 2):
            torch.library.opcheck(torch.ops.netspace_fast.batched_linear,
                                  (xl, preps, 10, 100, 5, 7, act, torch.randn(B, N, 5)))
            y, z = torch.ops.netspace_fast.batched_linear(xl, preps, 10, 100, 5, 7, act, None)
            torch.library.opcheck(torch.ops.netspace_fast.batched_linear_backward,
                                  (torch.randn_like(y), xl.detach(), preps.detach(), y.detach(), z.detach(), 10, 100,
                                   5, 7, act, torch.zeros(B, P), False),
                                  test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def assert_within_float32_bounds(kind, geom, act, y, y_ref, preps, x, res) -> None:
    """Ours (``y``) and the float32 reference (``y_ref``), output and the gradients of every input for
    one random output gradient, each within its float32 error bound of the exact (float64) value.
    The PRep gradient is checked everywhere: the layer's weight and bias slices against their
    bounds, every other value exactly 0 (the bound there is 0)."""
    inputs = (preps, x) + ((res,) if res is not None else ())
    g = torch.randn_like(y)
    bounds = layer_bounds(kind, x, preps, geom, act, res, g)
    names = ("grad_preps", "grad_x", "grad_residual")
    for which, out in (("ours", y), ("reference", y_ref)):
        bounds.check("y", out)
        for name, grad in zip(names, torch.autograd.grad(out, inputs, g)):
            try:
                bounds.check(name, grad)
            except AssertionError as e:
                raise AssertionError(f"{which}: {e}") from None


@native
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 3), cin=st.integers(1, 4), cout=st.integers(1, 4),
       k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2), size=st.integers(4, 8),
       shared=st.booleans(), act=st.sampled_from([0, 1, 2]), residual=st.booleans())
def test_property_conv_matches_reference(B, N, cin, cout, k, stride, padding, size, shared, act, residual):
    torch.manual_seed(B * 100 + N * 10 + k)
    w_numel = cout * cin * k * k
    P = w_numel + cout + 5
    preps = torch.randn(B, P, requires_grad=True)
    x = torch.randn((N, cin, size, size) if shared else (B, N, cin, size, size), requires_grad=True)
    ho = (size + 2 * padding - k) // stride + 1
    res = torch.randn(B, N, cout, ho, ho, requires_grad=True) if residual else None
    w_off, b_off = 2, 3 + w_numel  # a gap between weight and bias: offsets are honoured, not assumed
    geom = (w_off, b_off, cout, cin, k, stride, padding)
    y = batched_conv2d(x, preps, *geom, act, res, backend="cpp")
    y_ref = batched_conv2d_ref(x, preps, *geom, act, res)
    assert_within_float32_bounds("conv", geom, act, y, y_ref, preps, x, res)


@native
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 4), N=st.integers(1, 4), fin=st.integers(1, 9), fout=st.integers(1, 9),
       shared=st.booleans(), act=st.sampled_from([0, 1, 2]), residual=st.booleans())
def test_property_linear_matches_reference(B, N, fin, fout, shared, act, residual):
    torch.manual_seed(B + N + fin + fout)
    P = fin * fout + fout + 3
    preps = torch.randn(B, P, requires_grad=True)
    x = torch.randn((N, fin) if shared else (B, N, fin), requires_grad=True)
    res = torch.randn(B, N, fout, requires_grad=True) if residual else None
    geom = (1, 1 + fin * fout, fout, fin)
    y = batched_linear(x, preps, *geom, act, res, backend="cpp")
    y_ref = batched_linear_ref(x, preps, *geom, act, res)
    assert_within_float32_bounds("linear", geom, act, y, y_ref, preps, x, res)


@native
def test_layer_op_bad_arguments_never_touch_memory():
    preps = torch.zeros(2, 50)
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(ValueError, match="w_off"):
        torch.ops.netspace_fast.batched_conv2d(x, preps, 40, 0, 2, 3, 3, 1, 1, 1, None)  # weight past P
    with pytest.raises(ValueError, match="b_off"):
        torch.ops.netspace_fast.batched_conv2d(x, preps, 0, 50, 1, 3, 3, 1, 1, 1, None)  # bias past P
    with pytest.raises(ValueError, match="channels"):
        torch.ops.netspace_fast.batched_conv2d(x, preps, 0, 40, 1, 2, 3, 1, 1, 1, None)
    with pytest.raises(ValueError, match="act"):
        torch.ops.netspace_fast.batched_linear(torch.randn(2, 3), preps, 0, 40, 2, 3, 7, None)
    with pytest.raises(ValueError, match="residual"):
        torch.ops.netspace_fast.batched_linear(torch.randn(2, 3), preps, 0, 40, 2, 3, 1, torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match="leading dim"):
        torch.ops.netspace_fast.batched_linear(torch.randn(3, 2, 3), preps, 0, 40, 2, 3, 1, None)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        torch.ops.netspace_fast.batched_conv2d(torch.randn(2, 1, 2, 2), preps, 0, 40, 1, 1, 5, 1, 0, 1, None)


def _f32_ulp(ref: torch.Tensor) -> torch.Tensor:
    """The float32 spacing at |ref| (float64 ref): one ulp of the float32 result."""
    r = ref.abs().float()
    return (torch.nextafter(r, torch.tensor(float("inf"))).double() - r.double())


@native
@pytest.mark.parametrize("shared", [True, False])
def test_sin_epilogue_float32_accuracy(shared):
    """The float32 sin(30 z) epilogue and 30 cos(30 z) activation gradient (csrc/sincos_f32.h:
    double-precision Cody-Waite reduction + polynomials, libm beyond |30 z| = 1e6) against float64
    torch.sin / torch.cos of the same float32 argument a = fl(30 z).

    Tolerance: <= 1 ulp of float32 for both (the kernel's bound: the double-precision result has
    relative error ~1e-11 and is rounded once, so the error is <= 0.5 ulp + 1e-4 ulp; measured
    0.5001 ulp over 25 M float32 arguments |a| <= 1e6, and for the gradient, where the product
    g * 30 * cos is also formed in double, over 4 M). NaN exactly where float64 gives NaN (+-inf,
    NaN, and fl(30 z) = inf)."""
    g = torch.Generator().manual_seed(0)
    half_pi = torch.pi / 2
    z = torch.cat([
        torch.linspace(-1e4 / 30, 1e4 / 30, 100_003, dtype=torch.float64).float(),  # |30 z| up to 1e4
        (torch.pow(10.0, torch.rand(50_000, generator=g, dtype=torch.float64) * 10 - 7) / 3
         * torch.randint(0, 2, (50_000,), generator=g).mul(2).sub(1)).float(),       # |30 z| 1e-6 .. 1e4, both signs
        (torch.arange(-6400, 6401, dtype=torch.float64) * half_pi / 30).float(),      # 30 z near k pi/2: sin or cos ~ 0
        torch.tensor([0.0, -0.0, 1e-40, -1e-40, 1e-30, float("inf"), float("-inf"), float("nan"), 1e30, -1e30,
                      3.4e38, 4e4, -4e4, 33_333.3, 1e6 / 30, 1e7, 2.0**-149]),      # specials, libm fallback
    ])
    F = 1024  # a full chunk per (network, point) row: the vectorized body runs
    n = z.numel()
    rows = -(-n // F)
    zz = torch.zeros(rows * F)
    zz[:n] = z
    res = zz.view(1, rows, F)
    preps = torch.zeros(1, 2 * F)  # weight 0, bias 0: the pre-activation is the residual exactly
    x = torch.zeros((rows, 1) if shared else (1, rows, 1))
    y, zo = torch.ops.netspace_fast.batched_linear(x, preps, 0, F, F, 1, 2, res)
    torch.testing.assert_close(zo.view(-1)[:n], z, rtol=0, atol=0, equal_nan=True)
    a = (torch.tensor(30.0) * z).double()  # fl(30 z), as the kernel and the reference round it
    ref = torch.sin(a)
    got = y.view(-1)[:n]
    nan = ref.isnan()
    assert torch.equal(got.isnan(), nan)
    err = (got.double() - ref).abs()[~nan] / _f32_ulp(ref)[~nan]
    assert err.max() <= 1.0, (err.max(), a[~nan][err.argmax()])
    gx, gz = torch.ops.netspace_fast.batched_linear_backward(torch.ones(1, rows, F), x, preps, y, zo, 0, F, F, 1, 2,
                                                             torch.zeros(1, 2 * F), False)
    ref = 30 * torch.cos(a)
    got = gz.view(-1)[:n]
    nan = ref.isnan()
    assert torch.equal(got.isnan(), nan)
    err = (got.double() - ref).abs()[~nan] / _f32_ulp(ref)[~nan]
    assert err.max() <= 1.0, (err.max(), a[~nan][err.argmax()])


@native
@pytest.mark.parametrize("shared", [True, False])
def test_linear_gradcheck_float64_fewer_inputs(shared):
    """The weight gradient's other orientation (in_features < out_features: x^T @ grad_z, transposed)."""
    torch.manual_seed(3)
    B, N = 2, 3
    preps = (torch.randn(B, 40, dtype=torch.float64) * 0.3).requires_grad_()
    x = torch.randn((N, 2) if shared else (B, N, 2), dtype=torch.float64, requires_grad=True)
    for act in (0, 2):
        lin = lambda p, xx: batched_linear(xx, p, 3, 30, 7, 2, act, backend="cpp")  # noqa: E731
        assert torch.autograd.gradcheck(lin, (preps, x))


@native
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_bounds_catch_a_wrong_kernel(kind, act):
    """The float32 bounds are tight enough to fail a kernel that is really wrong: the op run on PReps
    whose first weight moved by 1e-3 (a kernel reading one wrong value) fails the bounds of the
    unperturbed call, in its output, in grad_x and (with sin, whose grad_z depends on W) in its PRep
    gradient; the unperturbed call passes them."""
    torch.manual_seed(5)
    B, N = 2, 3
    preps = torch.randn(B, 60) * 0.3
    if kind == "conv":
        geom, x = (4, 40, 3, 2, 2, 1, 1), torch.randn(B, N, 2, 5, 5)
        op = batched_conv2d
    else:
        geom, x = (4, 40, 5, 7), torch.randn(B, N, 7)
        op = batched_linear
    wrong = preps.clone()
    wrong[0, geom[0]] += 1e-3
    g = None
    for p, ok in ((preps, True), (wrong, False)):
        p, xr = p.clone().requires_grad_(), x.clone().requires_grad_()
        y = op(xr, p, *geom, act, None, backend="cpp")
        g = torch.randn_like(y) if g is None else g
        bounds = layer_bounds(kind, x, preps, geom, act, None, g)
        (gp, gx) = torch.autograd.grad(y, (p, xr), g)
        for name, got in (("y", y), ("grad_x", gx), ("grad_preps", gp)):
            if ok:
                bounds.check(name, got)
            elif name != "grad_preps" or act == 2:  # the weight gradient reads W only through sin's z
                with pytest.raises(AssertionError, match="exceeds its float32 error bound"):
                    bounds.check(name, got)
