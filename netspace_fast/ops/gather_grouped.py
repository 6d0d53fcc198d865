"""The op ``netspace_fast::gather_grouped``: the minibatch gather of batched zoo training (one pass
from the dataset into the grouped channels-last layout, crops and flips included; semantics and
reference in gather_grouped_ref.py).

One public name, one schema (csrc/registration.cpp), several kernels behind it:
- CPU: the C++ kernel (csrc/gather_grouped_cpu.cpp);
- CUDA: the Triton kernel (gather_grouped_triton.py), registered here as the op's CUDA kernel
  (there is no native CUDA kernel of this op);
- the pure-PyTorch reference where nothing else fits.
Here: the fake kernel (torch.compile), the registration, and the wrapper.

Per-minibatch cost of the checks: the wrapper checks types, shapes, dtypes and devices (free), and
the values of index and offsets only where they live on the CPU (free too; the C++ kernel checks
them again itself). On CUDA no value is read on the host, so a call never waits for the device;
the kernel masks out-of-range values instead (see gather_grouped_ref.py). Under torch.compile the
wrapper traces into one graph (``fullgraph=True``): the value check, data-dependent, is left to
the kernels there (the C++ kernel refuses, the reference and Triton mask).
"""

from __future__ import annotations

import torch

from .. import _native
from . import backend as _backend
from .gather_grouped_ref import check_gather_args, check_gather_values, gather_grouped_ref


def _fake(images, index, offsets, flips, pad, fill=None):
    B, n = index.shape
    M, C, H, W = images.shape
    return images.new_empty((n, B * C, H, W)).contiguous(memory_format=torch.channels_last)


def _triton_launcher():
    from .gather_grouped_triton import gather_grouped_forward  # Triton's import is slow: on first use

    return gather_grouped_forward


if _native.LOADED:
    torch.library.register_fake("netspace_fast::gather_grouped")(_fake)
    if not _native.has_kernel("gather_grouped", "CUDA") and _backend.triton_available():
        # no native CUDA kernel: the Triton kernel is the op's CUDA implementation
        torch.library.register_kernel("netspace_fast::gather_grouped", "cuda",
                                      lambda *args: _triton_launcher()(*args))


def gather_grouped(images: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor | None = None,
                   flips: torch.Tensor | None = None, pad: int = 0, fill=None, *,
                   backend: str | None = None) -> torch.Tensor:
    """(n, B*C, H, W) channels-last: instance b's sample index[b, j] at batch position j (see module doc)."""
    check_gather_args(images, index, offsets, flips, pad, fill)
    if index.device.type == "cpu" and not torch.compiler.is_compiling():
        check_gather_values(images, index, offsets, pad)  # CPU values: free to read (no device sync)
    fill = None if fill is None else [float(v) for v in fill]
    which = _backend.select("gather_grouped", images.device, backend)
    if which in _backend.NATIVE or (which == "triton" and _backend.triton_is_op_kernel("gather_grouped",
                                                                                       images.device)):
        return torch.ops.netspace_fast.gather_grouped(images, index, offsets, flips, pad, fill)
    if which == "triton":  # the launcher itself (CPU tensors under TRITON_INTERPRET=1, or no native build)
        return _triton_launcher()(images, index, offsets, flips, pad, fill)
    return gather_grouped_ref(images, index, offsets, flips, pad, fill)


__all__ = ["gather_grouped", "gather_grouped_ref"]
