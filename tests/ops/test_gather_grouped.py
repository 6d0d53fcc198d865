"""`netspace_fast::gather_grouped`, the minibatch gather of batched zoo training: the C++ CPU kernel
against the pure-PyTorch reference (exact: it only moves values), against a per-element definition,
hypothesis over shapes/strides/augmentation, opcheck, bad input before any kernel, and the
zoo's augmentation built on it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import netspace_fast as nf
from netspace_fast.ops.gather_grouped import gather_grouped, gather_grouped_ref
from netspace_fast.zoo import crop_flip_draws, random_crop_flip

native = pytest.mark.skipif(not nf.backends()["cpu"]["compiled"], reason="native CPU kernels not built")


def definition(images, index, offsets, flips, pad, fill=None):
    """out[j, b*C + c, y, x], element by element, straight from the docstring (an index outside
    [0, M) gives fill, as the reference and the Triton kernel define it)."""
    M, C, H, W = images.shape
    B, n = index.shape
    out = torch.zeros(n, B * C, H, W, dtype=images.dtype)
    if fill is not None:
        out[:] = torch.tensor(fill, dtype=images.dtype).repeat(B).view(1, B * C, 1, 1)
    for b in range(B):
        for j in range(n):
            oy, ox = (offsets[b, j].tolist() if offsets is not None else (pad, pad))
            fl = bool(flips[b, j]) if flips is not None else False
            for y in range(H):
                for x in range(W):
                    sy, sx = y + oy - pad, (W - 1 - x if fl else x) + ox - pad
                    if 0 <= int(index[b, j]) < M and 0 <= sy < H and 0 <= sx < W:
                        out[j, b * C:(b + 1) * C, y, x] = images[index[b, j], :, sy, sx]
    return out


def case(M=7, C=3, H=5, W=6, B=3, n=4, pad=2, aug=True, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(M, C, H, W, generator=g, dtype=dtype)
    index = torch.randint(0, M, (B, n), generator=g)
    offsets = torch.randint(0, 2 * pad + 1, (B, n, 2), generator=g) if aug else None
    flips = (torch.rand(B, n, generator=g) < 0.5) if aug else None
    return images, index, offsets, flips, pad


def test_reference_matches_the_definition():
    for aug in (False, True):
        args = case(aug=aug)
        assert torch.equal(gather_grouped_ref(*args), definition(*args))
        assert torch.equal(gather_grouped_ref(*args, [0.5, -1.0, 2.0]), definition(*args, [0.5, -1.0, 2.0]))


def out_of_range_case(pad=2, aug=True):
    """Index values outside [0, M) (one far outside) and offsets outside [0, 2*pad], both signs."""
    images, index, offsets, flips, pad = case(pad=pad, aug=aug)
    index[0, 1], index[1, 0], index[2, 3] = -1, 7, 2 ** 40
    if offsets is not None:
        offsets[0, 2] = torch.tensor([-3, 2 * pad + 4])
        offsets[1, 1] = torch.tensor([2 * pad + 1, -(2 ** 40)])
    return images, index, offsets, flips, pad


@pytest.mark.parametrize("aug", [False, True])
def test_reference_masks_out_of_range_values(aug):
    """What the GPU kernel does where nothing checks the values (see gather_grouped_ref): the
    reference, on the same values, reads nothing out of range and follows the definition: an
    index outside [0, M) gives its sample as fill, offsets outside [0, 2*pad] give fill where they
    leave the image."""
    args = out_of_range_case(aug=aug)
    fill = [0.5, -1.0, 2.0]
    got = gather_grouped_ref(*args, fill)
    assert torch.equal(got, definition(*args, fill))
    assert (got[1, 0:3] == torch.tensor(fill).view(3, 1, 1)).all()  # index[0, 1] = -1: all fill
    assert torch.equal(gather_grouped_ref(*args), definition(*args))


def test_wrapper_reads_no_values_off_the_cpu():
    """The wrapper's checks read no tensor value unless it lives on the CPU (on CUDA, reading one
    is a device sync per minibatch): on meta tensors (no values at all) the call goes through,
    with the output's shape and channels-last layout."""
    images, index, offsets, flips, pad = case()
    meta = [t.to("meta") for t in (images, index, offsets, flips)]
    out = gather_grouped(*meta, pad, [0.5, -1.0, 2.0])
    assert out.device.type == "meta" and out.shape == (4, 9, 5, 6)
    assert out.is_contiguous(memory_format=torch.channels_last)


