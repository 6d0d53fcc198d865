"""``torch.compile`` of every public op (README "Backends and settings": the ops are registered with
``torch.library``, fake kernels and autograd, so they work under ``torch.compile``; METHOD.md section
8: ``pack_preps`` under ``fullgraph=True``).

Each op runs under ``torch.compile(fullgraph=True)`` (no graph break allowed) and must give the eager
results: outputs and, for the differentiable ops, the gradients of every input through the
compiled backward graph. Backend ``fake_checked_backend`` (conftest.py): ``aot_eager``, which traces
forward and backward with FakeTensors (the ops' fake kernels, the registered autograd, the
functionalized in-place ``grad_preps`` of the backward ops) and then runs the same kernels as eager
(so results are bit-identical), plus a check that every native op call in both graphs returned
the shapes, dtypes and strides its fake kernel promised. One test (``test_inductor_batched_linear``)
uses the default Inductor backend, which generates and compiles C++ (about 10 s on a cold cache
on 2 cores, under 1 s warm). The public ``gather_grouped`` wrapper compiles with
``fullgraph=True`` too (its checks read no tensor value under compile). ``batched_forward``:
tests/engine/test_batched_forward_compile.py.
"""

from __future__ import annotations

import pytest
import torch

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.ops import COPY, FOLD_B, FOLD_W
from netspace_fast.ops.batched_layers import batched_conv2d, batched_linear
from netspace_fast.ops.gather_grouped import gather_grouped
from netspace_fast.ops.pack_preps import pack_preps as pack_preps_op
from conftest import fake_checked_backend, rel_err
from float_bounds import U32, assert_within, layer_bounds

pytestmark = [pytest.mark.skipif(not nf.backends()["cpu"]["compiled"], reason="native CPU kernels not built"),
              pytest.mark.usefixtures("fresh_dynamo")]


def compiled(f, backend=fake_checked_backend, fullgraph: bool = True):
    return torch.compile(f, backend=backend, fullgraph=fullgraph)


def assert_fake_checked(op: str) -> None:
    """The op ran in the compiled graph and its real outputs matched its fake kernel's."""
    assert f"netspace_fast::{op}" in fake_checked_backend.checked, fake_checked_backend.checked


def assert_same_grads(out_c, out_e, inputs) -> None:
    """Gradients of every input through the compiled and the eager graph, for one random output
    gradient: identical (the same kernels run)."""
    g = torch.randn_like(out_e)
    got = torch.autograd.grad(out_c, inputs, g)
    want = torch.autograd.grad(out_e, inputs, g)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"gradient of input {i}: {m}")


# ---------------------------------------------------------------------------------------------
# pack_preps


def _pack_case():
    """Two networks, every segment kind: a copy, a folded conv weight, a folded bias with and without
    a conv bias; parameters require grad (BN statistics too)."""
    def net():
        w = torch.randn(3, 2, 2, 2)
        gamma, beta, mean = torch.randn(3), torch.randn(3), torch.randn(3)
        var = torch.rand(3) + 0.5
        bias, lin = torch.randn(3), torch.randn(5)
        return [t.requires_grad_() for t in (lin, w, gamma, beta, mean, var, bias)]

    tensors = net() + net()
    # per network: lin 0, w 1, gamma 2, beta 3, mean 4, var 5, bias 6
    plan = [COPY, 5, 0, 0, 0, 0, 0,
            FOLD_W, 24, 1, 2, 5, 3, 0,
            FOLD_B, 3, 6, 2, 3, 4, 5,
            FOLD_B, 3, -1, 2, 3, 4, 5]
    return tensors, plan, [0.0, 1e-5, 1e-5, 1e-3], 2, 5, 8


