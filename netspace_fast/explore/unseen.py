"""Sampling unseen architectures (``netspace sample-unseen``; METHOD.md section 7).

On a Multi-Architecture space trained with LeNetLike and ResNet32 only (the ``digits-unseen`` /
``cifar10-unseen`` zoos), every pair (LeNetLike, ResNet32) of training instances is interpolated at
``alphas`` (default 0.1, 0.2, ..., 0.9); the embeddings are decoded in batches, the ClassId head names
each one's architecture, and those it reads as VanillaCNN or ResNet8 are kept and evaluated on the
test images as that architecture (the PRep trimmed to its height; one batched call per architecture
and chunk). The real zoo's instances of those architectures (every split) are evaluated the same way,
and a table per architecture compares them (count, mean, min, max accuracy). Writes
``samples.csv`` (every decoded embedding), ``table.csv`` and ``unseen.png``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .common import accuracies, check_out_dir, decode_batches, open_explorer, pyplot, save_figure, write_csv

__all__ = ["SAMPLE_FIELDS", "TABLE_FIELDS", "Unseen", "sample_unseen"]

SAMPLE_FIELDS = ("a", "b", "alpha", "predicted_class_id", "predicted_arch", "kept", "test_acc")
TABLE_FIELDS = ("arch", "source", "count", "mean", "min", "max")


@dataclass
class Unseen:
    """``samples``: one row per decoded embedding (``SAMPLE_FIELDS``; ``test_acc`` only for kept ones);
    ``table``: per kept architecture, a ``decoded`` and a ``zoo`` row (``TABLE_FIELDS``); ``seen``:
    the kept architectures that the run's training split does hold (empty on a true unseen space)."""

    samples: list[dict]
    table: list[dict]
    seen: list[str]
    files: dict[str, Path] = field(default_factory=dict)


def _stats(arch: str, source: str, accs: list[float]) -> dict:
    if not accs:
        return {"arch": arch, "source": source, "count": 0, "mean": math.nan, "min": math.nan, "max": math.nan}
    return {"arch": arch, "source": source, "count": len(accs), "mean": sum(accs) / len(accs), "min": min(accs),
            "max": max(accs)}


