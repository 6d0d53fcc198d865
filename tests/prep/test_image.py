"""PReps as images (netspace_fast/prep/image.py, seed Sec. VII): the near-square layout of the
parameters, NaN padding, argument checks, and the PNG: its size, the colormap, the colour range
clipped to the 1st-99th percentiles of the parameters (padding excluded), the padding transparent,
and the atomic write. Pixels are read back with Pillow and compared with matplotlib's own colormap
lookup (what the colours should be, given the range the percentiles define)."""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.prep.image import prep_image, save_prep_png
from netspace_fast.storage import TMP_PREFIX


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()  # a valid PNG (chunks and CRCs)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def colour(v: float, cmap: str = "viridis") -> tuple[int, ...]:
    """The RGBA bytes matplotlib's colormap gives the normalized value ``v`` in [0, 1]."""
    return tuple(int(c) for c in matplotlib.colormaps[cmap](v, bytes=True))


# ---------------------------------------------------------------------------------------------
# prep_image: the layout


def test_layout_known_values():
    prep = torch.arange(1, 33, dtype=torch.float32).view(4, 8)
    img = prep_image(prep)  # 32 values: side ceil(sqrt(32)) = 6, 6 rows, 4 NaN at the end
    assert img.shape == (6, 6) and img.dtype == np.float32
    assert np.array_equal(img.reshape(-1)[:32], np.arange(1, 33, dtype=np.float32))
    assert np.isnan(img.reshape(-1)[32:]).all()
    assert img[0, 5] == 6 and img[1, 0] == 7  # row-major: the 7th value starts the second row
    img = prep_image(prep, num_params=30)  # side 6, 5 rows, no padding
    assert img.shape == (5, 6) and np.isfinite(img).all()
    assert np.array_equal(img, np.arange(1, 31, dtype=np.float32).reshape(5, 6))
    assert prep_image(prep, num_params=1).tolist() == [[1.0]]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 100, 101, 77706])
def test_near_square_shape(n):
    prep = torch.randn(-(-n // 8), 8)
    img = prep_image(prep, n)
    side = math.ceil(math.sqrt(n))
    assert img.shape == (math.ceil(n / side), side)
    assert img.shape[1] - img.shape[0] in (0, 1)  # near square: never more than one row short
    assert int(np.isfinite(img).sum()) == n and np.isnan(img.reshape(-1)[n:]).all()


def test_real_prep_holds_the_parameters_then_nan():
    """A ResNet8 PRep: the image is its 77,706 folded parameters (the padding of the PRep dropped)."""
    spec = archs.spec("resnet8")
    model = archs.build("resnet8", batchnorm=False)
    prep = nf.pack_preps(model, 1024)[0]
    img = prep_image(prep, spec.num_params)
    assert img.shape == (279, 279)  # ceil(sqrt(77706)) = 279, ceil(77706 / 279) = 279
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    assert np.array_equal(img.reshape(-1)[:spec.num_params], flat)
    assert np.isnan(img.reshape(-1)[spec.num_params:]).all()
    full = prep_image(prep)  # all 76 * 1024 = 77,824 values, the PRep's own zero padding included: 279 x 279
    assert full.shape == (279, 279) and (full.reshape(-1)[spec.num_params:77824] == 0).all()


def test_prep_image_input_checks():
    prep = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    img = prep_image(prep)  # detached, float32
    assert img.dtype == np.float32 and np.allclose(img.reshape(-1)[:32], prep.detach().reshape(-1).numpy())
    with pytest.raises(TypeError, match="prep"):
        prep_image(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="prep"):
        prep_image(torch.zeros(2, 4, 8))  # a batch
    with pytest.raises(ValueError, match="prep"):
        prep_image(torch.zeros(32))
    for bad in (0, -1, 33):
        with pytest.raises(ValueError, match="num_params"):
            prep_image(torch.zeros(4, 8), bad)


# ---------------------------------------------------------------------------------------------
# save_prep_png: the image file


def _ramp(outliers: bool) -> torch.Tensor:
    """Values 0, 1, ..., 100 (101 parameters) in a (13, 8) PRep. With linear interpolation their 1st
    and 99th percentiles are exactly 1 and 99, also when 0 and 100 are replaced by -1e6 and 1e6."""
    v = torch.arange(104, dtype=torch.float32)
    if outliers:
        v[0], v[100] = -1e6, 1e6
    return v.view(13, 8)


@pytest.mark.parametrize("outliers", [False, True], ids=["ramp", "outliers"])
def test_png_colours_clipped_to_percentiles(tmp_path, outliers):
    """Pixel value v gets colormap((v - 1) / 98): the range is [1st, 99th percentile] = [1, 99] of
    the 101 parameters (the 9 NaN padding pixels do not count, and are transparent); everything
    below (0, or -1e6) takes the lowest colour, everything above (100, or 1e6) the highest. Without
    the clipping, two outliers would squeeze every other value into one colour."""
    path = tmp_path / "prep.png"
    assert save_prep_png(_ramp(outliers), path, num_params=101) == str(path)
    px = read_png(path)
    assert px.shape == (10, 11, 4)  # side ceil(sqrt(101)) = 11, 10 rows
    flat = px.reshape(-1, 4)
    for v in (1, 2, 25, 50, 73, 98, 99):
        assert tuple(flat[v]) == colour((v - 1) / 98), v
    assert tuple(flat[0]) == tuple(flat[1]) == colour(0.0)  # clipped below
    assert tuple(flat[100]) == tuple(flat[99]) == colour(1.0)  # clipped above
    assert len({tuple(p) for p in flat[1:100]}) > 90  # 99 values, (nearly) as many colours
    assert (flat[:101, 3] == 255).all() and (flat[101:, 3] == 0).all()  # padding transparent


def test_png_other_colormap_and_constant_prep(tmp_path):
    path = save_prep_png(_ramp(False), tmp_path / "gray.png", num_params=101, cmap="gray")
    flat = read_png(path).reshape(-1, 4)
    assert tuple(flat[50]) == colour(0.5, "gray") and flat[50, 0] == flat[50, 1] == flat[50, 2]
    assert tuple(flat[0]) == (0, 0, 0, 255) and tuple(flat[100]) == (255, 255, 255, 255)
    # every value equal: an empty range, one colour, no error
    flat = read_png(save_prep_png(torch.full((4, 8), 0.25), tmp_path / "const.png")).reshape(-1, 4)
    assert flat.shape == (36, 4) and len({tuple(p) for p in flat[:32]}) == 1 and (flat[32:, 3] == 0).all()


def test_png_written_atomically_over_an_old_file(tmp_path):
    path = tmp_path / "prep.png"
    path.write_bytes(b"not a png")
    save_prep_png(torch.randn(8, 8), path)  # os.PathLike accepted
    assert read_png(path).shape == (8, 8, 4)
    assert sorted(os.listdir(tmp_path)) == ["prep.png"]  # no temporary file left
    assert not any(p.startswith(TMP_PREFIX) for p in os.listdir(tmp_path))
    with pytest.raises(ValueError, match="prep"):
        save_prep_png(torch.zeros(2, 4, 8), tmp_path / "bad.png")
    assert sorted(os.listdir(tmp_path)) == ["prep.png"]
