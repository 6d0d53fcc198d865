"""The conv epilogue ops ``netspace_fast::conv_epilogue`` / ``conv_epilogue_backward``
(netspace_fast/ops/epilogue*.py): pre = z + bias[channel] + residual, y = act(pre) in one pass, and
grad_z = grad_y * act'(.).

Plain tests (the reference, the op on CPU, the wrapper): the float32 reference against the exact
values, gradcheck in float64, opcheck, torch.compile with the fake kernels checked, a hypothesis
property against ``apply_act(z + bias + residual)``, every argument check. Tests marked ``triton``
run the Triton kernels: on CPU tensors under the interpreter (``TRITON_INTERPRET=1 pytest -m triton
tests/ops/test_epilogue.py``) or on CUDA tensors when a GPU is present; skipped otherwise. This
module imports Triton only inside those tests.

Tolerances: a forward error analysis, elementwise, against the exact value of the float32 inputs
(computed in float64: its own error, ~1e-16 relative, is negligible here), u = 2^-24:

* pre = fl(fl(z + bias) + residual): each addition rounds once, so
  |pre - exact| <= gamma_n (|z| + |bias| + |residual|), n the number of additions (0, 1 or 2;
  gamma_n = n u / (1 - n u)); with neither bias nor residual pre is z, exactly;
* none: y = pre, the same bound; LeakyReLU: y = pre or fl(pre * fl(0.01)): 1.01 times pre's bound
  plus 2 u |y| (the product and the float32 slope), and within (1 + 0.01) times pre's bound where
  pre's sign is uncertain (|pre| <= its bound);
* sin: the angle a = fl(30 pre) carries 30 times pre's bound plus its own rounding u |a|; the float32
  Triton kernel then reduces a to [-pi, pi] (Cody-Waite: <= 1.01 u |a| more), so 3 u |a| covers both
  routes; sin is 1-Lipschitz and its own error is <= 2 ulp <= 4 u |y| (measured: numpy's float32 sin
  and cos, which the interpreter uses, reach 1.41 ulp; torch's 0.6 ulp). On CUDA a further 2^-20
  absolute allows for a fast hardware sin / cos, should tl.sin / tl.cos be lowered to one
  (sin.approx.f32 / cos.approx.f32: absolute error about 2^-21 on [-pi, pi]);
* backward, from float32 grad_y, y, pre taken as exact: none copies (exact); LeakyReLU multiplies by
  0.01 (2 u |grad_z|); sin: 30 |grad_y| (3 u |a| + 4 u |cos a| (+ 2^-20 on CUDA)) + 2 u |grad_z|;
* the bias gradient sums m values of grad_z: gamma_m sum |grad_z| plus the sum of their bounds.

float64 runs (Triton against the reference) use the same bounds with u = 2^-53, twice (both sides
err). Under the interpreter none and LeakyReLU are also checked bit for bit against the reference:
the kernel does the same IEEE operations in the same order.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

from netspace_fast.ops import epilogue as ep
from netspace_fast.ops.epilogue import conv_epilogue, conv_epilogue_backward
from netspace_fast.ops.epilogue_ref import (ACT_LEAKY, ACT_NONE, ACT_SIN, LEAKY_SLOPE, SIN_W0, apply_act, bias_grad,
                                           conv_epilogue_backward_ref, conv_epilogue_ref, is_dense)

from conftest import fake_checked_backend  # noqa: E402
from float_bounds import U32, assert_within  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = torch.device("cpu") if INTERPRET else torch.device("cuda")
HAS_TRITON_DEVICE = INTERPRET or torch.cuda.is_available()
U64 = 2.0 ** -53
ACTS = (ACT_NONE, ACT_LEAKY, ACT_SIN)
ACT_IDS = ["none", "leaky", "sin"]


def triton_test(f):
    """Marked ``triton``; skipped without the interpreter or a CUDA device."""
    skip = pytest.mark.skipif(not HAS_TRITON_DEVICE,
                              reason="Triton tests need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device")
    return pytest.mark.triton(skip(f))


def _et():
    from netspace_fast.ops import epilogue_triton  # here, not at import: TRITON_INTERPRET decides how it compiles

    return epilogue_triton


def _sin_abs(device: torch.device) -> float:
    return 2.0 ** -20 if device.type == "cuda" else 0.0


# ------------------------------------------------------------------------------------------------
# cases and bounds


def _layout(t: torch.Tensor, layout: str, perm=None) -> torch.Tensor:
    """The same values in memory format ``layout``: 'contiguous', 'channels_last' (4-d; channels_last_3d
    for 5-d; contiguous otherwise), 'permuted' (dense, dims stored in the order ``perm``) or
    'strided' (not dense: every other element of a larger buffer)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t.contiguous()
    if layout == "permuted":
        perm = list(perm) if perm is not None else list(reversed(range(t.dim())))
        inv = [perm.index(i) for i in range(t.dim())]
        return t.permute(perm).contiguous().permute(inv)
    if layout == "strided":
        buf = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        out = buf[..., ::2]
        out.copy_(t)
        return out
    raise ValueError(layout)


