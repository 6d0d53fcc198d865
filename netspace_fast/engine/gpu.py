"""The GPU program of the batched engine, and its rehearsal on CPU.

On CUDA tensors :func:`netspace_fast.batched_forward` and the zoo trainer run this program:

* convolutions through cuDNN, grouped over the B networks exactly as the CPU program does through
  oneDNN: ONE (N, B*C, H, W) channels-last tensor, a conv is ONE grouped call (a shared input: ONE
  ordinary conv with the B networks' filters stacked, B x C_out outputs); or per network, or grouped
  in NCHW, where the layout tuner measured on this GPU says so (:mod:`netspace_fast.engine.layout`:
  each candidate replayed from a CUDA graph, the first time a layer shape is seen, cached on disk
  per GPU model and torch version); cuDNN's autotuner by the one rule of
  :func:`netspace_fast.settings.cudnn_benchmark`;
* each conv's epilogue (bias, residual, LeakyReLU or sin(30x)) as ONE fused elementwise kernel
  (:func:`netspace_fast.ops.epilogue.conv_epilogue`), its backward likewise;
* linear layers through the batched linear op's Triton kernel (bias, residual and activation fused
  in it);
* fixed-shape calls replayed from CUDA graphs (:mod:`netspace_fast.engine.graphs`): a whole batched
  forward + backward is a handful of graph launches instead of hundreds of kernel launches;
* the backward as on CPU: one autograd node, every weight gradient written into ONE (B, P) PRep
  gradient, activations freed once used;
* a call without gradient (evaluation, teachers' logits) records nothing: each activation is
  dropped after its last use (:func:`netspace_fast.engine.executor.run`), so its peak memory, and
  that of its CUDA graph, is a few layers' activations.

``NETSPACE_BACKEND=triton`` (or ``backend="triton"``) runs the older program instead, every layer as
the batched layer ops' Triton kernel (:class:`netspace_fast.engine.batched._BatchedNet`);
``NETSPACE_CONV_LAYOUT`` forces a layout; ``NETSPACE_CUDA_GRAPHS=0`` turns graphs off. TF32 follows
torch's setting (cuDNN's ``torch.backends.cudnn.allow_tf32``, the Triton kernels'
:func:`netspace_fast.settings.tf32`).

The rehearsal: ``NETSPACE_GPU_REHEARSAL=1`` (with ``TRITON_INTERPRET=1``) sends CPU tensors through
this same program (the same Python: plan building, grouping, fusion boundaries, the graph
bookkeeping, the layout rule), with oneDNN in cuDNN's place and the Triton kernels interpreted, so
that every training and exploration command runs its CUDA code path in ``make test``; their
results match the CPU program's within float32 tolerance (tests/test_gpu_rehearsal.py).
"""

from __future__ import annotations

import torch

from .. import settings
from .cpu import FusedPRepWeights, GroupedNet
from .executor import run
from .general import prep_general_forward
from .graphs import ENGINE
from .program import compile_program

__all__ = ["gpu_forward", "gpu_program", "uses_gpu_program"]


def gpu_program(device: torch.device) -> bool:
    """Whether work on ``device`` runs the GPU program: CUDA tensors always; CPU tensors under
    ``NETSPACE_GPU_REHEARSAL=1`` (a ValueError without ``TRITON_INTERPRET=1``)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and settings.gpu_rehearsal()


def uses_gpu_program(device: torch.device, which: str, backend: str | None) -> bool:
    """Whether :func:`netspace_fast.batched_forward` runs the GPU program, given the backend ``which``
    that :func:`netspace_fast.ops.backend.select` chose and the caller's ``backend`` argument: on
    CUDA unless the Triton layer ops were asked for (argument or ``NETSPACE_BACKEND``); on CPU in
    the rehearsal unless a backend was demanded."""
    if device.type == "cuda":
        asked = backend if backend not in (None, "auto") else settings.backend()
        return which == "triton" and asked != "triton"
    return which == "cpp" and backend in (None, "auto") and gpu_program(device)


def gpu_forward(spec, preps: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """:func:`netspace_fast.batched_forward` on the GPU program (inputs already checked): one
    autograd node over the whole network, replayed from CUDA graphs for shapes seen before."""
    if not spec.fast:  # user architectures: the general engine (cuDNN grouped convs, batched GEMMs)
        return ENGINE.call(("batched_forward", spec, shared),
                           lambda p, xx: prep_general_forward(spec, p, xx, shared), (preps, x))
    B = preps.shape[0]
    preps2d = preps.reshape(B, -1)
    if preps2d.stride(1) != 1:
        preps2d = preps2d.contiguous()
    program = compile_program(spec, preps.shape[2])
    return ENGINE.call(("batched_forward", spec, shared, preps.shape[2]),
                       lambda p2, xx: _fast_forward(program, p2, xx, shared), (preps2d, x))


def _fast_forward(program, preps2d: torch.Tensor, x: torch.Tensor, shared: bool) -> torch.Tensor:
    """The fast engine's GPU program: one autograd node that records its backward's activations when
    a gradient is wanted; otherwise the executor without a record (values dropped after use)."""
    if torch.is_grad_enabled() and (preps2d.requires_grad or x.requires_grad):
        return GroupedNet.apply(preps2d, x, program, shared, True)
    out, _ = run(program, x, preps2d.shape[0], FusedPRepWeights(preps2d), shared=shared, fused=True)
    return out