@native
@pytest.mark.parametrize("aug", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_equals_reference(aug, layout, dtype):
    images, index, offsets, flips, pad = case(aug=aug, dtype=dtype)
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        images = torch.randn(7, 6, 5, 12, dtype=dtype)[:, ::2, :, ::2]
    out = gather_grouped(images, index, offsets, flips, pad, backend="cpp")
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == dtype
    assert torch.equal(out, gather_grouped_ref(images, index, offsets, flips, pad))
    assert torch.equal(out, definition(images, index, offsets, flips, pad))


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fill_pads_with_the_given_value(dtype):
    images, index, offsets, flips, pad = case(dtype=dtype)
    fill = [-2.1, 0.5, 7.0]
    out = gather_grouped(images, index, offsets, flips, pad, fill, backend="cpp")
    assert torch.equal(out, definition(images, index, offsets, flips, pad, fill))
    assert torch.equal(out, gather_grouped_ref(images, index, offsets, flips, pad, fill))
    assert torch.equal(gather_grouped(images, index, offsets, flips, pad, [0.0] * 3, backend="cpp"),
                       gather_grouped(images, index, offsets, flips, pad, backend="cpp"))


@native
@settings(max_examples=60, deadline=None)
@given(M=st.integers(1, 6), C=st.integers(1, 4), H=st.integers(1, 7), W=st.integers(1, 7), B=st.integers(0, 4),
       n=st.integers(0, 5), pad=st.integers(0, 9), aug=st.sampled_from(["none", "offsets", "flips", "both"]),
       seed=st.integers(0, 2**16), filled=st.booleans())
def test_native_equals_reference_properties(M, C, H, W, B, n, pad, aug, seed, filled):
    """Any shape, padding wider than the image, empty batches: exact agreement (values are moved, never computed)."""
    images, index, offsets, flips, pad = case(M, C, H, W, B, n, pad, True, seed)
    offsets = offsets if aug in ("offsets", "both") else None
    flips = flips if aug in ("flips", "both") else None
    fill = [float(c) - 1.5 for c in range(C)] if filled else None
    out = gather_grouped(images, index, offsets, flips, pad, fill, backend="cpp")
    assert out.shape == (n, B * C, H, W)
    assert torch.equal(out, gather_grouped_ref(images, index, offsets, flips, pad, fill))


@native
def test_opcheck():
    images, index, offsets, flips, pad = case()
    opcheck(torch.ops.netspace_fast.gather_grouped, (images, index, offsets, flips, pad))
    opcheck(torch.ops.netspace_fast.gather_grouped, (images, index, None, None, 0))
    opcheck(torch.ops.netspace_fast.gather_grouped, (images, index, offsets, flips, pad, [1.0, -1.0, 0.5]))


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=native)])
def test_bad_input_is_refused_before_any_kernel(backend):
    images, index, offsets, flips, pad = case()

    def call(**kw):
        args = dict(images=images, index=index, offsets=offsets, flips=flips, pad=pad) | kw
        return gather_grouped(**args, backend=backend)

    with pytest.raises(ValueError, match=r"images: expected an \(M, C, H, W\)"):
        call(images=images[0])
    with pytest.raises(TypeError, match="images: expected float32 or float64, got torch.int64"):
        call(images=images.long())
    with pytest.raises(ValueError, match="images: gather_grouped is a data-loading op"):
        call(images=images.clone().requires_grad_())
    with pytest.raises(ValueError, match=r"index: expected a \(B, n\)"):
        call(index=index[0])
    with pytest.raises(TypeError, match="index: expected int64, got torch.int32"):
        call(index=index.int())
    with pytest.raises(ValueError, match=r"index: values must lie in \[0, 7\).*max 7"):
        call(index=index.clone().fill_(7))
    with pytest.raises(ValueError, match=r"index: values must lie in \[0, 7\).*min -1"):
        call(index=index.clone().fill_(-1))
    with pytest.raises(ValueError, match=r"offsets: expected shape \(B, n, 2\) = \(3, 4, 2\), got \(3, 4\)"):
        call(offsets=offsets[..., 0])
    with pytest.raises(TypeError, match="offsets: expected int64"):
        call(offsets=offsets.int())
    with pytest.raises(ValueError, match=r"offsets: values must lie in \[0, 2\*pad\] = \[0, 4\].*max 5"):
        call(offsets=offsets.clone().fill_(5))
    with pytest.raises(ValueError, match=r"flips: expected shape \(B, n\) = \(3, 4\)"):
        call(flips=flips[:, :2])
    with pytest.raises(TypeError, match="flips: expected bool"):
        call(flips=flips.long())
    with pytest.raises(ValueError, match="pad: expected an int >= 0, got -1"):
        call(pad=-1, offsets=None)
    with pytest.raises(ValueError, match=r"fill: expected one value per channel \(3\), got 2"):
        call(fill=[0.0, 1.0])
    with pytest.raises(TypeError, match="fill: expected a list of 3 numbers"):
        call(fill=torch.zeros(3))


@native
def test_native_op_checks_itself_when_called_directly():
    """The registered op refuses out-of-range indices and offsets on its own (no out-of-bounds reads)."""
    images, index, offsets, flips, pad = case()
    op = torch.ops.netspace_fast.gather_grouped
    with pytest.raises(ValueError, match="index: values must lie in"):
        op(images, index.clone().fill_(100), None, None, 0)
    with pytest.raises(ValueError, match="offsets: values must lie in"):
        op(images, index, offsets.clone().fill_(-3), None, pad)
    with pytest.raises(ValueError, match="offsets: expected"):
        op(images, index, offsets[:1], None, pad)
    with pytest.raises(ValueError, match="pad: expected >= 0"):
        op(images, index, None, None, -1)
    with pytest.raises(ValueError, match="fill: expected one value per channel"):
        op(images, index, None, None, 0, [1.0])


def test_random_crop_flip_is_the_gather_of_its_draws():
    x = torch.randn(5, 3, 8, 8)
    out = random_crop_flip(x, 3, torch.Generator().manual_seed(4))
    off, flips = crop_flip_draws(5, 3, torch.Generator().manual_seed(4))
    assert torch.equal(out, definition(x, torch.arange(5)[None], off[None], flips[None], 3))
    # flip=False draws the same offsets (same generator stream) and never flips
    off2, flips2 = crop_flip_draws(5, 3, torch.Generator().manual_seed(4), flip=False)
    assert torch.equal(off2, off) and not flips2.any()
