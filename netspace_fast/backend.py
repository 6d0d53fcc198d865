"""Backend selection, in one place.

Each op has up to four implementations: the native C++ CPU kernel ('cpp'), the native CUDA kernel
('cuda'), a Triton kernel ('triton', GPU; on CPU only under TRITON_INTERPRET=1) and the
pure-PyTorch reference ('torch', the fallback and the oracle of the tests). ``select`` picks one
from the tensors' device and what was built; the NETSPACE_BACKEND environment variable (or the
``backend=`` argument of an op) overrides it.
"""

from __future__ import annotations

import functools
import os

import torch

from . import _native

BACKENDS = ("cpp", "cuda", "triton", "torch")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton ships with torch on Linux
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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


def select(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that runs ``op`` for tensors on ``device``."""
    choice = backend or os.environ.get("NETSPACE_BACKEND", "auto")
    if choice not in BACKENDS + ("auto",):
        raise ValueError(f"backend: expected one of {BACKENDS + ('auto',)}, got {choice!r}")
    if choice != "auto":
        if choice == "cpp" and not (device.type == "cpu" and _native.has_kernel(op, "CPU")):
            raise ValueError(f"backend: 'cpp' needs CPU tensors and the native build; got {device} tensors, "
                             f"native CPU kernel {'present' if _native.has_kernel(op, 'CPU') else 'missing'}")
        if choice == "cuda" and not (device.type == "cuda" and _native.has_kernel(op, "CUDA")):
            raise ValueError(f"backend: 'cuda' needs CUDA tensors and the native CUDA build; got {device} tensors, "
                             f"native CUDA kernel {'present' if _native.has_kernel(op, 'CUDA') else 'missing'}")
        if choice == "triton" and not (triton_available() and (device.type == "cuda" or triton_interpreted())):
            raise ValueError(f"backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); got {device}")
        return choice
    if device.type == "cpu":
        return "cpp" if _native.has_kernel(op, "CPU") else "torch"
    if device.type == "cuda":
        if _native.has_kernel(op, "CUDA"):
            return "cuda"
        return "triton" if triton_available() else "torch"
    return "torch"
