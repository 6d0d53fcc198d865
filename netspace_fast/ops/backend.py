"""Backend selection for every op, in one place.

Each op has up to four implementations: the native C++ CPU kernel ('cpp'), the native CUDA kernel
('cuda'), a Triton kernel ('triton': on CUDA tensors, and on CPU tensors only under
TRITON_INTERPRET=1) and the pure-PyTorch reference ('torch', the fallback and the tests' oracle).
Where an op has no native CUDA kernel, its Triton kernel is registered as the op's CUDA kernel
(one op, one schema): :func:`triton_is_op_kernel`.

:func:`select` picks one from the tensors' device and what was built. The ``backend=`` argument
of an op is a demand (an impossible one is a ValueError); ``NETSPACE_BACKEND``
(:mod:`netspace_fast.settings`) is a preference: an op that has no such kernel for the tensors'
device falls back to its automatic choice.
"""

from __future__ import annotations

import functools
import os

import torch

from .. import _native, settings

BACKENDS = ("cpp", "cuda", "triton", "torch")
NATIVE = ("cpp", "cuda")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton ships with torch on Linux
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_is_op_kernel(op: str, device: torch.device) -> bool:
    """Whether the op's dispatcher kernel for ``device`` is its Triton kernel (CUDA tensors, no
    native CUDA kernel in this build)."""
    return device.type == "cuda" and _native.LOADED and not _native.has_kernel(op, "CUDA") and triton_available()


def backends() -> dict[str, dict[str, bool]]:
    """What was compiled and what is usable on this machine, per backend.

    ``{"cpu": {...}, "cuda": {...}, "triton": {...}}`` with keys ``compiled`` and ``usable``; plus
    ``native_error`` when the extension did not load. A silent CPU-only build shows up here as
    ``cuda.compiled == False``.
    """
    cuda_ok = torch.cuda.is_available()
    report = {
        "cpu": {"compiled": _native.has_kernel("pack_preps", "CPU"), "usable": _native.has_kernel("pack_preps", "CPU")},
        "cuda": {"compiled": _native.has_kernel("pack_preps", "CUDA"),
                 "usable": _native.has_kernel("pack_preps", "CUDA") and cuda_ok},
        "triton": {"compiled": triton_available(), "usable": triton_available() and (cuda_ok or triton_interpreted())},
    }
    if not _native.LOADED:
        report["native_error"] = _native.LOAD_ERROR
    return report


def _fits(op: str, choice: str, device: torch.device) -> str | None:
    """None if ``choice`` can run ``op`` on ``device`` tensors, else why not."""
    if choice == "cpp" and not (device.type == "cpu" and _native.has_kernel(op, "CPU")):
        return (f"'cpp' needs CPU tensors and the native build; got {device} tensors, native CPU kernel of {op} "
                f"{'present' if _native.has_kernel(op, 'CPU') else 'missing'}")
    if choice == "cuda" and not (device.type == "cuda" and _native.has_kernel(op, "CUDA")):
        return (f"'cuda' needs CUDA tensors and a native CUDA kernel of {op}; got {device} tensors, native CUDA "
                f"kernel {'present' if _native.has_kernel(op, 'CUDA') else 'missing'}")
    if choice == "triton" and not (triton_available() and (device.type == "cuda" or triton_interpreted())):
        return f"'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); got {device}"
    return None


def _auto(op: str, device: torch.device) -> str:
    if device.type == "cpu":
        return "cpp" if _native.has_kernel(op, "CPU") else "torch"
    if device.type == "cuda":
        if _native.has_kernel(op, "CUDA"):
            return "cuda"
        return "triton" if triton_available() else "torch"
    return "torch"


def select(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that runs ``op`` for tensors on ``device``: the ``backend`` argument if given
    (a ValueError if it cannot run here), else NETSPACE_BACKEND if it can run here, else automatic."""
    if backend is not None:
        if backend not in BACKENDS + ("auto",):
            raise ValueError(f"backend: expected one of {BACKENDS + ('auto',)}, got {backend!r}")
        if backend == "auto":
            return _auto(op, device)
        why = _fits(op, backend, device)
        if why is not None:
            raise ValueError(f"backend: {why}")
        return backend
    preferred = settings.backend()
    if preferred != "auto" and _fits(op, preferred, device) is None:
        return preferred
    return _auto(op, device)


__all__ = ["BACKENDS", "NATIVE", "backends", "select", "triton_available", "triton_interpreted", "triton_is_op_kernel"]