@pytest.mark.parametrize("backend", [None, "cpp"], ids=["auto", "cpp"])
def test_pack_preps_op_wrapper_fullgraph(backend):
    """The op's public wrapper (backend choice included) in one graph, forward and backward."""
    tensors, plan, eps, B, rows, width = _pack_case()

    def f(ts):
        return pack_preps_op(ts, plan, eps, B, rows, width, backend=backend) * 3.0

    got, want = compiled(f)(tensors), f(tensors)
    assert_fake_checked("pack_preps")
    assert got.shape == (B, rows, width)
    assert torch.equal(got, want)
    assert_same_grads(got, want, tensors)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")  # the pack plan cache
def test_pack_preps_of_models_fullgraph():
    """``nf.pack_preps`` on BN networks (gathering the models' tensors, folding) in one graph; the
    gradient reaches the models' parameters."""
    models = [archs.build("resnet8") for _ in range(2)]
    for m in models:
        m.eval()
    got = compiled(lambda: nf.pack_preps(models, 1024))()
    assert_fake_checked("pack_preps")
    want = nf.pack_preps(models, 1024)
    assert torch.equal(got, want)
    params = [p for m in models for p in m.parameters()]
    assert_same_grads(got, want, params)


# ---------------------------------------------------------------------------------------------
# batched_conv2d / batched_linear and their backward ops

CONV = (5, 200, 4, 2, 3, 2, 1)  # w_off, b_off, cout, cin, k, stride, padding (P = 300)
LIN = (10, 100, 5, 7)  # w_off, b_off, out_features, in_features


def _layer_inputs(kind: str, shared: bool, residual: bool, B: int = 2, N: int = 3):
    preps = (torch.randn(B, 300) * 0.3).requires_grad_()
    if kind == "conv":
        x = torch.randn((N, 2, 7, 7) if shared else (B, N, 2, 7, 7), requires_grad=True)
        res = torch.randn(B, N, 4, 4, 4, requires_grad=True) if residual else None
    else:
        x = torch.randn((N, 7) if shared else (B, N, 7), requires_grad=True)
        res = torch.randn(B, N, 5, requires_grad=True) if residual else None
    return preps, x, res


