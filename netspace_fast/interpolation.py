"""What the two interpolations share, below both: ``netspace interpolate`` between networks
(:func:`netspace_fast.explore.interpolate`) and between SDF shapes
(:func:`netspace_fast.sdf.mesh.interpolate_shapes`) take ``steps`` by the same rule."""

from __future__ import annotations

__all__ = ["check_steps"]


def check_steps(steps) -> int:
    """``steps`` if it is an int >= 2 (the two ends included); a TypeError or ValueError otherwise."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps: expected an int >= 2, got {type(steps).__name__}")
    if steps < 2:
        raise ValueError(f"steps: expected an int >= 2 (the two ends included), got {steps}")
    return steps
