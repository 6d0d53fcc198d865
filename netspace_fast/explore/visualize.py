"""Input and decoded PReps as images, side by side (``netspace visualize``; seed Sec. VII): each PRep's
parameters (the architecture's own count, in packing order) laid out in a near-square image
(:func:`netspace_fast.prep.image.prep_image`), one standard colormap (viridis), one colour range for
both panels clipped to the 1st-99th percentiles of their values; the test accuracies of both
networks (one batched call each) in the titles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..prep import PRepLayout
from ..prep.image import prep_image
from .common import accuracies, decode_batches, open_explorer, pyplot, save_figure, trim

__all__ = ["visualize"]


def visualize(run_dir, id: str, out, *, device: str = "cpu", cmap: str = "viridis") -> dict:
    """Write the PNG ``out`` with zoo instance ``id``'s input PRep and its decoded PRep. Returns
    ``{"path", "arch", "decoded_arch", "input_acc", "decoded_acc", "range"}``."""
    from ..outputs import check_output

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out: {str(out)!r} is a folder; expected a .png file path")
    check_output(out, folder=False, sub="images")  # never a run's or a zoo's own file
    ex = open_explorer(run_dir, device, what="visualize")
    e = ex.entry(id)
    spec_in = ex.space.specs[ex.arch_names.index(e["architecture"])]
    prep = ex.preps([id])
    z = ex.space.encode(prep)
    dec, cids = decode_batches(ex, z)
    spec_dec = ex.spec_of(int(cids[0]))
    x, y = ex.images("test")
    acc_in = float(accuracies(spec_in, prep, None, x, y)[0])
    acc_dec = float(accuracies(spec_dec, dec, None, x, y)[0])
    n_in = PRepLayout.for_spec(spec_in, ex.width).num_params
    n_dec = PRepLayout.for_spec(spec_dec, ex.width).num_params
    img_in = prep_image(trim(prep[0], spec_in), n_in)
    img_dec = prep_image(trim(dec[0], spec_dec), n_dec)
    vals = np.concatenate([img_in[np.isfinite(img_in)], img_dec[np.isfinite(img_dec)]])
    lo, hi = (float(v) for v in np.percentile(vals, [1, 99]))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    for ax, img, title in ((axes[0], img_in, f"input {id} ({spec_in.name}), test acc {acc_in:.4f}"),
                           (axes[1], img_dec, f"decoded ({spec_dec.name}), test acc {acc_dec:.4f}")):
        im = ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="parameter value (1st-99th percentile range)")
    fig.suptitle(f"PReps of {id}: {n_in} parameters, near-square layout", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out)
    return {"path": out, "arch": spec_in.name, "decoded_arch": spec_dec.name, "input_acc": acc_in,
            "decoded_acc": acc_dec, "range": (lo, hi)}
