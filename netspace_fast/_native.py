"""Loading of the compiled extension (`netspace_fast._C`) and what it provides.

When the extension does not load (not built, or built against another torch: an upgrade leaves
undefined symbols), every op falls back to its pure-PyTorch reference, which is correct but much
slower: that is never silent. A :class:`NativeFallbackWarning` with the reason is issued once, when
netspace_fast is imported, and :func:`netspace_fast.backends` reports it as ``native_error``.
"""

from __future__ import annotations

import warnings

import torch

#: every op of csrc/registration.cpp
OPS = ("pack_preps", "batched_conv2d", "batched_conv2d_backward", "batched_linear", "batched_linear_backward",
       "gather_grouped")


class NativeFallbackWarning(UserWarning):
    """The native extension did not load: netspace_fast runs on its slow pure-PyTorch references."""


def _fallback_message(error: str) -> str:
    return (f"netspace_fast: the native extension netspace_fast._C did not load ({error}); every op falls back "
            f"to its slow pure-PyTorch reference. Rebuild it for this torch {torch.__version__} "
            f"(pip install --no-build-isolation -e .); netspace_fast.backends()['native_error'] has the reason")


try:
    from netspace_fast import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

    LOADED = True
    LOAD_ERROR: str | None = None
except ImportError as exc:  # no (usable) native build: the pure-PyTorch references are used
    LOADED = False
    LOAD_ERROR = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if not globals().get("_WARNED", False):  # once per process, importlib.reload included
        warnings.warn(_fallback_message(LOAD_ERROR), NativeFallbackWarning, stacklevel=2)
        _WARNED = True


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