@pytest.mark.parametrize("backend", [None, "cpp"], ids=["auto", "cpp"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_layer_op_wrappers_fullgraph(kind, act, shared, residual, backend):
    """batched_conv2d / batched_linear (the public wrappers) in one graph with surrounding ops;
    outputs and the gradients of x, the PReps and the residual (the backward ops, through the
    registered autograd) equal eager's."""
    preps, x, res = _layer_inputs(kind, shared, residual)

    def f(p, xx, r):
        if kind == "conv":
            y = batched_conv2d(xx * 1.0, p, *CONV, act=act, residual=r, backend=backend)
        else:
            y = batched_linear(xx * 1.0, p, *LIN, act=act, residual=r, backend=backend)
        return y * 2.0

    got, want = compiled(f)(preps, x, res), f(preps, x, res)
    op = "batched_conv2d" if kind == "conv" else "batched_linear"
    assert_fake_checked(op)
    assert_layer_graphs_agree(kind, act, got, want, preps, x, res)
    assert_fake_checked(f"{op}_backward")  # in the compiled backward graph


def assert_layer_graphs_agree(kind, act, got, want, preps, x, res) -> None:
    """The compiled and the eager graph of ``f`` (``2 * layer(x)``) agree to within twice the layer's
    float32 error bound (tests/float_bounds.py), output and gradients of every input. Not bitwise:
    the same kernels run, but on buffers that the compiled graph allocates itself, and MKL's sgemm
    may round differently by the data's alignment (and does by CPU: ``MKL_CBWR``), so each graph's
    result is only known to lie within the bound of the exact value; both do, so they are within
    twice of each other. ``* 2.0`` is exact: it doubles the output's bound and the output gradient."""
    inputs = (preps, x) + ((res,) if res is not None else ())
    g = torch.randn_like(want)
    bounds = layer_bounds(kind, x, preps, CONV if kind == "conv" else LIN, act, res, 2 * g)
    assert_within(got, want, 2 * 2 * bounds.y_bound, "y")
    got_g = torch.autograd.grad(got, inputs, g)
    want_g = torch.autograd.grad(want, inputs, g)
    for name, a, b in zip(("grad_preps", "grad_x", "grad_residual"), got_g, want_g):
        bounds.check(name, a, factor=2, against=b)


@pytest.mark.parametrize("need_x", [True, False])
@pytest.mark.parametrize("act", [1, 2])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_backward_ops_fullgraph(kind, act, need_x):
    """The backward ops called directly (they write grad_preps in place: ``Tensor(a!)``): under
    compile the mutation is functionalized and written back; grad_x, grad_z and grad_preps equal
    eager's, and only the layer's slices of grad_preps change."""
    preps, x, _ = _layer_inputs(kind, shared=False, residual=False)
    preps, x = preps.detach(), x.detach()
    fwd = torch.ops.netspace_fast.batched_conv2d if kind == "conv" else torch.ops.netspace_fast.batched_linear
    bwd = (torch.ops.netspace_fast.batched_conv2d_backward if kind == "conv"
           else torch.ops.netspace_fast.batched_linear_backward)
    geom = CONV if kind == "conv" else LIN
    y, z = fwd(x, preps, *geom, act, None)
    gy = torch.randn_like(y)
    start = torch.randn(preps.shape)

    def f(grad_y, xx, p, yy, zz, gp0):
        gp = gp0.clone()
        gx, gz = bwd(grad_y, xx, p, yy, zz, *geom, act, gp, need_x)
        return gx, gz, gp

    got, want = compiled(f)(gy, x, preps, y, z, start), f(gy, x, preps, y, z, start)
    assert_fake_checked(f"batched_{'conv2d' if kind == 'conv' else 'linear'}_backward")
    for a, b, name in zip(got, want, ("grad_x", "grad_z", "grad_preps")):
        assert a.shape == b.shape, name
    # grad_z is elementwise (grad_y * act'(z), no sum): the same kernel on the same values, bitwise;
    # grad_x and the weight and bias gradients are sums (sgemm / oneDNN): within twice their float32
    # error bound (see assert_layer_graphs_agree); every other value of grad_preps untouched, bitwise
    assert torch.equal(got[1], want[1]), "grad_z"
    bounds = layer_bounds(kind, x, preps, geom, act, None, gy)
    if need_x:
        bounds.check("grad_x", got[0], factor=2, against=want[0])
    bounds.check("grad_preps", got[2] - start, factor=2, against=want[2] - start)
    if need_x:
        assert got[0].shape == x.shape
    w_off, b_off, cout = geom[0], geom[1], geom[2]
    w_numel = cout * (geom[3] * geom[4] * geom[4] if kind == "conv" else geom[3])
    outside = torch.ones(300, dtype=torch.bool)
    outside[w_off:w_off + w_numel] = False
    outside[b_off:b_off + cout] = False
    assert torch.equal(got[2][:, outside], start[:, outside])
    assert not torch.equal(got[2][:, ~outside], start[:, ~outside])  # the layer's slices were written


def test_inductor_batched_linear():
    """The one Inductor test (it compiles C++): batched_linear with a sin epilogue and a residual,
    surrounded by ops Inductor generates code for, forward and backward (compiled at the first
    backward call, so both run with one compile thread: no pool of compile workers left behind)."""
    preps, x, res = _layer_inputs("linear", shared=True, residual=True)

    def f(p, xx, r):
        return batched_linear(xx, p, *LIN, act=2, residual=r).tanh() * 2.0 + 1.0

    g = torch.randn(2, 3, 5)
    with torch._inductor.config.patch(compile_threads=1):
        got, want = torch.compile(f, fullgraph=True)(preps, x, res), f(preps, x, res)
        grads = torch.autograd.grad(got, (preps, x, res), g)
    # Inductor's generated tanh and fused backward round differently from ATen's, and the layer's
    # sums may too (see assert_layer_graphs_agree). Bounds (first order, tests/float_bounds.py):
    # the layer's output y within 2 dy of each other; t = tanh(y) is 1-Lipschitz and within a few
    # ulp (<= 4 u) of the exact tanh of its argument: dt = 2 dy + 4 u; out = 2 t + 1: 2 dt + 2 u |out|.
    # The layer's output gradient 2 g (1 - t^2) moves by 2 |g| 2 |t| dt + 4 u |2 g (1 - t^2)| in
    # each graph; it enters the layer's backward bounds as grad_y_bound.
    want_grads = torch.autograd.grad(want, (preps, x, res), g)
    b0 = layer_bounds("linear", x, preps, LIN, 2, res, torch.zeros_like(g))
    t = torch.tanh(b0.y)
    dt = 2 * b0.y_bound + 4 * U32
    assert_within(got, want, 2 * (2 * dt + 2 * U32 * want.detach().double().abs()), "out")
    gy = 2 * g.double() * (1 - t * t)
    bounds = layer_bounds("linear", x, preps, LIN, 2, res, gy,
                          grad_y_bound=2 * g.double().abs() * 2 * t.abs() * dt + 4 * U32 * gy.abs())
    for name, a, b in zip(("grad_preps", "grad_x", "grad_residual"), grads, want_grads):
        bounds.check(name, a, factor=2, against=b)


# ---------------------------------------------------------------------------------------------
# gather_grouped


def _gather_case(aug: bool):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(7, 3, 5, 6, generator=g)
    index = torch.randint(0, 7, (3, 4), generator=g)
    offsets = torch.randint(0, 5, (3, 4, 2), generator=g) if aug else None
    flips = (torch.rand(3, 4, generator=g) < 0.5) if aug else None
    return images, index, offsets, flips


@pytest.mark.parametrize("fill", [None, [0.5, -1.0, 2.0]], ids=["zero", "fill"])
@pytest.mark.parametrize("aug", [False, True], ids=["plain", "crop_flip"])
def test_gather_grouped_op_fullgraph(aug, fill):
    """The op in one graph: the same values, shape and channels-last layout as eager."""
    images, index, offsets, flips = _gather_case(aug)

    def f(im, ix, off, fl):
        return torch.ops.netspace_fast.gather_grouped(im, ix, off, fl, 2, fill) + 0.0

    got, want = compiled(f)(images, index, offsets, flips), f(images, index, offsets, flips)
    assert_fake_checked("gather_grouped")  # shape and channels-last strides as the fake kernel's
    assert torch.equal(got, want) and got.shape == (4, 9, 5, 6)
    plain = compiled(lambda im, ix, off, fl: torch.ops.netspace_fast.gather_grouped(im, ix, off, fl, 2, fill))
    out = plain(images, index, offsets, flips)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the fake kernel's layout, as the kernel's
    assert torch.equal(out, want)


@pytest.mark.parametrize("backend", [None, "torch"], ids=["auto", "torch"])  # auto: the C++ kernel here
@pytest.mark.parametrize("fill", [None, [0.5, -1.0, 2.0]], ids=["zero", "fill"])
def test_gather_grouped_wrapper_fullgraph(backend, fill):
    """The public wrapper in one graph (no graph break: its checks read no tensor value under
    compile; the index values are the kernel's to check) and the eager result."""
    images, index, offsets, flips = _gather_case(True)

    def f(im, ix, off, fl):
        return gather_grouped(im, ix, off, fl, 2, fill, backend=backend) * 1.0

    got, want = compiled(f)(images, index, offsets, flips), f(images, index, offsets, flips)
    if backend != "torch":
        assert_fake_checked("gather_grouped")
    assert torch.equal(got, want) and got.shape == (4, 9, 5, 6)


def test_gather_grouped_wrapper_fullgraph_refuses_bad_index():
    """Under compile the C++ kernel still refuses an index outside the images (nothing read out of bounds)."""
    images, index, offsets, flips = _gather_case(True)
    f = compiled(lambda im, ix, off, fl: gather_grouped(im, ix, off, fl, 2))
    f(images, index, offsets, flips)
    with pytest.raises(ValueError, match="index: values must lie in"):
        f(images, index.clone().fill_(7), offsets, flips)
