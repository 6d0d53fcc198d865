"""Loading of the compiled extension (`netspace_fast._C`) and what it provides."""

from __future__ import annotations

import torch

#: every op of csrc/registration.cpp
OPS = ("pack_preps", "batched_conv2d", "batched_conv2d_backward", "batched_linear", "batched_linear_backward",
       "gather_grouped")

try:
    from netspace_fast import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

    LOADED = True
    LOAD_ERROR: str | None = None
except ImportError as exc:  # no native build: the pure-PyTorch references are used
    LOADED = False
    LOAD_ERROR = str(exc)


def _query(op: str, dispatch_key: str) -> bool:
    return LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(f"netspace_fast::{op}", dispatch_key)


# What the native build registered, read before any Python registration (the ops modules register
# Triton kernels for the CUDA key of ops that have no native CUDA kernel).
_NATIVE = {(op, key): _query(op, key) for op in OPS for key in ("CPU", "CUDA")}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the NATIVE build has a kernel of ``netspace_fast::op`` for ``dispatch_key`` (CPU, CUDA)."""
    if (op, dispatch_key) in _NATIVE:
        return _NATIVE[(op, dispatch_key)]
    return _query(op, dispatch_key)
