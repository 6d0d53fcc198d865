"""The Triton kernel of `netspace_fast::gather_grouped` (the op's CUDA kernel; called directly with
backend="triton" where another kernel holds the dispatch key, as on CPU tensors).

Runs on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set before triton is
imported: ``TRITON_INTERPRET=1 pytest -m triton tests``), or on CUDA tensors when a GPU is present
(scripts/device_check.sh). Without either the module is skipped. Every comparison is exact: the
op moves values, it never computes them. The gpu-marked tests at the end need CUDA: the op's
CUDA kernel is this one (not the reference), and a call never waits for the device.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

pytestmark = pytest.mark.triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton tests need TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device", allow_module_level=True)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.library import opcheck  # noqa: E402

import netspace_fast as nf  # noqa: E402
from netspace_fast.ops import gather_grouped as gg_module  # noqa: E402
from netspace_fast.ops.gather_grouped import gather_grouped, gather_grouped_ref  # noqa: E402
from netspace_fast.ops.gather_grouped_triton import MAX_BLOCK, gather_grouped_forward  # noqa: E402

from test_gather_grouped import case, definition, out_of_range_case  # noqa: E402

DEVICE = torch.device("cpu") if INTERPRET else torch.device("cuda")


def _dev(args):
    return [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]


def _check(images, index, offsets, flips, pad, fill=None, direct=False):
    """The Triton kernel (the wrapper with backend='triton', or the launcher itself) equals the
    reference (on the CPU) exactly, in shape, dtype, device and channels-last layout."""
    want = gather_grouped_ref(images, index, offsets, flips, pad, fill)
    args = _dev([images, index, offsets, flips, pad, fill])
    got = gather_grouped_forward(*args) if direct else gather_grouped(*args, backend="triton")
    assert got.device.type == DEVICE.type and got.dtype == images.dtype and got.shape == want.shape
    assert got.numel() == 0 or got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.cpu(), want)
    return got


@pytest.mark.parametrize("aug", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_equals_reference(aug, layout, dtype):
    images, index, offsets, flips, pad = case(aug=aug, dtype=dtype)
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        images = torch.randn(7, 6, 5, 12, dtype=dtype)[:, ::2, :, ::2]
    got = _check(images, index, offsets, flips, pad)
    assert torch.equal(got.cpu(), definition(images, index, offsets, flips, pad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_fill(dtype):
    images, index, offsets, flips, pad = case(dtype=dtype)
    fill = [-2.1, 0.5, 7.0]
    got = _check(images, index, offsets, flips, pad, fill)
    assert torch.equal(got.cpu(), definition(images, index, offsets, flips, pad, fill))


@pytest.mark.parametrize("B,C,W", [(1, 1, MAX_BLOCK), (32, 1, 32), (11, 3, 32), (3, 5, 70)],
                         ids=["one_block", "exactly_one_block", "just_over", "three_blocks"])
def test_triton_row_blocks(B, C, W):
    """Output rows of W*B*C values at and across the kernel's block size (masked tails)."""
    images, index, offsets, flips, pad = case(M=4, C=C, H=2, W=W, B=B, n=2, pad=3)
    _check(images, index, offsets, flips, pad, [float(c) for c in range(C)])


@settings(max_examples=25, deadline=None)
@given(M=st.integers(1, 5), C=st.integers(1, 4), H=st.integers(1, 6), W=st.integers(1, 6), B=st.integers(0, 3),
       n=st.integers(0, 4), pad=st.integers(0, 8), aug=st.sampled_from(["none", "offsets", "flips", "both"]),
       seed=st.integers(0, 2**16), filled=st.booleans())
def test_triton_equals_reference_properties(M, C, H, W, B, n, pad, aug, seed, filled):
    """Any shape, padding wider than the image, empty batches: exact agreement."""
    images, index, offsets, flips, pad = case(M, C, H, W, B, n, pad, True, seed)
    offsets = offsets if aug in ("offsets", "both") else None
    flips = flips if aug in ("flips", "both") else None
    fill = [float(c) - 1.5 for c in range(C)] if filled else None
    _check(images, index, offsets, flips, pad, fill)


@pytest.mark.parametrize("aug", [False, True])
@pytest.mark.parametrize("filled", [False, True])
def test_triton_masks_out_of_range_values(aug, filled):
    """Values nothing checks on the GPU (indices outside [0, M), one at 2**40; offsets outside
    [0, 2*pad]): the kernel reads nothing out of range and gives what the reference gives (fill)."""
    images, index, offsets, flips, pad = out_of_range_case(aug=aug)
    fill = [0.5, -1.0, 2.0] if filled else None
    got = _check(images, index, offsets, flips, pad, fill, direct=True)
    assert torch.equal(got.cpu(), definition(images, index, offsets, flips, pad, fill))


def test_triton_refuses_bad_arguments_before_launch():
    """The launcher (the op's CUDA kernel) checks types, shapes and devices itself."""
    images, index, offsets, flips, pad = _dev(case())
    with pytest.raises(ValueError, match=r"offsets: expected shape \(B, n, 2\)"):
        gather_grouped_forward(images, index, offsets[..., 0], flips, pad)
    with pytest.raises(TypeError, match="flips: expected bool"):
        gather_grouped_forward(images, index, offsets, flips.long(), pad)
    with pytest.raises(TypeError, match="index: expected int64"):
        gather_grouped_forward(images, index.int(), offsets, flips, pad)
    with pytest.raises(ValueError, match=r"fill: expected one value per channel \(3\), got 2"):
        gather_grouped_forward(images, index, offsets, flips, pad, [1.0, 2.0])
    with pytest.raises(ValueError, match="pad: expected an int >= 0"):
        gather_grouped_forward(images, index, None, flips, -1)


