"""netspace_fast: NetSpace (Learning the Space of Deep Models, ICPR 2022) as a fast PyTorch extension.

Layers, bottom up (one subpackage each; README "Layout"):
:mod:`netspace_fast.ops` (the ops: C++/CUDA/Triton kernels behind one contract), :mod:`netspace_fast.archs`
(the zoo architectures), :mod:`netspace_fast.prep` (PReps: layouts, packing, BatchNorm folding),
:mod:`netspace_fast.engine` (B networks evaluated as one computation), :mod:`netspace_fast.zoo` (model
zoos), :mod:`netspace_fast.space` (NetSpace), :mod:`netspace_fast.cli` (the ``netspace`` command); :mod:`netspace_fast.settings` reads every
runtime setting, :mod:`netspace_fast.storage` writes files atomically.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> (module it lives in, attribute there; None: the module itself). Loaded on first
# access (module-level __getattr__), so importing the package (the ``netspace`` command line's
# ``--help`` and argument errors) does not import torch, Triton or the native kernels.
_LAZY: dict[str, tuple[str, str | None]] = {
    "LayoutEntry": (".prep", "LayoutEntry"),
    "PRepLayout": (".prep", "PRepLayout"),
    "PRepPacker": (".prep", "PRepPacker"),
    "archs": (".archs", None),
    "space": (".space", None),
    "backends": (".ops.backend", "backends"),
    "batched_forward": (".engine", "batched_forward"),
    "fold_bn": (".prep", "fold_bn"),
    "load_prep": (".prep", "load_prep"),
    "pack_preps": (".prep", "pack_preps"),
    "prep_shape": (".prep", "prep_shape"),
    "tune_malloc": (".settings", "tune_malloc"),
    "unpack_prep": (".prep", "unpack_prep"),
}

__all__ = [
    "LayoutEntry",
    "PRepLayout",
    "PRepPacker",
    "archs",
    "space",
    "backends",
    "batched_forward",
    "fold_bn",
    "load_prep",
    "pack_preps",
    "prep_shape",
    "tune_malloc",
    "unpack_prep",
]

if TYPE_CHECKING:  # what static tools see; at run time these come from __getattr__
    from . import archs, space
    from .engine import batched_forward
    from .ops.backend import backends
    from .prep import LayoutEntry, PRepLayout, PRepPacker, fold_bn, load_prep, pack_preps, prep_shape, unpack_prep
    from .settings import tune_malloc


def __getattr__(name: str):
    """A public name, imported from its home module on first access (then kept as an attribute)."""
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
