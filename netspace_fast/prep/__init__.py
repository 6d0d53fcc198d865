"""The PRep core (seed Sec. II, VI): layouts (:mod:`.layout`), packing of B networks in one fused
call (:mod:`.pack`), BatchNorm folding (:mod:`.fold`) and PReps as images (:mod:`.image`)."""

from .fold import fold_bn
from .layout import LayoutEntry, PRepLayout, load_prep, prep_shape, unpack_prep
from .pack import PRepPacker, pack_preps

__all__ = ["LayoutEntry", "PRepLayout", "PRepPacker", "fold_bn", "load_prep", "pack_preps", "prep_shape", "unpack_prep"]
