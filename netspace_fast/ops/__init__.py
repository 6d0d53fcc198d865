"""Thin wrappers over the registered ops, their fake and autograd kernels and their references."""

from .pack import FOLD_B, FOLD_W, COPY, pack_op, pack_preps_reference

__all__ = ["COPY", "FOLD_B", "FOLD_W", "pack_op", "pack_preps_reference"]
