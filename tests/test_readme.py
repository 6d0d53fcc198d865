"""The README's Python example runs as written (scaled down: 2 networks, 4 images) and does what its
comments say: ``preps.grad`` is the (B, H, W) gradient of the PRep batch."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "batched_forward" in b and "pack_preps" in b)
    scaled = re.sub(r"range\(\d+\)", "range(2)", code)
    scaled = re.sub(r"torch\.randn\(\d+, 3, 32, 32\)", "torch.randn(4, 3, 32, 32)", scaled)
    assert scaled.count("range(2)") >= 1 and "torch.randn(4, 3, 32, 32)" in scaled, "README example changed shape"
    return scaled


def test_readme_example_gives_preps_grad():
    ns: dict = {}
    exec(compile(_example(), str(README), "exec"), ns)  # noqa: S102 - our own README
    preps = ns["preps"]
    assert preps.is_leaf, "the README's preps is not a leaf (pack_preps' output): preps.grad stays None"
    assert preps.grad is not None
    assert preps.grad.shape == preps.shape == (2, 8, 10_000)
    assert torch.isfinite(preps.grad).all() and preps.grad.abs().sum() > 0
