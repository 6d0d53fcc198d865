"""What the two interpolations share, below both: ``netspace interpolate`` between networks
(:func:`netspace_fast.explore.interpolate`) and between SDF shapes
(:func:`netspace_fast.sdf.mesh.interpolate_shapes`) take ``steps`` by the same rule: an int from 2
(the two ends) up to a stated limit, above which the message says what the steps would need."""

from __future__ import annotations

__all__ = ["MAX_STEPS", "ROW_BYTES", "check_steps"]

#: the most steps of one interpolation between networks: each step is a network decoded and evaluated
#: in bounded chunks, and its row (about ``ROW_BYTES`` in memory, a CSV line and a plotted point) kept
MAX_STEPS = 100_000
ROW_BYTES = 1_000


def _size(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1e3:.1f} kB"


def check_steps(steps, *, limit: int = MAX_STEPS, step_bytes: int = ROW_BYTES, what: str = "a row") -> int:
    """``steps`` if it is an int from 2 (the two ends included) to ``limit``; a TypeError or a ValueError
    of one line otherwise, which above the limit says the memory the steps would need (``step_bytes``
    each, for ``what``)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps: expected an int >= 2, got {type(steps).__name__}")
    if steps < 2:
        raise ValueError(f"steps: expected an int >= 2 (the two ends included), got {steps}")
    if steps > limit:
        raise ValueError(f"steps: expected an int from 2 to {limit}, got {steps}: each step keeps {what} of about "
                         f"{_size(step_bytes)} in memory, {_size(float(steps) * step_bytes)} for {steps} steps")
    return steps
