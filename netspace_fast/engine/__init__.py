"""The batched engine: B networks of one architecture evaluated (forward and backward) as one
computation. :func:`batched_forward` takes the weights from a PRep batch; the zoo trainer
(:mod:`netspace_fast.zoo.model`) runs the same per-layer layout plan (:mod:`.layout`) on stacked
trainable parameters. The grouped executor in :mod:`.executor` and :mod:`.cpu`; on CUDA the GPU
program (:mod:`.gpu`: cuDNN grouped convolutions, fused epilogues, CUDA graphs of :mod:`.graphs`),
rehearsed on CPU under ``NETSPACE_GPU_REHEARSAL=1``; gradient bookkeeping in :mod:`.grads`."""

from .batched import batched_forward, batched_forward_reference
from .calls import CPU_IMAGES_PER_CALL, CPU_MODULE_IMAGES_PER_CALL, images_per_call, module_logits

__all__ = ["CPU_IMAGES_PER_CALL", "CPU_MODULE_IMAGES_PER_CALL", "batched_forward", "batched_forward_reference",
           "images_per_call", "module_logits"]