def make_case(shape, layout="contiguous", has_bias=True, res_layout="same", dtype=torch.float32, seed=0,
              scale=1.0, perm=None, device="cpu"):
    """(z, bias, residual): random values; z in ``layout``, residual (None when ``res_layout`` is None)
    in z's layout ('same') or in its own."""
    g = torch.Generator().manual_seed(seed)
    z = _layout(torch.randn(shape, generator=g, dtype=dtype) * scale, layout, perm)
    bias = (torch.randn(shape[1], generator=g, dtype=dtype) * scale) if has_bias else None
    residual = None
    if res_layout is not None:
        r = torch.randn(shape, generator=g, dtype=dtype) * scale
        residual = torch.empty_like(z).copy_(r) if res_layout == "same" else _layout(r, res_layout, perm)
    to = (lambda t: None if t is None else t.to(device))
    return to(z), to(bias), to(residual)


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def _bias_view(bias: torch.Tensor, dim: int) -> torch.Tensor:
    return bias.view((1, -1) + (1,) * (dim - 2))


def forward_bounds(z, bias, residual, act, u=U32, sin_abs=0.0):
    """(pre, y) exact (float64, from the inputs' values) and their bounds (module doc)."""
    pre = z.detach().double().cpu()
    mag = pre.abs()
    n = 0
    for t in (None if bias is None else _bias_view(bias.detach().double().cpu(), z.dim()),
              None if residual is None else residual.detach().double().cpu()):
        if t is not None:
            pre, mag, n = pre + t, mag + t.abs(), n + 1
    dpre = _gamma(n, u) * mag
    y = apply_act(pre, act)
    if act == ACT_NONE:
        dy = dpre
    elif act == ACT_LEAKY:
        dy = (1 + LEAKY_SLOPE) * dpre + 2 * u * y.abs()
    else:
        a = SIN_W0 * pre
        dy = SIN_W0 * dpre + 3 * u * a.abs() + 4 * u * y.abs() + sin_abs
    return pre, y, dpre, dy


def backward_bounds(grad_y, y, pre, act, u=U32, sin_abs=0.0):
    """grad_z exact (float64, from the float32 inputs' values) and its bound (module doc)."""
    g = grad_y.detach().double().cpu()
    if act == ACT_NONE:
        return g, torch.zeros_like(g)
    if act == ACT_LEAKY:
        gz = torch.where(y.detach().double().cpu() > 0, g, LEAKY_SLOPE * g)
        return gz, 2 * u * gz.abs()
    a = SIN_W0 * pre.detach().double().cpu()
    c = torch.cos(a)
    gz = g * SIN_W0 * c
    return gz, SIN_W0 * g.abs() * (3 * u * a.abs() + 4 * u * c.abs() + sin_abs) + 2 * u * gz.abs()


def _within(got, want, bound, name):
    assert tuple(got.shape) == tuple(want.shape), (name, tuple(got.shape), tuple(want.shape))
    if want.numel():
        assert_within(got, want, bound, name)


def check_forward(y, pre, z, bias, residual, act, u=U32, sin_abs=0.0, factor=1.0, against=None):
    """y and pre: shapes, dtype, device, z's memory format, and values within ``factor`` times the
    bounds of the exact values (or of ``against`` = (y, pre), another result)."""
    strides = torch.empty_like(z).stride()
    assert y.dtype == z.dtype and y.device == z.device and y.shape == z.shape
    assert y.stride() == strides, (y.stride(), strides)
    pre_x, y_x, dpre, dy = forward_bounds(z, bias, residual, act, u, sin_abs)
    if against is not None:
        y_x, pre_x = against[0], (against[1] if act == ACT_SIN else pre_x)
    _within(y, y_x, factor * dy, "y")
    if act == ACT_SIN:
        assert pre.dtype == z.dtype and pre.shape == z.shape and pre.stride() == strides
        _within(pre, pre_x, factor * dpre, "pre")
    else:
        assert pre.shape == (0,) and pre.dtype == z.dtype and pre.device == z.device


def check_backward(gz, grad_y, y, pre, act, u=U32, sin_abs=0.0, factor=1.0, against=None, layout=True):
    """grad_z: shape, dtype, device, y's memory format (unless not ``layout``), values within
    ``factor`` times the bounds of the exact values (or of ``against``)."""
    assert gz.dtype == grad_y.dtype and gz.device == grad_y.device and gz.shape == grad_y.shape
    if layout:
        assert gz.stride() == torch.empty_like(y).stride()
    want, bound = backward_bounds(grad_y, y, pre, act, u, sin_abs)
    _within(gz, want if against is None else against, factor * bound, "grad_z")


def _fresh(out, *inputs):
    """``out`` shares no memory with any of ``inputs`` (an op output never aliases an input)."""
    if out.numel() == 0:
        return True
    ptr = out.untyped_storage().data_ptr()
    return all(t is None or t.numel() == 0 or t.untyped_storage().data_ptr() != ptr for t in inputs)


SHAPES = [(2, 3, 5, 7), (1, 1, 1, 1), (2, 3, 17, 19), (3, 4), (2, 5, 9), (0, 3, 4, 4), (2, 0, 3, 3)]
SHAPE_IDS = ["small", "one", "two_blocks", "2d", "3d", "empty_batch", "no_channels"]


