"""Evaluation of a NetSpace: every network of a split encoded, decoded and evaluated next to its input
(METHOD.md section 7): one row per network (``network, arch, class_id, predicted_class_id, input_acc,
decoded_acc``, accuracies as fractions on the given images), then per-architecture means, the mean
absolute gap and the Spearman correlation of input vs decoded accuracy. Every architecture's
networks are evaluated by batched calls."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..archs import ArchSpec
from ..engine import batched_forward, images_per_call
from .nets import Decoder, Encoder

__all__ = ["NetGroup", "evaluate_networks", "spearman", "summarize"]


@dataclass
class NetGroup:
    """Networks of one architecture: their ids, spec, ClassId (None in Single) and PReps (B, H, W)."""

    ids: list[str]
    spec: ArchSpec
    class_id: int | None
    preps: torch.Tensor


@torch.no_grad()
def _accuracy(spec: ArchSpec, preps: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
              batch: int) -> torch.Tensor:
    """(B,) accuracy of every PRep's network on the images (batched calls of ``batch`` images)."""
    correct = torch.zeros(preps.shape[0])
    batch = images_per_call(preps.shape[0], batch, preps.device)  # CPU: B x batch capped (engine.calls)
    for s in range(0, images.shape[0], batch):
        out = batched_forward(spec, preps, images[s:s + batch])
        correct += (out.argmax(-1) == labels[s:s + batch]).sum(1).cpu()
    return correct / images.shape[0]


@torch.no_grad()
def evaluate_networks(encoder: Encoder, decoder: Decoder, groups: Sequence[NetGroup], images: torch.Tensor,
                      labels: torch.Tensor, specs: Sequence[ArchSpec] | None = None, *, chunk: int = 16,
                      batch: int = 512, input_cache: dict | None = None) -> list[dict]:
    """Rows for every network of ``groups``. With ``specs`` (Multi: the architectures in ClassId order)
    each decoded PRep is read as the architecture its predicted ClassId names. ``input_cache``: the
    input networks' accuracies on these same images by network id, from an earlier call (training
    validates the same inputs on the same images every time): read where present, filled where not."""
    rows = []
    for g in groups:
        if input_cache is not None and all(nid in input_cache for nid in g.ids):
            inp = torch.tensor([input_cache[nid] for nid in g.ids], dtype=torch.float64)
        else:
            inp = _accuracy(g.spec, g.preps, images, labels, batch)
            if input_cache is not None:
                input_cache.update(zip(g.ids, inp.tolist()))
        dec_acc = torch.zeros(len(g.ids))
        predicted = [None] * len(g.ids)
        for s in range(0, len(g.ids), chunk):
            z = encoder(g.preps[s:s + chunk])
            decoded = decoder(z)
            if specs is None:
                dec_acc[s:s + chunk] = _accuracy(g.spec, decoded, images, labels, batch)
                continue
            pred = decoder.class_logits(z).argmax(-1)
            for c in pred.unique().tolist():
                idx = (pred == c).nonzero().flatten()
                dec_acc[s + idx.cpu()] = _accuracy(specs[c], decoded[idx], images, labels, batch)
            predicted[s:s + chunk] = pred.tolist()
        for k, nid in enumerate(g.ids):
            rows.append({"network": nid, "arch": g.spec.name, "class_id": g.class_id,
                         "predicted_class_id": predicted[k], "input_acc": float(inp[k]),
                         "decoded_acc": float(dec_acc[k])})
    return rows


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 2 values or a constant side."""
    from scipy.stats import spearmanr

    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y ~ slope * x + intercept`` and the span ratio ``range(y) / range(x)``: whether the
    decoded accuracies (y) track the inputs' (x) across their range (slope 1) or collapse to one
    network (slope 0). NaN where x has no spread."""
    n = len(x)
    if n < 2 or max(x) == min(x):
        return math.nan, math.nan, math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    return slope, my - slope * mx, (max(y) - min(y)) / (max(x) - min(x))


def summarize(rows: Sequence[dict]) -> dict:
    """Per-architecture means and gaps, the mean |input - decoded| gap, Spearman(input, decoded), the
    least-squares slope and intercept of decoded on input accuracy and the span ratio (decoded range /
    input range; :func:`fit_line`), ClassId accuracy."""
    out: dict = {"networks": len(rows), "per_arch": {}}
    for arch in sorted({r["arch"] for r in rows}):
        rs = [r for r in rows if r["arch"] == arch]
        out["per_arch"][arch] = {"networks": len(rs), "input_acc": sum(r["input_acc"] for r in rs) / len(rs),
                                 "decoded_acc": sum(r["decoded_acc"] for r in rs) / len(rs),
                                 "mean_abs_gap": sum(abs(r["input_acc"] - r["decoded_acc"]) for r in rs) / len(rs)}
    if rows:
        out["mean_abs_gap"] = sum(abs(r["input_acc"] - r["decoded_acc"]) for r in rows) / len(rows)
        out["mean_decoded_acc"] = sum(r["decoded_acc"] for r in rows) / len(rows)
        out["spearman"] = spearman([r["input_acc"] for r in rows], [r["decoded_acc"] for r in rows])
        out["slope"], out["intercept"], out["span_ratio"] = fit_line([r["input_acc"] for r in rows],
                                                                     [r["decoded_acc"] for r in rows])
        with_class = [r for r in rows if r["class_id"] is not None and r["predicted_class_id"] is not None]
        if with_class:
            out["class_id_acc"] = sum(r["class_id"] == r["predicted_class_id"] for r in with_class) / len(with_class)
    return out
