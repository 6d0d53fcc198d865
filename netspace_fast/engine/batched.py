"""Batched functional evaluation: B networks of one architecture, forward and backward, in one call.

``batched_forward(spec, preps, x)`` runs the BN-free network ``spec`` with each of the B PReps in
``preps`` on ``x`` (shared by all networks, or one batch per network) and is differentiable with
respect to ``preps`` and ``x``. The whole network is one autograd node, weights are read straight
out of the PRep batch, and backward writes every layer's weight gradient into ONE (B, P) gradient
buffer, so no per-parameter-view gradient buffers are ever materialized. CPU: each conv one grouped
oneDNN call or one call per network, as measured fastest per layer (:mod:`netspace_fast.engine.cpu`,
:mod:`netspace_fast.engine.layout`). CUDA: the GPU program (:mod:`netspace_fast.engine.gpu`: cuDNN
grouped convs, fused epilogues, CUDA graphs; rehearsed on CPU under ``NETSPACE_GPU_REHEARSAL=1``);
with ``backend='triton'`` every layer as the batched Triton layer ops (:class:`_BatchedNet`);
elsewhere, or with ``backend='torch'``: the per-network reference loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..archs import ArchSpec, spec_forward
from ..ops import backend as _backend
from ..ops.batched_layers import cuda_layer_backward, cuda_layer_forward
from ..ops.batched_layers_ref import ACT_LEAKY, ACT_SIN
from ..prep.layout import PRepLayout, prep_shape, unpack_prep
from .cpu import GroupedNet
from .general import prep_general_forward
from .gpu import gpu_forward, uses_gpu_program
from .program import compile_program
from .grads import ValueGrads, prep_grad_buffer

__all__ = ["batched_forward", "batched_forward_reference"]


def _check_inputs(spec: ArchSpec, preps: torch.Tensor, x: torch.Tensor) -> tuple[bool, int, int]:
    """Validates everything before any kernel runs; returns (x_shared, B, N)."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"spec: expected an ArchSpec (netspace_fast.archs.spec), got {type(spec).__name__}")
    if not isinstance(preps, torch.Tensor):
        raise TypeError(f"preps: expected a Tensor (B, H, W), got {type(preps).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
    if preps.dim() != 3:
        raise ValueError(f"preps: expected a PRep batch (B, H, W), got shape {tuple(preps.shape)}")
    B, H, W = preps.shape
    if W < 8 or W % 8:
        raise ValueError(f"preps: expected a width that is a positive multiple of 8, got {W}")
    min_h, _ = prep_shape(spec.num_params, W)
    if H < min_h:
        raise ValueError(f"preps: {spec.name} has {spec.num_params} parameters and needs at least {min_h} rows at "
                         f"width {W}, got shape {tuple(preps.shape)}")
    if preps.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"preps: expected float32 (float64 is accepted for gradcheck), got {preps.dtype}")
    if x.dtype != preps.dtype:
        raise TypeError(f"x: expected the dtype of preps ({preps.dtype}), got {x.dtype}")
    if x.device != preps.device:
        raise ValueError(f"x: expected the device of preps ({preps.device}), got {x.device}")
    feat = tuple(spec.input_shape)
    nd = len(feat)
    expect = f"(N, {', '.join(map(str, feat))}) or (B={B}, N, {', '.join(map(str, feat))})"
    if x.dim() == nd + 1 and tuple(x.shape[1:]) == feat:
        return True, B, x.shape[0]
    if x.dim() == nd + 2 and tuple(x.shape[2:]) == feat:
        if x.shape[0] != B:
            raise ValueError(f"x: per-network input has leading dim {x.shape[0]}, expected B = {B} (the number of "
                             f"PReps)")
        return False, B, x.shape[1]
    raise ValueError(f"x: expected {expect} for {spec.name}"
                     f"{'/' + spec.dataset if spec.dataset else ''}, got shape {tuple(x.shape)}")