def sample_unseen(run_dir, *, alphas=None, ends: tuple[str, str] = ("lenetlike", "resnet32"),
                  keep: tuple[str, ...] = ("vanillacnn", "resnet8"), out=None, device: str = "cpu", chunk: int = 16,
                  progress: bool = False) -> Unseen:
    """Decode interpolations between the training instances of ``ends`` and keep those whose predicted
    architecture is in ``keep`` (see the module doc)."""
    alphas = [i / 10 for i in range(1, 10)] if alphas is None else [float(a) for a in alphas]
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"alphas: expected interpolation positions in [0, 1], got {alphas}")
    ex = open_explorer(run_dir, device, what="sample-unseen")
    if ex.protocol != "multi":
        raise ValueError(f"run: {str(run_dir)!r} is a Single-Architecture run; sample-unseen needs a "
                         f"Multi-Architecture run (trained on a zoo such as digits-unseen)")
    names = ex.arch_names
    for n in (*ends, *keep):
        if n not in names:
            raise ValueError(f"arch: {n!r} is not one of this space's architectures ({', '.join(names)})")
    ids = {n: [e["id"] for e in ex.zoo.instances("train", n)] for n in ends}
    for n, v in ids.items():
        if not v:
            raise ValueError(f"zoo: the run's zoo {str(ex.zoo.path)!r} has no {n} training instances to "
                             f"interpolate from")
    trained_on = ex.space.preset.train_archs or names  # a preset may leave some of the zoo's train archs out
    seen = [n for n in keep if n in trained_on and ex.zoo.instances("train", n)]
    with torch.no_grad():
        za = torch.cat([ex.space.encode(ex.preps(ids[ends[0]][s:s + chunk])) for s in range(0, len(ids[ends[0]]),
                                                                                            chunk)])
        zb = torch.cat([ex.space.encode(ex.preps(ids[ends[1]][s:s + chunk])) for s in range(0, len(ids[ends[1]]),
                                                                                            chunk)])
        pairs = [(i, j) for i in range(len(za)) for j in range(len(zb))]
        al = torch.tensor(alphas, device=za.device)
        ia = torch.tensor([p[0] for p in pairs for _ in alphas], device=za.device)
        ib = torch.tensor([p[1] for p in pairs for _ in alphas], device=za.device)
        t = al.repeat(len(pairs))[:, None]
        z = torch.lerp(za[ia], zb[ib], t)  # (pairs * alphas, E)
    decoded, cids = decode_batches(ex, z, chunk, progress, "decoding interpolations")
    keep_ids = torch.tensor([names.index(n) for n in keep])
    kept = torch.isin(cids.cpu(), keep_ids).nonzero().flatten()
    x, y = ex.images("test")
    acc = torch.full((z.shape[0],), math.nan)
    if kept.numel():
        acc[kept] = accuracies(ex.space.specs, decoded[kept.to(decoded.device)], cids[kept.to(cids.device)].cpu(),
                               x, y, chunk=chunk)
    del decoded
    samples = []
    for k in range(z.shape[0]):
        c = int(cids[k])
        samples.append({"a": ids[ends[0]][int(ia[k])], "b": ids[ends[1]][int(ib[k])], "alpha": float(t[k, 0]),
                        "predicted_class_id": c, "predicted_arch": names[c], "kept": int(names[c] in keep),
                        "test_acc": None if math.isnan(float(acc[k])) else float(acc[k])})
    # the real zoo's instances of the kept architectures, every split, evaluated the same way
    table = []
    zoo_acc: dict[str, list[float]] = {}
    for n in keep:
        real = [e["id"] for e in ex.zoo.instances(arch=n)]
        vals = []
        for s in range(0, len(real), chunk):
            vals += accuracies(ex.space.specs[names.index(n)], ex.preps(real[s:s + chunk]), None, x, y).tolist()
        zoo_acc[n] = vals
        table.append(_stats(n, "decoded", [r["test_acc"] for r in samples if r["kept"] and r["predicted_arch"] == n]))
        table.append(_stats(n, "zoo", vals))
    result = Unseen(samples, table, seen)
    if out is not None:
        d = check_out_dir(out)
        result.files["samples"] = write_csv(d / "samples.csv", SAMPLE_FIELDS, samples)
        result.files["table"] = write_csv(d / "table.csv", TABLE_FIELDS, table)
        result.files["png"] = _plot(result, names, alphas, keep, zoo_acc, d / "unseen.png")
    return result


def _plot(r: Unseen, names: list[str], alphas: list[float], keep, zoo_acc: dict, path) -> Path:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, n in enumerate(keep):
        dec = [s["test_acc"] for s in r.samples if s["kept"] and s["predicted_arch"] == n]
        ax.scatter([2 * k + (i % 7 - 3) * 0.04 for i in range(len(dec))], dec, s=12, color="tab:blue",
                   label="decoded from interpolations" if k == 0 else None)
        ax.scatter([2 * k + 0.8 + (i % 7 - 3) * 0.04 for i in range(len(zoo_acc[n]))], zoo_acc[n], s=18,
                   marker="s", color="tab:orange", label="real zoo instances" if k == 0 else None)
    ax.set_xticks([2 * k + 0.4 for k in range(len(keep))], [f"{n}" for n in keep])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("unseen architectures: decoded vs real", fontsize=10)
    cmap = plt.get_cmap("tab10")
    for c, n in enumerate(names):
        frac = [sum(1 for s in r.samples if s["alpha"] == a and s["predicted_class_id"] == c)
                / max(1, sum(1 for s in r.samples if s["alpha"] == a)) for a in alphas]
        ax2.plot(alphas, frac, "-o", ms=3, color=cmap(c + 2), label=f"ClassId {c} ({n})")
    ax2.set_xlabel(f"alpha (0: {names[0]}, 1: {names[-1]})")
    ax2.set_ylabel("fraction of the decoded embeddings")
    ax2.set_ylim(-0.02, 1.02)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("predicted architecture along the interpolations", fontsize=10)
    return save_figure(fig, path)
