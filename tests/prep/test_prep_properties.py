"""Hypothesis properties: packing arbitrary parameter lists, the PRep shape rule, pack/unpack
round trips, and the op on random plans against the pure-PyTorch reference."""

from __future__ import annotations

import math

import torch
from hypothesis import given, strategies as st
from torch import nn

from netspace_fast import PRepLayout, load_prep, pack_preps, prep_shape, unpack_prep
from netspace_fast.ops.pack_preps_ref import COPY, pack_preps_reference
from conftest import assert_as_accurate, assert_fold_close, pack_float64, plans

op = torch.ops.netspace_fast.pack_preps

widths = st.integers(1, 16).map(lambda k: 8 * k)
shapes = st.lists(st.integers(1, 7), min_size=0, max_size=3).map(tuple)


def _param_list(shape_list, seed):
    g = torch.Generator().manual_seed(seed)
    return nn.ParameterList([nn.Parameter(torch.randn(s, generator=g)) for s in shape_list])


@given(num_params=st.integers(1, 10 ** 7), width=st.integers(1, 2000).map(lambda k: 8 * k))
def test_prep_shape_rule(num_params, width):
    h, w = prep_shape(num_params, width)
    assert w == width
    assert h % 4 == 0 and h >= 4
    assert h * w >= num_params  # everything fits
    assert (h - 4) * w < num_params  # and no block of 4 rows is wasted
    assert h == 4 * math.ceil(math.ceil(num_params / width) / 4)


@given(shape_list=st.lists(shapes, min_size=1, max_size=6), width=widths, batch=st.integers(1, 3),
       seed=st.integers(0, 2 ** 16))
def test_pack_parameter_lists(shape_list, width, batch, seed):
    models = [_param_list(shape_list, seed + b) for b in range(batch)]
    P = sum(math.prod(s) for s in shape_list)
    with torch.no_grad():
        prep = pack_preps(models, width=width)
        ref = pack_preps(models, width=width, backend="torch")
    assert prep.shape == (batch, *prep_shape(P, width))
    assert torch.equal(prep, ref)
    flat = prep.reshape(batch, -1)
    for b, m in enumerate(models):
        expected = torch.cat([p.detach().reshape(-1) for p in m])
        assert torch.equal(flat[b, :P], expected)
        assert not flat[b, P:].any()
    # unpack(pack(x)) == x, as views of the PRep
    lay = PRepLayout.for_module(models[0], width)
    assert lay.shape == tuple(prep.shape[1:])
    views = unpack_prep(prep, lay)
    for b, m in enumerate(models):
        for (name, v), p in zip(views.items(), m):
            assert v[b].shape == p.shape
            assert torch.equal(v[b], p)
    # load_prep into a zeroed copy restores the values
    target = _param_list(shape_list, 0)
    with torch.no_grad():
        for p in target:
            p.zero_()
    load_prep(target, prep[batch - 1])
    for p, q in zip(target, models[-1]):
        assert torch.equal(p, q)


@given(sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9), st.booleans()), min_size=1, max_size=4),
       width=widths, seed=st.integers(0, 2 ** 16))
def test_pack_linear_stacks(sizes, width, seed):
    torch.manual_seed(seed)
    layers = [nn.Linear(i, o, bias=b) for i, o, b in sizes]
    m = nn.Sequential(*layers)
    with torch.no_grad():
        prep = pack_preps(m, width=width)
    expected = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    assert prep.shape == (1, *prep_shape(expected.numel(), width))
    assert torch.equal(prep.reshape(-1)[:expected.numel()], expected)
    assert not prep.reshape(-1)[expected.numel():].any()


# ---------------------------------------------------------------------------------------------
# random plans on the op


@given(case=plans())
def test_op_random_plans_vs_reference(case):
    tensors, plan, eps, num_nets, rows, width = case
    out = op(tensors, plan, eps, num_nets, rows, width, True)
    ref = pack_preps_reference(tensors, plan, eps, num_nets, rows, width, True)
    assert out.shape == ref.shape == (num_nets, rows, width)
    assert_fold_close(out, ref)
    # copy segments bit-exact, padding exactly zero
    T = len(tensors) // num_nets
    offset = 0
    for s in range(len(plan) // 7):
        kind, numel, a = plan[7 * s:7 * s + 3]
        if kind == COPY:
            for b in range(num_nets):
                assert torch.equal(out[b].reshape(-1)[offset:offset + numel], tensors[b * T + a])
        offset += numel
    assert not out.reshape(num_nets, -1)[:, offset:].any()


@given(case=plans())
def test_op_random_plans_gradients(case):
    tensors, plan, eps, num_nets, rows, width = case
    leaves = [t.clone().requires_grad_() for t in tensors]
    weights = torch.randn(num_nets, rows, width)
    ga = torch.autograd.grad((op(leaves, plan, eps, num_nets, rows, width, False) * weights).sum(), leaves,
                             allow_unused=True, materialize_grads=True)
    gr = torch.autograd.grad((pack_preps_reference(leaves, plan, eps, num_nets, rows, width) * weights).sum(),
                             leaves, allow_unused=True, materialize_grads=True)
    t64 = [t.detach().double().requires_grad_() for t in tensors]
    g64 = torch.autograd.grad((pack_float64(t64, plan, eps, num_nets, rows, width) * weights.double()).sum(), t64,
                              allow_unused=True, materialize_grads=True)
    for x, y, z in zip(ga, gr, g64):
        assert_as_accurate(x, y, z, rtol=1e-5)


@given(case=plans(), where=st.integers(0, 10 ** 6), value=st.sampled_from([float("nan"), float("inf")]))
def test_op_random_plans_nonfinite(case, where, value):
    tensors, plan, eps, num_nets, rows, width = case
    used = [t for t in tensors if t.numel()]
    if not used or not any(plan[7 * s + 1] for s in range(len(plan) // 7)):
        return
    # poison one value of a tensor that a nonempty segment reads; the op must refuse iff the
    # reference's output is non-finite
    t = used[where % len(used)]
    t.view(-1)[where % t.numel()] = value
    ref = pack_preps_reference(tensors, plan, eps, num_nets, rows, width, False)
    refuses = not bool(torch.isfinite(ref).all())
    try:
        out = op(tensors, plan, eps, num_nets, rows, width, True)
    except ValueError as e:
        assert refuses, f"refused although the output is finite: {e}"
        assert "non-finite" in str(e)
    else:
        assert not refuses, "accepted a non-finite output"
        assert_fold_close(out, ref)
    out = op(tensors, plan, eps, num_nets, rows, width, False)
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
