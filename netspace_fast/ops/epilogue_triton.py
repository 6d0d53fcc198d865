"""Triton kernels of the conv epilogue ops ``netspace_fast::conv_epilogue`` / ``conv_epilogue_backward``
(their CUDA kernels; semantics and reference in epilogue_ref.py, registration in epilogue.py).

Both kernels are 1-D over the tensor's memory, one program per BLOCK consecutive elements:

- ``_epilogue_forward_kernel``: pre = (z + bias[c]) + residual, y = act(pre); writes y and, for
  sin only, pre: one read of z (and residual), one or two writes, one launch.
- ``_epilogue_backward_kernel``: grad_z = grad_y * act'(.) (LeakyReLU from the sign of y, sin from
  pre, none a copy): one launch.

Layout: z must be dense (non-overlapping and dense: contiguous, channels_last, or any permutation
of those; ValueError otherwise), so its elements are exactly the ``z.numel()`` memory locations
from ``z.data_ptr()``, and y, pre are ``torch.empty_like(z)`` (the same strides). The channel of
the element at memory offset o is ``(o // z.stride(1)) % C`` in every dense layout (the dims
with a smaller stride than dim 1 span less than ``z.stride(1)``, those with a larger one are
multiples of ``C * z.stride(1)``). residual is first given z's exact strides (copied only if its
strides differ); in the backward, grad_y, y and pre are given the strides of
``torch.empty_like(y)``, grad_z's layout. Offsets are int64; the channel arithmetic runs in int32
when every offset fits (cheaper divisions on GPUs). Every load and store is masked, so nothing
outside the tensors is touched for any size; 0 elements launch nothing.

Arithmetic is that of the reference, operation for operation: (z + bias) + residual in the tensor's
dtype, LeakyReLU as ``pre > 0 ? pre : pre * 0.01``, sin(30 pre) and 30 cos(30 pre). float32 and
float64 are both supported (the dtype of z; float64 computes in float64, so the op's float64
gradcheck runs through the Triton route too). In float32, sin and cos first reduce their argument
to [-pi, pi] (Cody-Waite, ``batched_layers_triton._reduce_2pi``: the same sin as the batched layer
kernels), so a fast hardware sin stays accurate for large arguments; float64 calls the library
sin / cos directly (no reduction: the float32 split of 2 pi is not exact to float64 precision).
The constants 0.01 and 30.0 are materialized in the computation's dtype (0.01 is the float64 0.01
for float64 tensors, 0.01 rounded to float32 for float32 ones: what torch uses).

Runs on CUDA tensors compiled, and on CPU tensors under ``TRITON_INTERPRET=1`` (set before triton
is imported): the tests' and the CPU rehearsal's route.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .. import settings
from .batched_layers_triton import _reduce_2pi
from .epilogue_ref import (ACT_LEAKY, ACT_NONE, ACT_SIN, LEAKY_SLOPE, SIN_W0, check_epilogue_args,
                           check_epilogue_backward_args, is_dense)

# the kernels write these constants as literals (0.01, 30.0)
assert LEAKY_SLOPE == 0.01 and SIN_W0 == 30.0, "update the literals in the epilogue kernels"

BLOCK = 1024
_INT32_MAX = 2 ** 31 - 1

__all__ = ["BLOCK", "epilogue_backward", "epilogue_forward"]


@triton.jit
def _angle(p, FP64: tl.constexpr):
    """30 p, reduced to [-pi, pi] in float32."""
    t = p * 30.0
    if not FP64:
        t = _reduce_2pi(t)
    return t


@triton.jit
def _epilogue_forward_kernel(z_ptr, b_ptr, r_ptr, y_ptr, pre_ptr, numel, C, S1,
                             ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                             STORE_PRE: tl.constexpr, FP64: tl.constexpr, INDEX32: tl.constexpr,
                             BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    v = tl.load(z_ptr + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        if INDEX32:
            c = (offs.to(tl.int32) // S1) % C
        else:
            c = (offs // S1) % C
        v = v + tl.load(b_ptr + c, mask=mask, other=0.0)
    if HAS_RES:
        v = v + tl.load(r_ptr + offs, mask=mask, other=0.0)
    if STORE_PRE:
        tl.store(pre_ptr + offs, v, mask=mask)
    if ACT == 1:
        v = tl.where(v > 0, v, v * 0.01)
    elif ACT == 2:
        v = tl.sin(_angle(v, FP64))
    tl.store(y_ptr + offs, v, mask=mask)


@triton.jit
def _epilogue_backward_kernel(gy_ptr, y_ptr, pre_ptr, gz_ptr, numel, ACT: tl.constexpr, FP64: tl.constexpr,
                              BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(gy_ptr + offs, mask=mask, other=0.0)
    if ACT == 1:
        y = tl.load(y_ptr + offs, mask=mask, other=0.0)
        g = tl.where(y > 0, g, g * 0.01)
    elif ACT == 2:
        p = tl.load(pre_ptr + offs, mask=mask, other=0.0)
        g = g * (30.0 * tl.cos(_angle(p, FP64)))
    tl.store(gz_ptr + offs, g, mask=mask)


# ------------------------------------------------------------------------------------------------
# launchers


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not (t.device.type == "cpu" and _interpreted()):
        raise ValueError(f"{name}: the Triton kernels need CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
                         f"got {t.device}")


def _strided_as(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """``t`` (same shape) with exactly ``strides``: itself when it has them, else a copy."""
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def _same_memory_order(t: torch.Tensor, strides: tuple[int, ...]) -> bool:
    """Whether element i of ``t`` sits at the same memory offset as with ``strides`` (dims of size 1
    excepted: their stride is never used)."""
    return all(n == 1 or a == b for n, a, b in zip(t.shape, t.stride(), strides))


def _matched(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    return t if _same_memory_order(t, strides) else _strided_as(t, strides)


def _grid(numel: int, block: int):
    return (triton.cdiv(numel, block),)


#: elements per program in the GPU program's rehearsal on CPU (``NETSPACE_GPU_REHEARSAL=1``): the
#: interpreter's cost is per program, and an elementwise kernel computes the same values whatever
#: its block, so whole networks run interpreted within seconds
REHEARSAL_BLOCK = 1 << 16


def _block(device: torch.device, block: int | None) -> int:
    if block is not None:
        return block
    return REHEARSAL_BLOCK if device.type == "cpu" and settings.gpu_rehearsal() else BLOCK


def epilogue_forward(z: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                     act: int = ACT_NONE, *, index32: bool | None = None,
                     block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, pre) of ``conv_epilogue_ref`` in one launch; z must be dense (module doc). ``index32``
    forces the int32 (True) or int64 (False) channel arithmetic (default: int32 when every offset
    fits); ``block`` the elements per program (a power of 2; default :data:`BLOCK`, or
    :data:`REHEARSAL_BLOCK` in the rehearsal)."""
    check_epilogue_args(z, bias, residual, act)
    _check_device("z", z)
    block = _block(z.device, block)
    if not is_dense(z):
        raise ValueError(f"z: the Triton kernel needs a dense tensor (non-overlapping and dense: contiguous, "
                         f"channels_last or another permutation of a contiguous tensor), got shape "
                         f"{tuple(z.shape)} with strides {z.stride()}")
    y = torch.empty_like(z)
    pre = torch.empty_like(z) if act == ACT_SIN else z.new_empty((0,))
    numel = z.numel()
    if numel == 0:
        return y, pre
    C = z.shape[1]
    s1 = z.stride(1) if C > 1 else 1  # one channel: c = 0 whatever the stride of dim 1
    if index32 is None:
        index32 = numel + block <= _INT32_MAX
    elif index32 and numel + block > _INT32_MAX:
        raise ValueError(f"index32: {numel} elements do not fit int32 offsets")
    b = bias.contiguous() if bias is not None else z  # a placeholder pointer when absent
    r = _matched(residual, z.stride()) if residual is not None else z
    _epilogue_forward_kernel[_grid(numel, block)](
        z, b, r, y, pre if act == ACT_SIN else y, numel, C, s1,
        ACT=act, HAS_BIAS=bias is not None, HAS_RES=residual is not None, STORE_PRE=act == ACT_SIN,
        FP64=z.dtype == torch.float64, INDEX32=bool(index32), BLOCK=block)
    return y, pre


def epilogue_backward(grad_y: torch.Tensor, y: torch.Tensor, pre: torch.Tensor, act: int, *,
                      block: int | None = None) -> torch.Tensor:
    """grad_z of ``conv_epilogue_backward_ref`` in one launch (y's memory format, a new tensor)."""
    check_epilogue_backward_args(grad_y, y, pre, act)
    _check_device("grad_y", grad_y)
    block = _block(grad_y.device, block)
    gz = torch.empty_like(y)
    numel = gz.numel()
    if numel == 0:
        return gz
    strides = gz.stride()
    gy = _matched(grad_y, strides)
    if act == ACT_NONE and gy is not grad_y:
        return gy  # the layout copy is grad_z already
    yy = _matched(y, strides) if act == ACT_LEAKY else gy  # placeholder pointers when not read
    pp = _matched(pre, strides) if act == ACT_SIN else gy
    _epilogue_backward_kernel[_grid(numel, block)](gy, yy, pp, gz, numel, ACT=act, FP64=gz.dtype == torch.float64,
                                                  BLOCK=block)
    return gz
