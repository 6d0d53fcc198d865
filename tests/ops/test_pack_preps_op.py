"""The registered op `torch.ops.netspace_fast.pack_preps` itself: opcheck (schema, fake kernel,
autograd registration, AOT dispatch), gradients (native vs autograd through the reference, and
the autograd formula `_backward` checked in float64 with gradcheck/gradgradcheck), torch.compile,
and bad plans (ValueError/TypeError, never a crash)."""

from __future__ import annotations

import types

import pytest
import torch
from torch.library import opcheck

from netspace_fast import pack_preps
from netspace_fast.ops.pack_preps import _backward
from netspace_fast.ops.pack_preps import pack_preps as pack_op
from netspace_fast.ops.pack_preps_ref import COPY, FOLD_B, FOLD_W, check_pack_args, pack_preps_reference
from conftest import assert_fold_close, make_model, pack_float64

op = torch.ops.netspace_fast.pack_preps


def _fold_inputs(C=6, K=5, requires_grad=True, dtype=torch.float32, bias=False):
    """tensors of one network: conv weight (C, K), gamma, beta, running_mean, running_var [, bias]."""
    w = torch.randn(C, K, dtype=dtype)
    gamma = torch.randn(C, dtype=dtype)
    beta = torch.randn(C, dtype=dtype)
    mean = torch.randn(C, dtype=dtype)
    var = torch.rand(C, dtype=dtype) * 1.5 + 0.5
    ts = [w, gamma, beta, mean, var] + ([torch.randn(C, dtype=dtype)] if bias else [])
    return [t.requires_grad_(requires_grad) for t in ts]


def _fold_plan(C=6, K=5, bias=False):
    return [FOLD_W, C * K, 0, 1, 4, C, 0, FOLD_B, C, 5 if bias else -1, 1, 2, 3, 4]