# ------------------------------------------------------------------------------------------------
# the reference


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("has_bias,res_layout", [(True, "same"), (True, None), (False, "contiguous"), (False, None)],
                         ids=["bias_res", "bias", "res", "neither"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
def test_reference_within_float32_bounds(act, has_bias, res_layout, layout):
    for shape in SHAPES:
        z, bias, res = make_case(shape, layout, has_bias, res_layout, scale=2.0)
        y, pre = conv_epilogue_ref(z, bias, res, act)
        check_forward(y, pre, z, bias, res, act)
        assert _fresh(y, z, res) and _fresh(pre, z, res)
        g = torch.randn_like(y)
        gz = conv_epilogue_backward_ref(g, y, pre, act)
        check_backward(gz, g, y, pre, act)
        assert _fresh(gz, g, y, pre)


def test_reference_large_sin_arguments():
    """|30 pre| up to ~3e4: the sin bound grows with |a| = |30 pre| (fl(30 pre) itself)."""
    z, bias, res = make_case((2, 3, 8, 8), scale=300.0)
    y, pre = conv_epilogue_ref(z, bias, res, ACT_SIN)
    check_forward(y, pre, z, bias, res, ACT_SIN)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_op_is_the_reference_on_cpu(act):
    """backend=None on CPU tensors: the op, whose CPU kernel is the reference: identical results."""
    z, bias, res = make_case((2, 3, 5, 7), "channels_last")
    y, pre = conv_epilogue(z, bias, res, act)
    y_r, pre_r = conv_epilogue_ref(z, bias, res, act)
    assert torch.equal(y, y_r) and torch.equal(pre, pre_r) and y.stride() == y_r.stride()
    y_t, pre_t = conv_epilogue(z, bias, res, act, backend="torch")
    assert torch.equal(y_t, y_r) and torch.equal(pre_t, pre_r)
    g = torch.randn_like(y)
    assert torch.equal(conv_epilogue_backward(g, y, pre, act), conv_epilogue_backward_ref(g, y, pre, act))


def test_bounds_catch_a_wrong_kernel():
    """The bounds are tight enough to see an error of 1e-4 relative in one value (or a wrong bias
    channel): far below any real bug, far above float32 rounding."""
    z, bias, res = make_case((2, 3, 5, 7))
    for act in ACTS:
        y, pre = conv_epilogue_ref(z, bias, res, act)
        bad = y.clone()
        bad.view(-1)[17] += 1e-4 * (1 + bad.view(-1)[17].abs())
        with pytest.raises(AssertionError, match="exceeds its float32 error bound"):
            check_forward(bad, pre, z, bias, res, act)
        with pytest.raises(AssertionError, match="exceeds its float32 error bound"):  # bias of channel 0 everywhere
            y_wrong, pre_wrong = conv_epilogue_ref(z, bias[0].expand(3).contiguous(), res, act)
            check_forward(y_wrong, pre_wrong, z, bias, res, act)


# ------------------------------------------------------------------------------------------------
# autograd, opcheck, compile


def _away_from_kinks(z, bias, res):
    """z shifted so that |z + bias + residual| >= 0.5 (LeakyReLU is not differentiable at 0)."""
    pre = z + _bias_view(bias, z.dim()) + res
    return (z + 0.5 * torch.where(pre >= 0, 1.0, -1.0).to(z.dtype)).detach()


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(act, layout):
    z, bias, res = make_case((2, 3, 2, 3), layout, dtype=torch.float64, scale=0.5)
    z = _layout(_away_from_kinks(z, bias, res), layout)
    inputs = [t.requires_grad_() for t in (z, bias, res)]
    assert torch.autograd.gradcheck(lambda a, b, c: conv_epilogue(a, b, c, act)[0], inputs)
    if act == ACT_SIN:  # pre is an output too: its gradient adds to z's
        assert torch.autograd.gradcheck(lambda a, b, c: conv_epilogue(a, b, c, act), inputs)
    assert torch.autograd.gradcheck(lambda a: conv_epilogue(a, None, None, act)[0], [z])


def test_autograd_matches_torch_autograd_of_the_reference():
    """The registered formula (bias: grad_z summed over every dim but 1) against torch.autograd
    through the reference's own operations, float64."""
    for act in ACTS:
        z, bias, res = make_case((2, 3, 4, 5), "channels_last", dtype=torch.float64)
        inputs = [t.requires_grad_() for t in (z, bias, res)]
        g = torch.randn(2, 3, 4, 5, dtype=torch.float64)
        got = torch.autograd.grad(conv_epilogue(*inputs, act)[0], inputs, g)
        want = torch.autograd.grad(conv_epilogue_ref(*inputs, act)[0], inputs, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert torch.equal(got[1], bias_grad(got[0]))


def test_autograd_pre_only_and_unused_inputs():
    z, bias, res = make_case((2, 3, 4, 4), dtype=torch.float64)
    z.requires_grad_()
    y, pre = conv_epilogue(z, bias, res, ACT_SIN)  # bias, residual without grad
    (gz,) = torch.autograd.grad(pre.sum(), [z])
    assert torch.equal(gz, torch.ones_like(z))
    y, pre = conv_epilogue(z, None, None, ACT_LEAKY)
    assert pre.numel() == 0
    (gz,) = torch.autograd.grad(y.sum(), [z])
    assert torch.equal(gz, torch.where(z > 0, torch.ones_like(z), torch.full_like(z, LEAKY_SLOPE)))


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_opcheck(act):
    for layout in ("contiguous", "channels_last"):
        z, bias, res = make_case((2, 3, 4, 5), layout)
        z.requires_grad_(), bias.requires_grad_(), res.requires_grad_()
        opcheck(torch.ops.netspace_fast.conv_epilogue, (z, bias, res, act))
        opcheck(torch.ops.netspace_fast.conv_epilogue, (z, None, None, act))
        y, pre = torch.ops.netspace_fast.conv_epilogue(z, bias, res, act)
        opcheck(torch.ops.netspace_fast.conv_epilogue_backward, (torch.randn_like(y), y.detach(), pre.detach(), act))


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_fullgraph():
    """The wrapper under torch.compile(fullgraph=True), forward and backward, with every op call's
    real outputs checked against its fake kernel's (conftest.fake_checked_backend)."""
    def f(z, bias, res):
        y, pre = conv_epilogue(z, bias, res, ACT_SIN)
        return y * 2

    z, bias, res = make_case((2, 3, 4, 5), "channels_last")
    inputs = [t.requires_grad_() for t in (z, bias, res)]
    out = torch.compile(f, backend=fake_checked_backend, fullgraph=True)(*inputs)
    want = f(*inputs)
    assert torch.equal(out, want) and out.stride() == want.stride()
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(want, inputs, g)):
        assert torch.equal(a, b)
    ops = {"netspace_fast::conv_epilogue", "netspace_fast::conv_epilogue_backward"}
    assert ops <= set(fake_checked_backend.checked)


# ------------------------------------------------------------------------------------------------
# hypothesis


@st.composite
def cases(draw, dtypes=(torch.float32,)):
    dim = draw(st.integers(2, 5))
    shape = draw(st.lists(st.integers(1, 6), min_size=dim, max_size=dim))
    if draw(st.sampled_from([False, False, False, True])):
        shape[draw(st.integers(0, dim - 1))] = 0
    perm = draw(st.permutations(range(dim)))
    return dict(shape=tuple(shape), layout=draw(st.sampled_from(["contiguous", "channels_last", "permuted"])),
                perm=perm, has_bias=draw(st.booleans()),
                res_layout=draw(st.sampled_from([None, "same", "contiguous", "permuted", "strided"])),
                act=draw(st.sampled_from(ACTS)), seed=draw(st.integers(0, 2 ** 16)),
                dtype=draw(st.sampled_from(dtypes)))


@given(cases(dtypes=(torch.float32, torch.float64)))
def test_property_reference_is_apply_act_of_the_sum(c):
    """The reference is apply_act(z + bias + residual), value for value, in z's memory format."""
    act = c.pop("act")
    z, bias, res = make_case(**c)
    y, pre = conv_epilogue_ref(z, bias, res, act)
    s = z
    if bias is not None:
        s = s + _bias_view(bias, z.dim())
    if res is not None:
        s = s + res
    assert torch.equal(y, apply_act(s, act)) and y.stride() == torch.empty_like(z).stride()
    assert torch.equal(pre, s) if act == ACT_SIN else pre.shape == (0,)
    g = torch.randn_like(y)
    gz = conv_epilogue_backward_ref(g, y, pre, act)
    want = g if act == ACT_NONE else (torch.where(y > 0, g, g * LEAKY_SLOPE) if act == ACT_LEAKY
                                      else g * (SIN_W0 * torch.cos(SIN_W0 * pre)))
    assert torch.equal(gz, want)


# ------------------------------------------------------------------------------------------------
# argument checks (before any kernel)


def _args(**kw):
    z, bias, res = make_case((2, 3, 4, 5))
    base = dict(z=z, bias=bias, residual=res, act=ACT_LEAKY)
    base.update(kw)
    return base


@pytest.mark.parametrize("kw,err,match", [
    (dict(z=[1.0, 2.0]), TypeError, r"z: expected a Tensor, got list"),
    (dict(z=torch.zeros(2, 3, 4, 5, dtype=torch.float16)), TypeError,
     r"z: expected a float32 or float64 tensor, got torch.float16"),
    (dict(z=torch.zeros(2, 3, 4, 5, dtype=torch.int64)), TypeError,
     r"z: expected a float32 or float64 tensor, got torch.int64"),
    (dict(z=torch.zeros(6), bias=None, residual=None), ValueError,
     r"z: expected a tensor with dim >= 2 \(channels on dim 1\), got shape \(6,\)"),
    (dict(bias=torch.zeros(4)), ValueError, r"bias: expected shape \(3,\), got \(4,\)"),
    (dict(bias=torch.zeros(1, 3)), ValueError, r"bias: expected shape \(3,\), got \(1, 3\)"),
    (dict(bias=torch.zeros(3, dtype=torch.float64)), TypeError,
     r"bias: expected dtype torch.float32 \(that of z\), got torch.float64"),
    (dict(bias=torch.zeros(3, device="meta")), ValueError, r"bias: expected a tensor on cpu \(that of z\), got meta"),
    (dict(bias=3.0), TypeError, r"bias: expected a Tensor, got float"),
    (dict(residual=torch.zeros(2, 3, 5, 4)), ValueError,
     r"residual: expected shape \(2, 3, 4, 5\), got \(2, 3, 5, 4\)"),
    (dict(residual=torch.zeros(3, 4, 5)), ValueError, r"residual: expected shape \(2, 3, 4, 5\), got \(3, 4, 5\)"),
    (dict(residual=torch.zeros(2, 3, 4, 5, dtype=torch.float64)), TypeError, r"residual: expected dtype torch.float32"),
    (dict(residual=torch.zeros(2, 3, 4, 5, device="meta")), ValueError, r"residual: expected a tensor on cpu"),
    (dict(act=3), ValueError, r"act: expected 0 \(none\), 1 \(LeakyReLU\) or 2 \(sin\), got 3"),
    (dict(act=-1), ValueError, r"act: expected 0 \(none\), 1 \(LeakyReLU\) or 2 \(sin\), got -1"),
    (dict(act="sin"), TypeError, r"act: expected an int \(0 none, 1 LeakyReLU, 2 sin\), got str"),
    (dict(act=True), TypeError, r"act: expected an int .*got bool"),
], ids=["z_list", "z_half", "z_int", "z_1d", "bias_len", "bias_2d", "bias_dtype", "bias_device", "bias_float",
        "res_shape", "res_dim", "res_dtype", "res_device", "act_3", "act_neg", "act_str", "act_bool"])
def test_bad_forward_args(kw, err, match):
    a = _args(**kw)
    for call in (lambda: conv_epilogue(**a), lambda: conv_epilogue(**a, backend="torch"),
                 lambda: conv_epilogue_ref(**a)):
        with pytest.raises(err, match=match):
            call()
    schema_ok = (isinstance(a["z"], torch.Tensor) and all(isinstance(a[k], torch.Tensor) or a[k] is None
                                                          for k in ("bias", "residual"))
                 and isinstance(a["act"], int) and not isinstance(a["act"], bool))
    if schema_ok:
        with pytest.raises(err, match=match):  # the op itself checks too (its kernels are reachable directly)
            torch.ops.netspace_fast.conv_epilogue(a["z"], a["bias"], a["residual"], a["act"])


def _bwd_args(forward_act=ACT_SIN, **kw):
    z, bias, res = make_case((2, 3, 4, 5))
    y, pre = conv_epilogue_ref(z, bias, res, forward_act)
    base = dict(grad_y=torch.randn_like(y), y=y, pre=pre, act=forward_act)
    base.update(kw)
    return base


@pytest.mark.parametrize("act,kw,err,match", [
    (ACT_SIN, dict(grad_y=None), TypeError, r"grad_y: expected a Tensor, got NoneType"),
    (ACT_SIN, dict(grad_y=torch.zeros(2, 3, 4, 5, dtype=torch.int32)), TypeError,
     r"grad_y: expected a float32 or float64 tensor, got torch.int32"),
    (ACT_LEAKY, dict(y=torch.zeros(2, 3, 4)), ValueError, r"y: expected shape \(2, 3, 4, 5\), got \(2, 3, 4\)"),
    (ACT_LEAKY, dict(y=torch.zeros(2, 3, 4, 5, dtype=torch.float64)), TypeError,
     r"y: expected dtype torch.float32 \(that of grad_y\), got torch.float64"),
    (ACT_NONE, dict(y=torch.zeros(2, 3, 4, 5, device="meta")), ValueError, r"y: expected a tensor on cpu"),
    (ACT_SIN, dict(pre=torch.zeros(0)), ValueError,
     r"pre: act == 2 \(sin\) needs the pre-activation of the forward, of shape \(2, 3, 4, 5\); got an empty tensor"),
    (ACT_SIN, dict(pre=torch.zeros(2, 3, 5, 4)), ValueError, r"pre: expected shape \(2, 3, 4, 5\), got \(2, 3, 5, 4\)"),
    (ACT_SIN, dict(pre=torch.zeros(2, 3, 4, 5, dtype=torch.float64)), TypeError, r"pre: expected dtype torch.float32"),
    (ACT_SIN, dict(pre=None), TypeError, r"pre: expected a Tensor, got NoneType"),
    (ACT_SIN, dict(act=5), ValueError, r"act: expected 0 \(none\), 1 \(LeakyReLU\) or 2 \(sin\), got 5"),
], ids=["gy_none", "gy_int", "y_shape", "y_dtype", "y_device", "pre_empty", "pre_shape", "pre_dtype", "pre_none",
        "act_5"])
def test_bad_backward_args(act, kw, err, match):
    a = _bwd_args(act, **kw)
    for call in (lambda: conv_epilogue_backward(**a), lambda: conv_epilogue_backward(**a, backend="torch"),
                 lambda: conv_epilogue_backward_ref(**a)):
        with pytest.raises(err, match=match):
            call()


def test_backward_ignores_pre_unless_sin():
    """pre is read (and checked) only for sin: the forward returns it empty otherwise."""
    a = _bwd_args(ACT_LEAKY)
    assert a["pre"].shape == (0,)
    gz = conv_epilogue_backward(**a)
    assert torch.equal(gz, torch.where(a["y"] > 0, a["grad_y"], a["grad_y"] * LEAKY_SLOPE))


def test_bad_backend(monkeypatch):
    z, bias, res = make_case((2, 3, 4, 5))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError,
                       match=r"backend: 'triton' needs CUDA tensors \(or TRITON_INTERPRET=1 on CPU\); got cpu"):
        conv_epilogue(z, bias, res, ACT_SIN, backend="triton")
    with pytest.raises(ValueError, match=r"backend: 'triton' needs CUDA tensors"):
        conv_epilogue_backward(z, z, z, ACT_SIN, backend="triton")
    with pytest.raises(ValueError, match=r"backend: conv_epilogue has no native 'cpp' kernel"):
        conv_epilogue(z, bias, res, ACT_SIN, backend="cpp")
    with pytest.raises(ValueError, match=r"backend: expected one of .* or None, got 'fast'"):
        conv_epilogue(z, bias, res, ACT_SIN, backend="fast")


def test_netspace_backend_preference(monkeypatch):
    """NETSPACE_BACKEND=torch: the reference (the same values as the op on CPU)."""
    z, bias, res = make_case((2, 3, 4, 5))
    monkeypatch.setenv("NETSPACE_BACKEND", "torch")
    y, pre = conv_epilogue(z, bias, res, ACT_SIN)
    y_r, pre_r = conv_epilogue_ref(z, bias, res, ACT_SIN)
    assert torch.equal(y, y_r) and torch.equal(pre, pre_r)


def test_is_dense():
    t = torch.randn(2, 3, 4, 5)
    assert is_dense(t) and is_dense(t.contiguous(memory_format=torch.channels_last))
    assert is_dense(t.permute(2, 0, 3, 1)) and is_dense(t[:1])
    assert is_dense(torch.randn(6).as_strided((2, 1, 3), (3, 999, 1)))  # a size-1 dim's stride is never used
    assert is_dense(torch.randn(3, 1).expand(3, 1)) and is_dense(torch.empty(0, 3))
    assert not is_dense(t[:, :, ::2]) and not is_dense(t[:, 1:]) and not is_dense(t[:, 1:2].transpose(0, 1))
    assert not is_dense(torch.randn(3, 1).expand(3, 4))


# ------------------------------------------------------------------------------------------------
# the Triton kernels (interpreter on CPU tensors, or CUDA)


def _to(dev, *ts):
    return [None if t is None else t.to(dev) for t in ts]


def _triton_forward_checked(z, bias, res, act, dtype=torch.float32, **launch):
    """Triton (the wrapper with backend='triton', or the launcher with ``launch`` options) against the
    bounds of the exact values and against the reference; returns (y, pre) on the CPU."""
    dev = TRITON_DEVICE
    (bd,) = _to(dev, bias)
    zd = torch.empty_like(z, device=dev).copy_(z)  # z's exact strides on the device
    rd = None if res is None else torch.empty_strided(res.shape, res.stride(), dtype=res.dtype,
                                                       device=dev).copy_(res)
    if launch:
        y, pre = _et().epilogue_forward(zd, bd, rd, act, **launch)
    else:
        y, pre = conv_epilogue(zd, bd, rd, act, backend="triton")
    assert y.device.type == dev.type
    y, pre = y.cpu(), pre.cpu()
    assert y.stride() == zd.stride()
    y_r, pre_r = conv_epilogue_ref(z, bias, res, act)
    u = U32 if dtype == torch.float32 else U64
    sin_abs = _sin_abs(dev)
    if dtype == torch.float32:
        check_forward(y, pre, z, bias, res, act, u, sin_abs)
        if INTERPRET and act != ACT_SIN:
            assert torch.equal(y, y_r)
    check_forward(y, pre, z, bias, res, act, u, sin_abs, factor=2.0, against=(y_r, pre_r))
    return y, pre


def _triton_backward_checked(grad_y, y, pre, act, dtype=torch.float32, **launch):
    dev = TRITON_DEVICE
    gd = torch.empty_strided(grad_y.shape, grad_y.stride(), dtype=grad_y.dtype, device=dev).copy_(grad_y)
    yd = torch.empty_like(y, device=dev).copy_(y)
    pd = torch.empty_like(pre, device=dev).copy_(pre)
    gz = (_et().epilogue_backward(gd, yd, pd, act, **launch) if launch
          else conv_epilogue_backward(gd, yd, pd, act, backend="triton"))
    assert gz.device.type == dev.type
    gz = gz.cpu()
    assert _fresh(gz, grad_y, y, pre)
    u = U32 if dtype == torch.float32 else U64
    sin_abs = _sin_abs(dev)
    want = conv_epilogue_backward_ref(grad_y, y, pre, act)
    if dtype == torch.float32:
        check_backward(gz, grad_y, y, pre, act, u, sin_abs)
        if INTERPRET and act != ACT_SIN:
            assert torch.equal(gz, want)
    check_backward(gz, grad_y, y, pre, act, u, sin_abs, factor=2.0, against=want)
    return gz


@triton_test
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("has_bias,res_layout", [(True, "same"), (True, None), (False, "same"), (False, None),
                                                 (True, "contiguous"), (True, "strided")],
                         ids=["bias_res", "bias", "res", "neither", "res_other_layout", "res_not_dense"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_equals_reference(act, has_bias, res_layout, layout):
    for shape in SHAPES:
        z, bias, res = make_case(shape, layout, has_bias, res_layout, scale=2.0)
        y, pre = _triton_forward_checked(z, bias, res, act)
        g = _layout(torch.randn(shape), "contiguous")  # autograd's grad_y need not have y's layout
        _triton_backward_checked(g, y, pre, act)


@triton_test
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_triton_float64(act):
    """float64 computes in float64 (no float32 anywhere): within the float64 bounds of the reference."""
    for layout in ("contiguous", "channels_last"):
        z, bias, res = make_case((2, 3, 17, 19), layout, dtype=torch.float64, scale=2.0)
        y, pre = _triton_forward_checked(z, bias, res, act, dtype=torch.float64)
        _triton_backward_checked(torch.randn_like(y), y, pre, act, dtype=torch.float64)


@triton_test
def test_triton_large_sin_arguments():
    """|30 pre| up to ~3e4 (k up to ~5000 periods in the float32 Cody-Waite reduction)."""
    z, bias, res = make_case((2, 3, 8, 8), scale=300.0)
    y, pre = _triton_forward_checked(z, bias, res, ACT_SIN)
    _triton_backward_checked(torch.randn_like(y), y, pre, ACT_SIN)


@triton_test
@pytest.mark.parametrize("shape,layout,perm", [((2, 5, 3, 7), "permuted", (2, 0, 3, 1)),
                                               ((3, 4, 2, 5, 3), "channels_last", None),
                                               ((3, 1, 4, 5), "channels_last", None),
                                               ((4, 6, 7), "permuted", (1, 2, 0))],
                         ids=["4d_perm", "5d_channels_last", "one_channel", "3d_channels_first_in_memory"])
def test_triton_other_dense_layouts(shape, layout, perm):
    """The channel of memory offset o is (o // z.stride(1)) % C in every dense layout."""
    for act in ACTS:
        z, bias, res = make_case(shape, layout, True, "same", perm=perm)
        assert is_dense(z)
        y, pre = _triton_forward_checked(z, bias, res, act)
        _triton_backward_checked(torch.randn(shape), y, pre, act)


@triton_test
@pytest.mark.parametrize("block", [16, 1024])
@pytest.mark.parametrize("index32", [True, False], ids=["index32", "index64"])
def test_triton_blocks_and_index_width(block, index32):
    """Sizes around multiples of the block (masked tails), int32 and int64 channel arithmetic."""
    for n in (1, block - 1, block, block + 1, 3 * block + 5):
        z, bias, res = make_case((1, 3, n), "contiguous")
        for act in ACTS:
            y, pre = _triton_forward_checked(z, bias, res, act, index32=index32, block=block)
            _triton_backward_checked(torch.randn_like(y), y, pre, act, block=block)


@triton_test
def test_triton_writes_nothing_outside_its_outputs():
    """Outputs placed inside NaN-filled buffers: the masked tail of the last program writes nothing
    before or after them (forward y and pre, backward grad_z)."""
    et = _et()
    dev = TRITON_DEVICE
    shape, B = (2, 3, 250), et.BLOCK  # 1500 elements: one full program and a partial one
    n = math.prod(shape)
    z, bias, res = _to(dev, *make_case(shape))

    def guarded():
        buf = torch.full((n + 2 * B,), float("nan"), device=dev)
        return buf, buf[B:B + n].view(shape)

    ybuf, y = guarded()
    pbuf, pre = guarded()
    et._epilogue_forward_kernel[(math.ceil(n / B),)](z, bias, res, y, pre, n, 3, z.stride(1), ACT=ACT_SIN,
                                                     HAS_BIAS=True, HAS_RES=True, STORE_PRE=True, FP64=False,
                                                     INDEX32=True, BLOCK=B)
    gbuf, gz = guarded()
    g = torch.randn(shape, device=dev)
    et._epilogue_backward_kernel[(math.ceil(n / B),)](g, y, pre, gz, n, ACT=ACT_SIN, FP64=False, BLOCK=B)
    for buf, out in ((ybuf, y), (pbuf, pre), (gbuf, gz)):
        assert torch.isnan(buf[:B]).all() and torch.isnan(buf[B + n:]).all()
        assert not torch.isnan(out).any()
    check_forward(y.cpu(), pre.cpu(), *_to("cpu", z, bias, res), ACT_SIN, sin_abs=_sin_abs(dev))


@triton_test
def test_triton_zero_elements_launch_nothing(monkeypatch):
    et = _et()

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError(f"launched with grid {grid}")

    monkeypatch.setattr(et, "_epilogue_forward_kernel", NoLaunch())
    monkeypatch.setattr(et, "_epilogue_backward_kernel", NoLaunch())
    for shape in ((0, 3, 4, 4), (2, 0, 3), (2, 3, 0)):
        for act in ACTS:
            z, bias, res = _to(TRITON_DEVICE, *make_case(shape))
            y, pre = conv_epilogue(z, bias, res, act, backend="triton")
            assert y.shape == shape and pre.shape == (shape if act == ACT_SIN else (0,))
            assert conv_epilogue_backward(y, y, pre, act, backend="triton").shape == shape


@triton_test
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_triton_gradcheck_float64(act):
    """backend='triton': differentiable, with the op's formula, through the Triton backward kernel."""
    z, bias, res = make_case((1, 2, 2, 3), "channels_last", dtype=torch.float64, scale=0.5)
    z = _layout(_away_from_kinks(z, bias, res), "channels_last")
    inputs = [t.to(TRITON_DEVICE).requires_grad_() for t in (z, bias, res)]
    assert torch.autograd.gradcheck(lambda a, b, c: conv_epilogue(a, b, c, act, backend="triton"), inputs)


@triton_test
def test_triton_autograd_within_bounds():
    """Gradients of z, bias, residual through backend='triton' (float32) within their bounds."""
    for act in ACTS:
        z, bias, res = make_case((2, 3, 5, 7), "channels_last", scale=2.0)
        inputs = [t.to(TRITON_DEVICE).requires_grad_() for t in (z, bias, res)]
        y, pre = conv_epilogue(*inputs, act, backend="triton")
        g = torch.randn(2, 3, 5, 7)
        gz, gb, gr = [t.cpu() for t in torch.autograd.grad(y, inputs, g.to(TRITON_DEVICE))]
        y_c, pre_c = y.detach().cpu(), pre.detach().cpu()
        check_backward(gz, g, y_c, pre_c, act, sin_abs=_sin_abs(TRITON_DEVICE), layout=False)
        assert torch.equal(gr, gz)
        want, bound = backward_bounds(g, y_c, pre_c, act, sin_abs=_sin_abs(TRITON_DEVICE))
        m = want.numel() // 3
        gb_want = bias_grad(want)
        gb_bound = _gamma(m, U32) * bias_grad(want.abs()) + bias_grad(bound)
        assert_within(gb, gb_want, gb_bound, "grad_bias")


@triton_test
def test_triton_refuses_non_dense_z():
    z = torch.randn(2, 3, 4, 10, device=TRITON_DEVICE)[..., ::2]
    with pytest.raises(ValueError, match=r"z: backend='triton' needs a dense tensor .*got shape \(2, 3, 4, 5\) "
                                         r"with strides \(120, 40, 10, 2\)"):
        conv_epilogue(z, None, None, ACT_NONE, backend="triton")
    with pytest.raises(ValueError, match=r"z: the Triton kernel needs a dense tensor"):
        _et().epilogue_forward(z, None, None, ACT_NONE)
    with pytest.raises(ValueError, match=r"index32: .* do not fit int32 offsets"):
        _et().epilogue_forward(torch.randn(2, 3, device=TRITON_DEVICE), None, None, ACT_NONE, index32=True,
                               block=2 ** 31)


@triton_test
def test_triton_op_kernel_densifies_z():
    """The op's CUDA kernel (called here directly) copies a non-dense z into ``empty_like(z)`` first:
    the op accepts every z, as on the CPU."""
    z = torch.randn(2, 3, 4, 10)[..., ::2]
    bias = torch.randn(3)
    y, pre = ep._forward_cuda(z.to(TRITON_DEVICE), bias.to(TRITON_DEVICE), None, ACT_SIN)
    check_forward(y.cpu(), pre.cpu(), z, bias, None, ACT_SIN, sin_abs=_sin_abs(TRITON_DEVICE))


@triton_test
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_triton_opcheck(act):
    """opcheck with the Triton kernels as the op's kernels for the tensors' device (on CPU tensors
    they are registered as the CPU kernels for the duration of the test): the fake kernels promise
    the Triton outputs' shapes and strides, the autograd formula runs through the Triton backward."""
    z, bias, res = _to(TRITON_DEVICE, *make_case((2, 3, 4, 5), "channels_last"))

    def run():
        for t in (z, bias, res):
            t.requires_grad_()
        opcheck(torch.ops.netspace_fast.conv_epilogue, (z, bias, res, act))
        y, pre = torch.ops.netspace_fast.conv_epilogue(z, None, res, act)
        opcheck(torch.ops.netspace_fast.conv_epilogue_backward, (torch.randn_like(y), y.detach(), pre.detach(), act))

    if TRITON_DEVICE.type == "cuda":
        run()
        return
    with torch.library._scoped_library("netspace_fast", "IMPL") as lib:
        lib.impl("conv_epilogue", ep._forward_cuda, "CPU")
        lib.impl("conv_epilogue_backward", ep._backward_cuda, "CPU")
        run()


@triton_test
@settings(max_examples=30)
@given(cases(dtypes=(torch.float32, torch.float64)), st.sampled_from([16, 64, 1024]), st.booleans())
def test_property_triton_equals_reference(c, block, index32):
    """Random shapes (0 to 6 per dim, 2 to 5 dims), dense layouts, residual layouts, acts, dtypes and
    block sizes: the launchers within the bounds of the exact values and of the reference."""
    act, dtype = c.pop("act"), c["dtype"]
    z, bias, res = make_case(**c)
    y, pre = _triton_forward_checked(z, bias, res, act, dtype=dtype, index32=index32, block=block)
    g = torch.randn(z.shape, dtype=dtype)
    _triton_backward_checked(g, y, pre, act, dtype=dtype, block=block)
