"""netspace_fast: NetSpace (Learning the Space of Deep Models, ICPR 2022) as a fast PyTorch extension.

Layers, bottom up (one subpackage each; README "Layout"):
:mod:`netspace_fast.ops` (the ops: C++/CUDA/Triton kernels behind one contract), :mod:`netspace_fast.archs`
(the zoo architectures), :mod:`netspace_fast.prep` (PReps: layouts, packing, BatchNorm folding),
:mod:`netspace_fast.engine` (B networks evaluated as one computation), :mod:`netspace_fast.zoo` (model
zoos), :mod:`netspace_fast.space` (NetSpace), :mod:`netspace_fast.cli` (the ``netspace`` command); :mod:`netspace_fast.settings` reads every
runtime setting, :mod:`netspace_fast.storage` writes files atomically.
"""

from . import archs, space
from .engine import batched_forward
from .ops.backend import backends
from .prep import LayoutEntry, PRepLayout, PRepPacker, fold_bn, load_prep, pack_preps, prep_shape, unpack_prep
from .settings import tune_malloc

__version__ = "0.1.0"

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
