"""The batched engine: B networks of one architecture evaluated (forward and backward) as one
computation. :func:`batched_forward` takes the weights from a PRep batch; the zoo trainer
(:mod:`netspace_fast.zoo.model`) runs the same per-layer layout plan (:mod:`.layout`) on stacked
trainable parameters. CPU execution in :mod:`.cpu`, the GPU path in :mod:`.batched` (the layer
ops' Triton kernels), gradient bookkeeping in :mod:`.grads`."""

from .batched import batched_forward, batched_forward_reference

__all__ = ["batched_forward", "batched_forward_reference"]