def batched_forward_reference(spec: ArchSpec, preps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The per-network loop (the original code's way): unpack views, run each network, stack."""
    shared, B, N = _check_inputs(spec, preps, x)
    layout = PRepLayout.for_spec(spec, preps.shape[2], preps.shape[1])
    views = unpack_prep(preps, layout)
    outs = [spec_forward(spec, {n: v[b] for n, v in views.items()}, x if shared else x[b]) for b in range(B)]
    if not outs:
        return preps.new_empty((0, N, spec.num_outputs))
    return torch.stack(outs)


def _lead(v: torch.Tensor, feat_dims: int) -> tuple[int, ...]:
    return tuple(v.shape[:v.dim() - feat_dims])


class _BatchedNet(torch.autograd.Function):
    """The GPU whole-network path: one batched Triton layer op per layer, one PRep gradient.

    Every tensor the backward reads (x and the other layer inputs, y where LeakyReLU's backward
    needs it, z for sin, the pool inputs) goes through ``save_for_backward``, so changing one in
    place after the forward (x, or the output) is autograd's version-counter error instead of a
    silently wrong gradient. Flatten keeps only its input's shape."""

    @staticmethod
    def forward(ctx, preps2d, x, program):
        values = {0: x}
        tensors = [preps2d]
        slots = []  # per step: indices into the saved tensors of (h, y, z), -1 for none; or h's shape

        def keep(t) -> int:
            if t is None:
                return -1
            tensors.append(t)
            return len(tensors) - 1

        for kind, src, dst, residual, act, geom in program:
            h = values[src]
            if kind in ("conv", "linear"):
                res = values[residual] if residual is not None else None
                y, z = cuda_layer_forward(kind, h, preps2d, geom, act, res)
                slots.append((keep(h), keep(y if act == ACT_LEAKY else None),
                              keep(z if (act == ACT_SIN and z is not None and z.numel()) else None)))
            elif kind == "avgpool":
                lead = _lead(h, 3)
                y = F.avg_pool2d(h.reshape(-1, *h.shape[-3:]), geom[0], geom[1])
                y = y.reshape(*lead, *y.shape[1:])
                slots.append((keep(h), -1, -1))
            else:  # flatten the per-sample features
                lead = _lead(h, 3 if h.dim() >= 4 else 1)
                y = h.reshape(*lead, -1)
                slots.append(tuple(h.shape))
            values[dst] = y
        ctx.program, ctx.slots = program, slots
        ctx.save_for_backward(*tensors)
        return values[program[-1][2]]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        tensors = ctx.saved_tensors
        preps2d = tensors[0]
        program, slots = ctx.program, ctx.slots
        grad_preps = prep_grad_buffer(preps2d)
        need_x = ctx.needs_input_grad[1]
        grads = ValueGrads(program[-1][2], grad_out)
        acc = grads.add

        def get(i: int):
            return tensors[i] if i >= 0 else None

        for (kind, src, dst, residual, act, geom), slot in zip(reversed(program), reversed(slots)):
            g = grads.pop(dst, None)
            if g is None:
                continue
            if kind in ("conv", "linear"):
                h, y, z = get(slot[0]), get(slot[1]), get(slot[2])
                want_x = src != 0 or need_x  # the network input's gradient only when x requires it
                gx, gz = cuda_layer_backward(kind, g, h, preps2d, y, z, geom, act, grad_preps, want_x)
                if want_x:
                    acc(src, gx)
                if residual is not None:
                    acc(residual, gz)
            elif kind == "avgpool":
                h = get(slot[0])
                lead = _lead(h, 3)
                h4 = h.reshape(-1, *h.shape[-3:])
                gi = torch.ops.aten.avg_pool2d_backward(g.reshape(-1, *g.shape[-3:]), h4, [geom[0]] * 2,
                                                        [geom[1]] * 2, [0, 0], False, True, None)
                acc(src, gi.reshape(*lead, *gi.shape[1:]))
            else:
                acc(src, g.reshape(slot))
        gx = grads.get(0) if need_x else None
        return grad_preps, gx, None


def batched_forward(spec: ArchSpec, preps: torch.Tensor, x: torch.Tensor, *,
                    backend: str | None = None) -> torch.Tensor:
    """Outputs (B, N, out) of the B networks in ``preps`` (B, H, W) on ``x``.

    ``x`` is (N, ...) shared by every network (NetSpace training) or (B, N, ...) one batch per
    network (zoo training). ``preps`` may be taller than the layout needs (multi-architecture PReps
    share one height). Result ``[b]`` equals the BN-free module loaded with ``preps[b]`` applied to
    ``x`` (or ``x[b]``); differentiable with respect to ``preps`` and ``x``.
    """
    shared, B, N = _check_inputs(spec, preps, x)
    which = _backend.select("batched_conv2d", preps.device, backend)
    if which == "torch" or B == 0 or N == 0:
        return batched_forward_reference(spec, preps, x)
    if uses_gpu_program(preps.device, which, backend):  # CUDA (or its rehearsal on CPU): engine/gpu.py
        return gpu_forward(spec, preps, x, shared)
    if not spec.fast:  # user architectures' layers outside the fused layer ops: the general engine
        return prep_general_forward(spec, preps, x, shared)
    preps2d = preps.reshape(B, -1)
    if preps2d.stride(1) != 1:
        preps2d = preps2d.contiguous()
    program = compile_program(spec, preps.shape[2])
    if which == "cpp":  # CPU: grouped or per-network convs per layer (netspace_fast.engine.cpu)
        return GroupedNet.apply(preps2d, x, program, shared)
    # "triton" asked for: the layer ops' Triton kernels (on CPU tensors under TRITON_INTERPRET=1)
    return _BatchedNet.apply(preps2d, x, program)
