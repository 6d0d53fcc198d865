"""The op `netspace_fast::pack_preps`: fused BatchNorm folding + PRep packing of B networks
(semantics in csrc/pack_preps.h; reference in pack_preps_ref.py).

One public name, one schema (csrc/registration.cpp), several kernels behind it:
- CPU: the C++ kernel (csrc/pack_preps_cpu.cpp);
- CUDA: the native CUDA kernel (csrc/pack_preps_cuda.cu); in a build without it, the Triton kernel
  (pack_preps_triton.py) is registered as the op's CUDA kernel instead;
- the pure-PyTorch reference (pack_preps_ref.py) where nothing else fits.
:func:`pack_preps` runs the backend chosen by :func:`netspace_fast.ops.backend.select`; asking for
``backend="triton"`` where a native kernel exists (tests, benchmarks, CPU tensors under
TRITON_INTERPRET=1) runs the Triton launcher through the same autograd formula.
Here: the fake kernel (torch.compile), the autograd formula, and that wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _native
from . import backend as _backend
from .pack_preps_ref import COPY, FOLD_B, FOLD_W, SEG_FIELDS, pack_preps_reference, segments

# ---------------------------------------------------------------------------------------------
# autograd: the gradient of each segment written with torch ops (so it is itself differentiable)


def _setup_context(ctx, inputs, output):
    tensors, plan, eps, num_nets, rows, width, _check = inputs
    ctx.plan, ctx.eps, ctx.num_nets = list(plan), list(eps), num_nets
    ctx.needs = [t.requires_grad for t in tensors]
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad):
    tensors = ctx.saved_tensors
    B = ctx.num_nets
    T = len(tensors) // B if B else 0
    grads: list[torch.Tensor | None] = [None] * len(tensors)
    if B == 0:
        return grads, None, None, None, None, None, None

    def acc(i: int, g: torch.Tensor) -> None:
        if not ctx.needs[i]:
            return
        g = g.reshape(tensors[i].shape)
        grads[i] = g if grads[i] is None else grads[i] + g

    flat = grad.reshape(B, -1)
    offset = 0
    for (kind, numel, *idx), eps in zip(segments(ctx.plan), ctx.eps):
        for b in range(B):
            g = flat[b, offset:offset + numel]
            base = b * T
            if kind == COPY:
                acc(base + idx[0], g)
                continue
            # out = f(scale) with scale = gamma * rstd, rstd = (var + eps)^(-1/2)
            if kind == FOLD_W:
                w, gi, vi = tensors[base + idx[0]], idx[1], idx[2]
            else:
                gi, vi = idx[1], idx[4]
            gamma, var = tensors[base + gi].reshape(-1), tensors[base + vi].reshape(-1)
            rstd = torch.rsqrt(var + eps)
            scale = gamma * rstd
            if kind == FOLD_W:
                g2 = g.reshape(idx[3], -1)
                acc(base + idx[0], g2 * scale[:, None])
                dscale = (g2 * w.reshape(idx[3], -1)).sum(1)
            else:
                bias = tensors[base + idx[0]].reshape(-1) if idx[0] >= 0 else None
                mean = tensors[base + idx[3]].reshape(-1)
                if bias is not None:
                    acc(base + idx[0], g * scale)
                acc(base + idx[3], -g * scale)
                acc(base + idx[2], g)
                dscale = g * ((bias if bias is not None else 0.0) - mean)
            acc(base + gi, dscale * rstd)
            acc(base + vi, dscale * gamma * (-0.5) * rstd ** 3)
        offset += numel
    return grads, None, None, None, None, None, None


def _fake(tensors, plan, eps, num_nets, rows, width, check_finite):
    # the Meta kernel also runs when one real tensor is mixed with meta ones: refuse that here
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors: expected every parameter on one device, got {sorted(map(str, devices))}")
    torch._check(num_nets >= 0)
    torch._check(rows >= 0)
    torch._check(width > 0)
    torch._check(len(plan) % SEG_FIELDS == 0)
    if len(tensors):
        return tensors[0].new_empty((num_nets, rows, width))
    return torch.empty((num_nets, rows, width), dtype=torch.float32)



class _LauncherPack(torch.autograd.Function):
    """A kernel called directly (the Triton launcher where a native kernel holds the op's dispatch
    key), with the op's own autograd formula."""

    @staticmethod
    def forward(launcher, plan, eps, num_nets, rows, width, check_finite, *tensors):
        return launcher(list(tensors), plan, eps, num_nets, rows, width, check_finite)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, plan, eps, num_nets, rows, width, check_finite, *tensors = inputs
        _setup_context(ctx, (tensors, plan, eps, num_nets, rows, width, check_finite), output)

    @staticmethod
    def backward(ctx, grad):
        grads = _backward(ctx, grad)[0]
        return (None,) * 7 + tuple(grads)


def _triton_launcher():
    from .pack_preps_triton import pack_preps_forward

    return pack_preps_forward


if _native.LOADED:
    torch.library.register_fake("netspace_fast::pack_preps")(_fake)
    torch.library.register_autograd("netspace_fast::pack_preps", _backward, setup_context=_setup_context)
    if not _native.has_kernel("pack_preps", "CUDA") and _backend.triton_available():
        # no native CUDA kernel in this build: the Triton kernel is the op's CUDA implementation
        torch.library.register_kernel("netspace_fast::pack_preps", "cuda",
                                      lambda *args: _triton_launcher()(*args))


def pack_preps(tensors: Sequence[torch.Tensor], plan: Sequence[int], eps: Sequence[float], num_nets: int, rows: int,
               width: int, check_finite: bool = False, backend: str | None = None) -> torch.Tensor:
    """Run the op on the backend chosen for the tensors' device (see netspace_fast.ops.backend).

    Every backend is differentiable with respect to ``tensors``: where one of them requires grad
    the output is not a leaf, so ``out.requires_grad_()`` leaves ``out.grad`` None; a PRep batch
    to differentiate with respect to is ``out.detach().requires_grad_()``.
    """
    if num_nets == 0:  # no tensor argument: the dispatcher could not pick a kernel; nothing to launch
        return pack_preps_reference(tensors, plan, eps, num_nets, rows, width, check_finite)
    device = tensors[0].device if len(tensors) else torch.device("cpu")
    # before any dispatch: the dispatcher would route a CPU/CUDA mix to the CUDA kernel
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors: expected every parameter on one device, got {sorted(map(str, devices))}")
    plan, eps = list(plan), [float(e) for e in eps]
    which = _backend.select("pack_preps", device, backend)
    if which in _backend.NATIVE or (which == "triton" and _backend.triton_is_op_kernel("pack_preps", device)):
        return torch.ops.netspace_fast.pack_preps(list(tensors), plan, eps, num_nets, rows, width, check_finite)
    if which == "triton":
        return _LauncherPack.apply(_triton_launcher(), plan, eps, num_nets, rows, width, check_finite, *tensors)
    return pack_preps_reference(tensors, plan, eps, num_nets, rows, width, check_finite)


__all__ = ["COPY", "FOLD_B", "FOLD_W", "SEG_FIELDS", "pack_preps", "pack_preps_reference"]
