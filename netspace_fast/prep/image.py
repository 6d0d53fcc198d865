"""PReps as images (seed Sec. VII): parameters laid out in a near-square image, a standard
colormap, the colour range clipped to the 1st-99th percentiles."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch


def prep_image(prep: torch.Tensor, num_params: int | None = None) -> np.ndarray:
    """The first ``num_params`` values of ``prep`` (default: all) as a near-square 2-D array (NaN padded)."""
    if not isinstance(prep, torch.Tensor):
        raise TypeError(f"prep: expected a Tensor, got {type(prep).__name__}")
    if prep.dim() != 2:
        raise ValueError(f"prep: expected one PRep of shape (H, W), got shape {tuple(prep.shape)}")
    values = prep.detach().reshape(-1).float().cpu().numpy()
    n = values.size if num_params is None else int(num_params)
    if not 0 < n <= values.size:
        raise ValueError(f"num_params: expected 1..{values.size}, got {num_params}")
    side = math.ceil(math.sqrt(n))
    rows = math.ceil(n / side)
    img = np.full(rows * side, np.nan, dtype=np.float32)
    img[:n] = values[:n]
    return img.reshape(rows, side)


def save_prep_png(prep: torch.Tensor, path: str | os.PathLike, num_params: int | None = None,
                  cmap: str = "viridis") -> str:
    """Write ``prep`` as a PNG image; returns the path. The file is written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    img = prep_image(prep, num_params)
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    from ..storage import atomic_write_bytes

    path = os.fspath(path)
    buf = io.BytesIO()
    plt.imsave(buf, np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=hi, format="png")
    atomic_write_bytes(path, buf.getvalue())  # the storage module's temp name, fsync, replace
    return path