def _mixed_case(B=2, requires_grad=True):
    """B networks, each: a fold with conv bias, a copy, a fold without bias sharing nothing, a
    zero-length copy, and a copy reading the same tensor twice (gradients accumulate)."""
    tensors, T = [], None
    for _ in range(B):
        net = _fold_inputs(4, 9, requires_grad, bias=True)          # 0..5
        net.append(torch.randn(3, 7).requires_grad_(requires_grad))  # 6
        net += _fold_inputs(2, 3, requires_grad)                     # 7..11
        net.append(torch.randn(0).requires_grad_(requires_grad))     # 12
        T = len(net)
        tensors += net
    plan = ([FOLD_W, 36, 0, 1, 4, 4, 0, FOLD_B, 4, 5, 1, 2, 3, 4, COPY, 21, 6, 0, 0, 0, 0]
            + [FOLD_W, 6, 7, 8, 11, 2, 0, FOLD_B, 2, -1, 8, 9, 10, 11, COPY, 0, 12, 0, 0, 0, 0]
            + [COPY, 21, 6, 0, 0, 0, 0])
    eps = [1e-5, 1e-5, 0.0, 1e-3, 1e-3, 0.0, 0.0]
    total = 36 + 4 + 21 + 6 + 2 + 0 + 21
    width = 8
    rows = -(-total // width) + 1
    return tensors, plan, eps, B, rows, width, T


# ---------------------------------------------------------------------------------------------
# opcheck


def test_opcheck_copy():
    ts = [torch.randn(5, requires_grad=True), torch.randn(3, 4, requires_grad=True)] * 1
    ts += [torch.randn(5, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    opcheck(op, (ts, [COPY, 5, 0, 0, 0, 0, 0, COPY, 12, 1, 0, 0, 0, 0], [0.0, 0.0], 2, 4, 8, False))


def test_opcheck_fold():
    ts = _fold_inputs(bias=True) + _fold_inputs(bias=True)
    opcheck(op, (ts, _fold_plan(bias=True), [1e-5, 1e-5], 2, 8, 8, False))
    ts = _fold_inputs()
    opcheck(op, (ts, _fold_plan(), [1e-5, 1e-5], 1, 5, 8, True))


def test_opcheck_mixed():
    tensors, plan, eps, B, rows, width, _ = _mixed_case()
    opcheck(op, (tensors, plan, eps, B, rows, width, True))


def test_opcheck_no_grad_inputs():
    tensors, plan, eps, B, rows, width, _ = _mixed_case(requires_grad=False)
    opcheck(op, (tensors, plan, eps, B, rows, width, False))


# ---------------------------------------------------------------------------------------------
# forward: op vs reference on hand-made plans


def test_op_mixed_vs_reference():
    tensors, plan, eps, B, rows, width, T = _mixed_case()
    with torch.no_grad():
        a = op(tensors, plan, eps, B, rows, width, True)
        r = pack_preps_reference(tensors, plan, eps, B, rows, width, True)
    assert_fold_close(a, r)
    # the copies are exact: segment 2 (offset 40) and the last one (offset 69)
    for b in range(B):
        flat = a[b].reshape(-1)
        assert torch.equal(flat[40:61], tensors[b * T + 6].detach().reshape(-1))
        assert torch.equal(flat[69:90], tensors[b * T + 6].detach().reshape(-1))
        assert not flat[90:].any()


def test_op_fold_formula():
    """Seed Eq. 2/3 written out by hand, in float64."""
    w, gamma, beta, mean, var, bias = [t.detach() for t in _fold_inputs(bias=True)]
    eps = 1e-3
    out = op([w, gamma, beta, mean, var, bias], _fold_plan(bias=True), [eps, eps], 1, 5, 8, False)
    scale = gamma.double() / torch.sqrt(var.double() + eps)
    w_exp = w.double() * scale[:, None]
    b_exp = (bias.double() - mean.double()) * scale + beta.double()
    flat = out.reshape(-1)
    assert_fold_close(flat[:30], w_exp.reshape(-1))
    assert_fold_close(flat[30:36], b_exp)
    assert not flat[36:].any()


def test_op_output_is_fresh_and_contiguous():
    ts = [torch.randn(8)]
    out = op(ts, [COPY, 8, 0, 0, 0, 0, 0], [0.0], 1, 4, 8, False)
    assert out.is_contiguous() and out.shape == (1, 4, 8) and out.dtype == torch.float32
    out.zero_()
    assert ts[0].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# gradients


def _grads(fn, tensors, plan, eps, B, rows, width, weights, create_graph=False):
    out = fn(tensors, plan, eps, B, rows, width, False)
    need = [t for t in tensors if t.requires_grad]
    return torch.autograd.grad((out * weights).sum(), need, allow_unused=True, materialize_grads=True,
                               create_graph=create_graph)


def test_op_gradients_vs_reference():
    tensors, plan, eps, B, rows, width, _ = _mixed_case()
    weights = torch.randn(B, rows, width)
    a = _grads(op, tensors, plan, eps, B, rows, width, weights)
    r = _grads(pack_preps_reference, tensors, plan, eps, B, rows, width, weights)
    for i, (x, y) in enumerate(zip(a, r)):
        assert x.shape == y.shape
        assert_fold_close(x, y, rtol=1e-5), i


def test_op_second_order_vs_reference():
    """The registered backward is written with torch ops: double backward works and matches."""
    tensors, plan, eps, B, rows, width, _ = _mixed_case()
    weights = torch.randn(B, rows, width)

    def hvp(fn):
        g = _grads(fn, tensors, plan, eps, B, rows, width, weights, create_graph=True)
        s = sum((x ** 2).sum() for x in g)
        return torch.autograd.grad(s, tensors, allow_unused=True, materialize_grads=True)

    for x, y in zip(hvp(op), hvp(pack_preps_reference)):
        assert_fold_close(x, y, rtol=1e-5)


def test_op_partial_requires_grad():
    """Only the tensors that require grad get gradients (BN buffers normally do not)."""
    w, gamma, beta, mean, var = _fold_inputs(requires_grad=False)
    w.requires_grad_()
    beta.requires_grad_()
    out = op([w, gamma, beta, mean, var], _fold_plan(), [1e-5, 1e-5], 1, 5, 8, False)
    out.sum().backward()
    assert gamma.grad is None and mean.grad is None and var.grad is None
    scale = gamma / torch.sqrt(var + 1e-5)
    assert torch.allclose(w.grad, scale[:, None].expand_as(w), rtol=1e-6)
    assert torch.equal(beta.grad, torch.ones_like(beta))


@pytest.mark.parametrize("name", ["resnet8", "lenetlike"])
def test_pack_preps_gradients_vs_reference(name):
    """Gradients of the native pack w.r.t. conv weight, gamma, beta, running_mean and running_var
    equal autograd through the reference (relative 1e-5)."""
    models = [make_model(name) for _ in range(2)]
    for m in models:
        for buf in m.buffers():
            if buf.is_floating_point():
                buf.requires_grad_(True)
    native = pack_preps(models, width=64, backend="cpp")
    ref = pack_preps(models, width=64, backend="torch")
    weights = torch.randn_like(native)
    leaves = [t for m in models for t in list(m.parameters()) + [b for b in m.buffers() if b.requires_grad]]
    ga = torch.autograd.grad((native * weights).sum(), leaves, allow_unused=True, materialize_grads=True)
    gr = torch.autograd.grad((ref * weights).sum(), leaves, allow_unused=True, materialize_grads=True)
    checked = set()
    for t, x, y in zip(leaves, ga, gr):
        assert_fold_close(x, y, rtol=1e-5)
        checked.add(tuple(t.shape))
    if name == "resnet8":
        m = models[0]
        bn = m.get_submodule("layer2.0.bn1")
        names = {"conv weight": m.get_submodule("layer2.0.conv1").weight, "gamma": bn.weight, "beta": bn.bias,
                 "running_mean": bn.running_mean, "running_var": bn.running_var}
        for label, t in names.items():
            i = next(i for i, x in enumerate(leaves) if x is t)
            assert ga[i].abs().sum() > 0, label


class _PackFn(torch.autograd.Function):
    """float64 forward of the op's math (the reference's per-segment values) with the registered
    backward `_backward`: gradcheck then checks `_backward` against finite differences."""

    @staticmethod
    def forward(ctx, plan, eps, num_nets, rows, width, *tensors):
        out = pack_float64(list(tensors), plan, eps, num_nets, rows, width)
        ctx.plan, ctx.eps, ctx.num_nets = list(plan), list(eps), num_nets
        ctx.needs = [t.requires_grad for t in tensors]
        ctx.save_for_backward(*tensors)
        return out

    @staticmethod
    def backward(ctx, grad):
        shim = types.SimpleNamespace(saved_tensors=ctx.saved_tensors, plan=ctx.plan, eps=ctx.eps,
                                     num_nets=ctx.num_nets, needs=ctx.needs)
        grads = _backward(shim, grad)[0]
        return (None, None, None, None, None, *grads)


def _double_case():
    tensors, plan, eps, B, rows, width, _ = _mixed_case(requires_grad=False)
    return [t.detach().double().requires_grad_() for t in tensors], plan, eps, B, rows, width


def test_backward_formula_gradcheck_float64():
    tensors, plan, eps, B, rows, width = _double_case()
    fn = lambda *ts: _PackFn.apply(plan, eps, B, rows, width, *ts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(tensors), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_backward_formula_gradgradcheck_float64():
    tensors, plan, eps, B, rows, width = _double_case()
    fn = lambda *ts: _PackFn.apply(plan, eps, B, rows, width, *ts)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, tuple(tensors), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_backward_formula_equals_autograd_float64():
    """`_backward` in float64 == autograd through the same float64 math (to ~1e-12)."""
    tensors, plan, eps, B, rows, width = _double_case()
    weights = torch.randn(B, rows, width, dtype=torch.float64)
    a = torch.autograd.grad((_PackFn.apply(plan, eps, B, rows, width, *tensors) * weights).sum(), tensors,
                            allow_unused=True, materialize_grads=True)
    r = torch.autograd.grad((pack_float64(tensors, plan, eps, B, rows, width) * weights).sum(), tensors,
                            allow_unused=True, materialize_grads=True)
    for x, y in zip(a, r):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_native_gradients_match_float64_formula():
    """float32 native gradients vs the float64 autograd of the op's math (relative 1e-5)."""
    tensors, plan, eps, B, rows, width, _ = _mixed_case()
    weights = torch.randn(B, rows, width)
    ga = _grads(op, tensors, plan, eps, B, rows, width, weights)
    t64 = [t.detach().double().requires_grad_() for t in tensors]
    out = _PackFn.apply(plan, eps, B, rows, width, *t64)
    g64 = torch.autograd.grad((out * weights.double()).sum(), t64, allow_unused=True, materialize_grads=True)
    for x, y in zip(ga, g64):
        assert_fold_close(x, y, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    tensors, plan, eps, B, rows, width, _ = _mixed_case()

    def f(ts):
        return op(ts, plan, eps, B, rows, width, False) * 2.0 + 1.0

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = compiled(tensors)
    want = f(tensors)
    assert torch.equal(got, want)
    weights = torch.randn_like(want)
    ga = torch.autograd.grad((got * weights).sum(), tensors, allow_unused=True, materialize_grads=True)
    gw = torch.autograd.grad((want * weights).sum(), tensors, allow_unused=True, materialize_grads=True)
    for x, y in zip(ga, gw):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_compile_pack_preps_models():
    """A whole pack_preps call on models compiles with fullgraph=True (no graph break) and matches
    eager."""
    torch._dynamo.reset()
    m = make_model("resnet8")
    compiled = torch.compile(lambda: pack_preps(m, width=64, backend="cpp"), backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(), pack_preps(m, width=64, backend="cpp"))


# ---------------------------------------------------------------------------------------------
# B = 0 (documented as valid: num_nets >= 0, no tensors)


@pytest.mark.parametrize("plan,eps,rows", [
    ([], [], 0),
    ([], [], 4),
    ([COPY, 3, 0, 0, 0, 0, 0], [0.0], 4),
    (_fold_plan(), [1e-5, 1e-5], 8),
], ids=["empty-0rows", "empty-4rows", "copy", "fold"])
def test_op_zero_networks(plan, eps, rows):
    ref = pack_preps_reference([], plan, eps, 0, rows, 8)
    out = op([], plan, eps, 0, rows, 8, True)
    assert out.shape == ref.shape == (0, rows, 8)
    assert out.dtype == torch.float32


def test_pack_op_zero_networks():
    """The Python entry point (what pack_preps/fold_bn call) handles B = 0 without dispatching."""
    out = pack_op([], [COPY, 3, 0, 0, 0, 0, 0], [0.0], 0, 4, 8, check_finite=True)
    assert out.shape == (0, 4, 8) and out.dtype == torch.float32


def test_no_tensors_for_one_network_refused():
    """num_nets >= 1 needs at least one tensor per network (an empty plan reads none): ValueError
    naming `tensors` (the native op cannot even be dispatched without a tensor: see
    test_op_zero_networks)."""
    with pytest.raises(ValueError, match="tensors"):
        pack_preps_reference([], [], [], 1, 4, 8, True)
    with pytest.raises(ValueError, match="tensors"):
        pack_op([], [], [], 1, 4, 8)


# ---------------------------------------------------------------------------------------------
# bad plans and arguments: the native op and the reference refuse them the same way


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


_C, _K = 4, 3
_FOLD = lambda: [_t(_C, _K), _t(_C), _t(_C), _t(_C), _t(_C).abs() + 0.5]  # noqa: E731

BAD = [
    # (id, tensors, plan, eps, num_nets, rows, width, exception, message)
    ("copy-index-high", lambda: [_t(5)], [COPY, 5, 1, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "plan"),
    ("copy-index-negative", lambda: [_t(5)], [COPY, 5, -1, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "plan"),
    ("copy-index-huge", lambda: [_t(5)], [COPY, 5, 2 ** 40, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "plan"),
    ("foldw-gamma-index", _FOLD, [FOLD_W, 12, 0, 5, 4, _C, 0], [1e-5], 1, 2, 8, ValueError, "plan"),
    ("foldw-var-index", _FOLD, [FOLD_W, 12, 0, 1, -1, _C, 0], [1e-5], 1, 2, 8, ValueError, "plan"),
    ("foldb-bias-index-2", _FOLD, [FOLD_B, _C, -2, 1, 2, 3, 4], [1e-5], 1, 1, 8, ValueError, "plan"),
    ("foldb-mean-index", _FOLD, [FOLD_B, _C, -1, 1, 2, 9, 4], [1e-5], 1, 1, 8, ValueError, "plan"),
    ("foldb-gamma-optional", _FOLD, [FOLD_B, _C, -1, -1, 2, 3, 4], [1e-5], 1, 1, 8, ValueError, "plan"),
    ("copy-numel-mismatch", lambda: [_t(5)], [COPY, 6, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "tensors"),
    ("copy-numel-small", lambda: [_t(5)], [COPY, 4, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "tensors"),
    ("foldw-numel-mismatch", _FOLD, [FOLD_W, 8, 0, 1, 4, 2, 0], [1e-5], 1, 2, 8, ValueError, "tensors"),
    ("foldw-channels-mismatch", _FOLD, [FOLD_W, 12, 0, 1, 4, 6, 0], [1e-5], 1, 2, 8, ValueError, "tensors|plan"),
    ("foldb-numel-mismatch", _FOLD, [FOLD_B, 3, -1, 1, 2, 3, 4], [1e-5], 1, 1, 8, ValueError, "tensors"),
    ("foldb-bias-is-weight", _FOLD, [FOLD_B, _C, 0, 1, 2, 3, 4], [1e-5], 1, 1, 8, ValueError, "tensors"),
    ("second-net-mismatch", lambda: [_t(5), _t(6)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 2, 1, 8, ValueError, "tensors"),
    ("plan-too-long", lambda: [_t(33)], [COPY, 33, 0, 0, 0, 0, 0], [0.0], 1, 4, 8, ValueError, "rows"),
    ("plan-too-long-0rows", lambda: [_t(1)], [COPY, 1, 0, 0, 0, 0, 0], [0.0], 1, 0, 8, ValueError, "rows"),
    ("plan-not-multiple-of-7", lambda: [_t(5)], [COPY, 5, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "plan"),
    ("eps-count", lambda: [_t(5)], [COPY, 5, 0, 0, 0, 0, 0], [0.0, 0.0], 1, 1, 8, ValueError, "eps"),
    ("eps-negative", _FOLD, [FOLD_W, 12, 0, 1, 4, _C, 0], [-1e-5], 1, 2, 8, ValueError, "eps"),
    ("kind-unknown", lambda: [_t(5)], [3, 5, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "plan"),
    ("kind-negative", lambda: [_t(5)], [-1, 5, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "plan"),
    ("numel-negative", lambda: [_t(5)], [COPY, -5, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, ValueError, "plan"),
    ("channels-zero", _FOLD, [FOLD_W, 12, 0, 1, 4, 0, 0], [1e-5], 1, 2, 8, ValueError, "plan"),
    ("channels-negative", _FOLD, [FOLD_W, 12, 0, 1, 4, -4, 0], [1e-5], 1, 2, 8, ValueError, "plan"),
    ("channels-not-dividing", _FOLD, [FOLD_W, 12, 0, 1, 4, 5, 0], [1e-5], 1, 2, 8, ValueError, "plan"),
    ("tensors-not-multiple", lambda: [_t(5)] * 3, [COPY, 5, 0, 0, 0, 0, 0], [0.0], 2, 1, 8, ValueError, "tensors"),
    ("tensors-for-zero-nets", lambda: [_t(5)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 0, 1, 8, ValueError, "tensors"),
    ("num-nets-negative", lambda: [_t(5)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], -1, 1, 8, ValueError, "num_nets"),
    ("rows-negative", lambda: [_t(5)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 1, -1, 8, ValueError, "rows"),
    ("width-zero", lambda: [_t(5)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 1, 1, 0, ValueError, "width"),
    ("width-negative", lambda: [_t(5)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 1, 1, -8, ValueError, "width"),
    ("float64", lambda: [_t(5, dtype=torch.float64)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, TypeError,
     "float32"),
    ("float16", lambda: [_t(5), _t(5, dtype=torch.float16)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 2, 1, 8, TypeError,
     "float32"),
    ("int64", lambda: [torch.arange(5)], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 1, 1, 8, TypeError, "float32"),
    ("mixed-devices", lambda: [_t(5), torch.empty(5, device="meta")], [COPY, 5, 0, 0, 0, 0, 0], [0.0], 2, 1, 8,
     ValueError, "device"),
]


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_plans(case, impl):
    _, make, plan, eps, num_nets, rows, width, exc, msg = case
    fn = op if impl == "native" else pack_preps_reference
    with pytest.raises(exc, match=msg):
        fn(make(), plan, eps, num_nets, rows, width, False)


@pytest.mark.parametrize("rows,width,num_nets", [(2 ** 40, 2 ** 30, 1), (2 ** 31, 2 ** 31, 1), (2 ** 30, 2 ** 30, 8),
                                              (2 ** 62, 8, 1)])
def test_native_size_overflow(rows, width, num_nets):
    """num_nets*rows*width*4 bytes overflowing int64 is a ValueError naming `rows`, not a wrapped size."""
    with pytest.raises(ValueError, match="rows"):
        op([torch.ones(1)] * num_nets, [COPY, 1, 0, 0, 0, 0, 0], [0.0], num_nets, rows, width, False)


def test_native_plan_total_overflow():
    with pytest.raises(ValueError, match="plan|rows"):
        op([torch.ones(1)], [COPY, 2 ** 62, 0, 0, 0, 0, 0] * 2, [0.0, 0.0], 1, 1, 8, False)


def test_check_pack_args_returns_tensors_per_net():
    tensors, plan, eps, B, rows, width, T = _mixed_case()
    assert check_pack_args(tensors, plan, eps, B, rows, width) == T


def test_fold_plan_zero_numel_segments():
    """Zero-length fold segments (numel 0 / C channels of K = 0 values) are valid and write nothing."""
    ts = [torch.randn(3, 0), torch.randn(3), torch.randn(3).abs() + 1, torch.randn(0), torch.randn(0),
          torch.randn(0), torch.randn(0)]
    plan = [FOLD_W, 0, 0, 1, 2, 3, 0, FOLD_B, 0, -1, 3, 4, 5, 6]
    out = op(ts, plan, [1e-5, 1e-5], 1, 1, 8, True)
    ref = pack_preps_reference(ts, plan, [1e-5, 1e-5], 1, 1, 8, True)
    assert torch.equal(out, ref) and not out.any()
