"""Loading of the compiled extension (`netspace_fast._C`) and what it provides."""

from __future__ import annotations

import torch

try:
    from netspace_fast import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

    LOADED = True
    LOAD_ERROR: str | None = None
except ImportError as exc:  # no native build: the pure-PyTorch references are used
    LOADED = False
    LOAD_ERROR = str(exc)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the native op ``netspace_fast::op`` has a kernel for ``dispatch_key`` (CPU, CUDA)."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"netspace_fast::{op}", dispatch_key)
