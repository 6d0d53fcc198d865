"""netspace_fast: NetSpace (Learning the Space of Deep Models, ICPR 2022) as a fast PyTorch extension.

Public API of the PRep core: architectures (:mod:`netspace_fast.archs`), BatchNorm folding
(:func:`fold_bn`), PReps (:func:`prep_shape`, :class:`PRepLayout`, :func:`pack_preps`,
:func:`unpack_prep`, :func:`load_prep`) and :func:`backends` (what was compiled and is usable).
"""

from . import archs
from .backend import backends
from .batched import batched_forward
from .cpu_memory import tune_malloc
from .fold import fold_bn
from .prep import LayoutEntry, PRepLayout, load_prep, pack_preps, prep_shape, unpack_prep

__version__ = "0.1.0"

__all__ = [
    "LayoutEntry",
    "PRepLayout",
    "archs",
    "backends",
    "batched_forward",
    "fold_bn",
    "load_prep",
    "pack_preps",
    "prep_shape",
    "tune_malloc",
    "unpack_prep",
]
