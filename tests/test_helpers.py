"""The test suite's own helpers (tests/conftest.py) can fail: ``assert_prep_grad_close`` checks a PRep
gradient per layer slice, so an error in a layer whose gradients are small is not hidden behind the
largest gradient of the whole PRep (which is all ``rel_err`` over the whole PRep sees)."""

from __future__ import annotations

import pytest
import torch

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.engine import batched_forward_reference
from conftest import assert_matches_reference, assert_prep_grad_close, prep_slices, rel_err


def _slice(layout: nf.PRepLayout, name: str) -> slice:
    e = next(e for e in layout.entries if e.name == name)
    return slice(e.offset, e.offset + e.numel)


def test_prep_slices_are_the_layout():
    spec = archs.spec("resnet8")
    lay = nf.PRepLayout.for_spec(spec, 1024)
    got = prep_slices(spec)
    assert got == prep_slices(lay)
    assert [n for n, _, _ in got] == [p.name for p in spec.params]
    assert got[0][1] == 0 and got[-1][2] == spec.num_params
    assert all(a[2] == b[1] for a, b in zip(got, got[1:]))  # contiguous, in packing order
    assert prep_slices([("w", 3, 9), ("b", 9, 11)]) == [("w", 3, 9), ("b", 9, 11)]


def test_small_slice_error_hidden_from_whole_prep_metric_is_caught():
    """A synthetic gradient whose conv1.bias slice is 1e-4 of the largest value: that slice 10% off
    passes the whole-PRep metric (relative error 1e-5) and fails per slice, naming the slice."""
    spec = archs.spec("lenetlike")
    lay = nf.PRepLayout.for_spec(spec, 1024)
    ref = torch.randn(2, *lay.shape)
    ref.view(2, -1)[:, spec.num_params:] = 0  # the padding gets no gradient
    small = _slice(lay, "conv1.bias")
    ref.view(2, -1)[:, small] *= 1e-4
    assert_prep_grad_close(ref.clone(), ref, spec, 1e-4)  # equal: passes
    bad = ref.clone()
    bad.view(2, -1)[1, small] *= 1.1
    assert rel_err(bad, ref) <= 1e-4  # the whole-PRep metric misses it ...
    with pytest.raises(AssertionError, match=r"network 1 conv1\.bias"):  # ... the per-slice check does not
        assert_prep_grad_close(bad, ref, spec, 1e-4)


def test_real_gradient_one_percent_off_in_its_smallest_layer_is_caught():
    """A real ResNet8 PRep gradient (the reference loop): its smallest layer's gradient is ~1% of the
    largest, so that layer 1% wrong stays below 1e-4 over the whole PRep, not per slice."""
    spec = archs.spec("resnet8")
    models = [archs.build("resnet8", batchnorm=False) for _ in range(2)]
    preps = nf.pack_preps(models, 1024).detach().requires_grad_()
    y = batched_forward_reference(spec, preps, torch.randn(2, 3, 32, 32))
    (ref,) = torch.autograd.grad(y, preps, torch.randn_like(y))
    lay = nf.PRepLayout.for_spec(spec, 1024)
    flat = ref.reshape(2, -1)
    name = min((e.name for e in lay.entries), key=lambda n: flat[:, _slice(lay, n)].abs().max().item())
    assert flat[:, _slice(lay, name)].abs().max() < 0.02 * flat.abs().max()  # the premise: a small slice
    bad = ref.clone()
    bad.view(2, -1)[:, _slice(lay, name)] *= 1.01
    assert rel_err(bad, ref) <= 1e-4
    with pytest.raises(AssertionError, match=name.replace(".", r"\.")):
        assert_prep_grad_close(bad, ref, spec, 1e-4)


def test_zero_reference_slices_and_padding():
    """A slice with zero reference gradient (a dead layer) is checked absolutely; values outside every
    slice (the padding) against the whole gradient's scale; layer-op slices may be given by hand."""
    spec = archs.spec("lenetlike")
    lay = nf.PRepLayout.for_spec(spec, 1024)
    ref = torch.randn(1, *lay.shape)
    ref.view(1, -1)[:, spec.num_params:] = 0
    ref.view(1, -1)[:, _slice(lay, "fc2.bias")] = 0
    bad = ref.clone()
    bad.view(1, -1)[0, _slice(lay, "fc2.bias").start] = 1e-3
    with pytest.raises(AssertionError, match=r"fc2\.bias"):
        assert_prep_grad_close(bad, ref, lay, 1e-4)
    bad = ref.clone()
    bad.view(1, -1)[0, -1] = 0.1 * ref.abs().max()  # in the padding
    with pytest.raises(AssertionError, match="outside every slice"):
        assert_prep_grad_close(bad, ref, lay, 1e-4)
    # (B, P) gradients of one layer, weight at 2..8, bias at 10..12, the rest outside the layer
    g = torch.zeros(3, 14)
    g[:, 2:8] = torch.randn(3, 6) * 100
    g[:, 10:12] = torch.randn(3, 2) * 1e-3
    bad = g.clone()
    bad[2, 11] *= 1.1
    assert rel_err(bad, g) <= 1e-4
    with pytest.raises(AssertionError, match="network 2 bias"):
        assert_prep_grad_close(bad, g, [("weight", 2, 8), ("bias", 10, 12)], 1e-4)


def test_assert_matches_reference_checks_prep_slices():
    """``assert_matches_reference(..., prep_layout=...)`` applies the per-slice check to inputs[0]: a
    backward whose conv1.bias gradient is off by 0.5e-4 of the largest PRep gradient (some 0.1-1% of
    conv1.bias's own) passes without it and fails with it."""
    spec = archs.spec("lenetlike")
    lay = nf.PRepLayout.for_spec(spec, 1024)
    preps = nf.pack_preps([archs.build("lenetlike") for _ in range(2)], 1024).detach().requires_grad_()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    y_ref = batched_forward_reference(spec, preps, x)
    torch.manual_seed(1)
    (g,) = torch.autograd.grad(y_ref, preps, torch.randn_like(y_ref), retain_graph=True)
    ratio = (g.reshape(2, -1)[:, _slice(lay, "conv1.bias")].abs().max() / g.abs().max()).item()
    assert ratio < 0.05  # the premise: conv1.bias's gradients are small
    mask = torch.ones(lay.height * lay.width)
    mask[_slice(lay, "conv1.bias")] = 1 + 0.5e-4 / ratio

    class _Scale(torch.autograd.Function):  # the wrong gradient is in the backward only
        @staticmethod
        def forward(ctx, p):
            return p.view_as(p)

        @staticmethod
        def backward(ctx, grad):
            return grad * mask.view(lay.shape)

    def outputs():
        torch.manual_seed(1)  # the same output gradient as above
        return batched_forward_reference(spec, _Scale.apply(preps), x), batched_forward_reference(spec, preps, x)

    assert_matches_reference(*outputs(), (preps, x))  # the whole-PRep metric misses it
    with pytest.raises(AssertionError, match=r"conv1\.bias"):
        assert_matches_reference(*outputs(), (preps, x), prep_layout=spec)
