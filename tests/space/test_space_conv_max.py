"""The encoder's fused front (netspace_fast/space/conv_max.py) against its dense reference: values and
every gradient (PRep, both weights, both biases) in float64 (tolerance 1e-12 relative: the same sums
in another order) and float32 (1e-5), gradcheck, hypothesis over shapes (odd widths, width 1, one
row), ties in zero-padded columns (the weight gradients of amax and max agree there), the Encoder
with fused on and off, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netspace_fast.space import Encoder, SpaceConfig
from netspace_fast.space.conv_max import conv_max_width, conv_max_width_ref

from conftest import rel_err

SLOPE = 0.01


def _inputs(B, C1, C2, H, W, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1, H, W, dtype=dtype, generator=g)
    ps = [torch.randn(C1, 1, 1, 3, dtype=dtype, generator=g), torch.randn(C1, dtype=dtype, generator=g),
          torch.randn(C2, C1, 1, 3, dtype=dtype, generator=g), torch.randn(C2, dtype=dtype, generator=g)]
    return [t.requires_grad_() for t in [x, *ps]]


def _compare(inputs, tol):
    y = conv_max_width(*inputs, SLOPE)
    y_ref = conv_max_width_ref(*inputs, SLOPE)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= tol
    g = torch.randn_like(y)
    for name, a, b in zip(("x", "w1", "b1", "w2", "b2"), torch.autograd.grad(y, inputs, g),
                          torch.autograd.grad(y_ref, inputs, g)):
        assert rel_err(a, b) <= tol, name


@pytest.mark.parametrize("shape", [(2, 4, 6, 3, 9), (3, 8, 5, 4, 10), (1, 2, 3, 1, 3), (2, 4, 4, 2, 1),
                                   (2, 3, 3, 2, 2), (2, 16, 32, 8, 64)])
def test_matches_reference_float64(shape):
    _compare(_inputs(*shape), 1e-12)


def test_matches_reference_float32():
    _compare(_inputs(4, 32, 64, 8, 1000, torch.float32, seed=1), 1e-5)


def test_gradcheck():
    inputs = _inputs(2, 3, 4, 2, 7)
    assert torch.autograd.gradcheck(lambda *t: conv_max_width(*t, SLOPE), inputs)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), C1=st.integers(1, 5), C2=st.integers(1, 5), H=st.integers(1, 4), W=st.integers(1, 23),
       seed=st.integers(0, 2**16))
def test_property_matches_reference(B, C1, C2, H, W, seed):
    _compare(_inputs(B, C1, C2, H, W, seed=seed), 1e-12)


def test_only_requested_gradients_are_computed():
    x, w1, b1, w2, b2 = _inputs(2, 3, 4, 2, 9)
    x.requires_grad_(False)
    y = conv_max_width(x, w1, b1, w2, b2, SLOPE)
    (gw2,) = torch.autograd.grad(y.sum(), [w2])
    (gw2_ref,) = torch.autograd.grad(conv_max_width_ref(x, w1, b1, w2, b2, SLOPE).sum(), [w2])
    assert rel_err(gw2, gw2_ref) <= 1e-12


def test_ties_in_zero_padding_give_the_same_weight_gradients_as_amax():
    """PReps padded with zero columns: every padded position has the same value, so the maximum can
    be tied among many of them; the weight gradients do not depend on which one gets the gradient."""
    x, w1, b1, w2, b2 = _inputs(2, 4, 6, 3, 16)
    with torch.no_grad():
        x[..., 5:] = 0
        b2.fill_(5.0)  # large bias: padded positions tie for the maximum in some channels
    y = conv_max_width(x, w1, b1, w2, b2, SLOPE)
    h = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(
        torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(x, w1, b1, (1, 2), (0, 1)), SLOPE),
        w2, b2, (1, 2), (0, 1)), SLOPE)
    y_amax = h.amax(dim=3)
    assert ((h == y_amax.unsqueeze(3)).sum(3) > 1).any()  # the test is about ties: there are some
    torch.testing.assert_close(y, y_amax, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [w1, b1, w2, b2], g), torch.autograd.grad(y_amax, [w1, b1, w2, b2], g)):
        assert rel_err(a, b) <= 1e-12


def test_encoder_fused_and_dense_agree():
    cfg = SpaceConfig(8, 64, embed=256, view=16, dec_a=8, dec_b=16, dec_c=8, prep_scale=30.0)
    torch.manual_seed(0)
    fused = Encoder(cfg).double()
    dense = Encoder(cfg, fused=False).double()
    dense.load_state_dict(fused.state_dict())
    assert fused.fused and not dense.fused
    preps = (torch.randn(3, 8, 64, dtype=torch.float64) * 0.03).requires_grad_()
    z, z_ref = fused(preps), dense(preps)
    assert rel_err(z, z_ref) <= 1e-12
    g = torch.randn_like(z)
    params = list(fused.parameters())
    ga = torch.autograd.grad(z, [preps, *params], g)
    gb = torch.autograd.grad(z_ref, [preps, *dense.parameters()], g)
    for a, b in zip(ga, gb):
        assert rel_err(a, b) <= 1e-12


def test_bad_input():
    x, w1, b1, w2, b2 = [t.detach() for t in _inputs(2, 3, 4, 2, 9)]
    with pytest.raises(ValueError, match=r"x: expected PReps \(B, 1, H, W\)"):
        conv_max_width(x[:, 0], w1, b1, w2, b2, SLOPE)
    with pytest.raises(ValueError, match="w1, b1"):
        conv_max_width(x, w1[:, :, :, :2], b1, w2, b2, SLOPE)
    with pytest.raises(ValueError, match="w2, b2"):
        conv_max_width(x, w1, b1, w2[:, :2], b2, SLOPE)
    with pytest.raises(ValueError, match="w2: expected torch.float64"):
        conv_max_width(x, w1, b1, w2.float(), b2, SLOPE)