def test_triton_refuses_sizes_past_its_32_bit_indexing():
    """Sizes the kernel's 32-bit row and draw numbers cannot hold are refused before launch
    (stride-0 expanded tensors: nothing that large is allocated)."""
    images = torch.zeros(1, 1, 1, 1, device=DEVICE)
    with pytest.raises(ValueError, match=r"32-bit integers; got W\*B\*C = 2147483648"):
        gather_grouped_forward(images.expand(1, 1, 1, 2 ** 31), torch.zeros(1, 1, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match=r"2\*B\*n = 2147483648"):
        gather_grouped_forward(images, torch.zeros(1, 1, dtype=torch.int64, device=DEVICE).expand(2 ** 30, 1))


def test_triton_opcheck():
    """On CUDA the op itself with its CUDA kernel (this one) through the dispatcher; under the
    interpreter the launcher as the CPU kernel of a test-only op with the op's schema and fake
    kernel (the fake's shape, dtype and channels-last strides against the kernel's output)."""
    images, index, offsets, flips, pad = _dev(case())
    if DEVICE.type == "cuda":
        op = torch.ops.netspace_fast.gather_grouped
        opcheck(op, (images, index, offsets, flips, pad))
        opcheck(op, (images, index, None, None, 0))
    else:  # one call (the interpreter is slow; the CPU op is opchecked in test_gather_grouped.py)
        op = _interpreted_op()
    opcheck(op, (images, index, offsets, flips, pad, [1.0, -1.0, 0.5]))


_LIB = None


def _interpreted_op():
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library("netspace_fast_gather_test", "DEF")
        _LIB.define("gather_grouped(Tensor images, Tensor index, Tensor? offsets, Tensor? flips, int pad, "
                    "float[]? fill=None) -> Tensor")
        _LIB.impl("gather_grouped", gather_grouped_forward, "CPU")
        torch.library.register_fake("netspace_fast_gather_test::gather_grouped", gg_module._fake, lib=_LIB)
    return torch.ops.netspace_fast_gather_test.gather_grouped


# ---------------------------------------------------------------------------------------------
# CUDA: the op's kernel, and no wait for the device


@pytest.mark.gpu
def test_cuda_op_kernel_is_triton(monkeypatch):
    """On CUDA tensors the op runs the Triton kernel, never the reference (it did before: the slow path)."""
    assert nf.ops.backend.select("gather_grouped", DEVICE) == "triton"

    def no_reference(*args, **kw):
        raise AssertionError("the reference ran on CUDA")

    monkeypatch.setattr(gg_module, "gather_grouped_ref", no_reference)
    images, index, offsets, flips, pad = case()
    got = gather_grouped(*_dev([images, index, offsets, flips]), pad)
    assert got.is_cuda and torch.equal(got.cpu(), definition(images, index, offsets, flips, pad))
    got = torch.ops.netspace_fast.gather_grouped(*_dev([images, index, offsets, flips]), pad, None)
    assert torch.equal(got.cpu(), definition(images, index, offsets, flips, pad))


@pytest.mark.gpu
def test_cuda_call_does_not_sync():
    """No device sync in a call (the checks read no value on the host): under sync debug mode
    'error' any synchronizing CUDA call raises."""
    images, index, offsets, flips, pad = _dev(case())
    fill = [0.25, -0.5, 1.0]
    gather_grouped(images, index, offsets, flips, pad, fill)  # first calls: compile, the fill values cached
    gather_grouped(images, index, None, None, 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = gather_grouped(images, index, offsets, flips, pad, fill)
            out = gather_grouped(images, index, None, None, 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (4, 9, 5, 6)


@pytest.mark.gpu
def test_cuda_zoo_epoch_syncs_do_not_grow_with_steps():
    """train_epoch on CUDA (gather, index and draws sent to the device, loss, optimizer step) waits
    for the device a fixed number of times per epoch (the mean loss sent back), not once per
    minibatch: the same count with 2 and with 8 steps. A tiny stand-in network isolates the loop."""
    from torch import nn

    from netspace_fast.zoo import DataOrder, make_optimizer, train_epoch

    class Tiny(nn.Module):
        def __init__(self, B, C, K):
            super().__init__()
            self.B = B
            self.w = nn.Parameter(torch.randn(B, C, K) * 0.1)

        def forward(self, x, grouped=True):  # x (n, B*C, H, W) -> (B, n, K)
            feat = x.mean((2, 3)).view(x.shape[0], self.B, -1).transpose(0, 1)
            return torch.bmm(feat, self.w)

    g = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 8, 8, generator=g).to(DEVICE)
    labels = torch.randint(0, 5, (64,), generator=g).to(DEVICE)

    def syncs(batch_size):
        net = Tiny(3, 3, 5).to(DEVICE)
        opt = make_optimizer(net, "multi", 0.01)
        order = DataOrder.from_seeds([1, 2, 3])
        train_epoch(net, opt, images, labels, order, batch_size, augment_pad=2, fill=[0.1, 0.2, 0.3])  # warm-up
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_epoch(net, opt, images, labels, order, batch_size, augment_pad=2, fill=[0.1, 0.2, 0.3])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]

    few, many = syncs(32), syncs(8)  # 2 and 8 steps
    assert len(many) == len(few), (few, many)
