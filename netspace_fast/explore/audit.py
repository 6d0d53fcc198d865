"""Memorization audit (``netspace audit``): are the networks a space generates new, or copies of its
training networks?

Generated networks, by kind:

- ``decoded``: every network of a zoo split (default test), encoded and decoded;
- ``interpolation``: ``steps`` evenly spaced inner points between the weakest and the strongest
  network of that split (their embeddings, decoded);
- ``embedding``: embeddings from files (e.g. ``netspace optimize``'s ``best_embedding.safetensors``),
  decoded;
- ``unseen`` (Multi spaces trained without some of their architectures): midpoints between the
  training networks of the first and the last trained architecture, kept where the ClassId head
  names an architecture the space never trained on.

For each one: the nearest training network by PRep L2 distance (also as a ratio to the median
distance between two training networks of that architecture: ~0 is a copy) and the one whose test
predictions agree most with its own, with that agreement; for decoded networks also the agreement
with their input. Two baselines calibrate what "close" means, for every decoded network: its input
plus Gaussian noise of the same norm as (decoded - input), and the average of the weights of the
two training networks nearest to the input; both go through the same nearest-network search.

Everything is batched: predictions by one ``batched_forward`` call per architecture, chunk and image
batch; distances by ``torch.cdist`` over flattened PReps. Writes ``audit.csv`` (a row per audited
network, baselines included, ``AUDIT_FIELDS``), ``audit.png`` and ``summary.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine import batched_forward, images_per_call
from ..storage import atomic_write_bytes
from .common import Explorer, check_out_dir, decode_batches, open_explorer, pyplot, save_figure, trim, write_csv

__all__ = ["AUDIT_FIELDS", "Audit", "audit", "predictions"]

AUDIT_FIELDS = ("kind", "network", "source", "arch", "test_acc", "nearest_l2", "l2_distance", "l2_ratio",
                "nearest_agreement", "agreement", "agreement_with_nearest_l2", "agreement_with_input")
KINDS = ("decoded", "interpolation", "embedding", "unseen", "noise_baseline", "average_baseline")


@dataclass
class Audit:
    """``rows``: one per audited network (``AUDIT_FIELDS``); ``summary``: per kind, count and means of
    ``agreement``, ``l2_ratio`` and ``test_acc``; ``files``: what was written."""

    rows: list[dict]
    summary: dict[str, dict]
    files: dict[str, Path] = field(default_factory=dict)


@torch.no_grad()
def predictions(spec, preps: torch.Tensor, images: torch.Tensor, *, chunk: int = 32, batch: int = 512) -> torch.Tensor:
    """(B, N) predicted classes of B networks of one architecture (PReps (B, H, W)) on N images:
    one ``batched_forward`` call per chunk of ``chunk`` networks and batch of ``batch`` images."""
    out = torch.empty(preps.shape[0], images.shape[0], dtype=torch.long)
    for s in range(0, preps.shape[0], chunk):
        p = preps[s:s + chunk]
        n = images_per_call(p.shape[0], batch, p.device)  # CPU: networks x images capped (engine.calls)
        for t in range(0, images.shape[0], n):
            out[s:s + p.shape[0], t:t + n] = batched_forward(spec, p, images[t:t + n]).argmax(-1).cpu()
    return out


def _check(split: str, steps: int, images: int | None, chunk: int) -> None:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0 (inner interpolation points), got {steps!r}")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise ValueError(f"images: expected a positive int (test images to compare predictions on), got {images!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")


class _Reference:
    """The training networks of one architecture: flattened PReps (trimmed to its height), test
    predictions, ids, and the median distance between two of them."""

    def __init__(self, ex: Explorer, arch: str, ids: list[str], x: torch.Tensor, chunk: int) -> None:
        self.spec = ex.space.specs[ex.arch_names.index(arch)]
        self.ids = ids
        preps = torch.cat([ex.preps(ids[s:s + chunk]) for s in range(0, len(ids), chunk)])
        self.preps = torch.stack([trim(p, self.spec) for p in preps])  # (T, h, W)
        self.flat = self.preps.flatten(1).double()
        self.pred = predictions(self.spec, self.preps, x, chunk=chunk)
        d = torch.cdist(self.flat, self.flat)
        off = d[~torch.eye(len(ids), dtype=torch.bool)]
        self.median = float(off.median()) if off.numel() else math.nan

    def match(self, preps: torch.Tensor, pred: torch.Tensor) -> list[dict]:
        """For each of B networks (PReps trimmed to this architecture (B, h, W), predictions (B, N)):
        the nearest training network by L2 and by prediction agreement."""
        d = torch.cdist(preps.flatten(1).double(), self.flat)  # (B, T)
        l2 = d.argmin(1)
        agree = (pred[:, None, :] == self.pred[None]).float().mean(-1)  # (B, T)
        best = agree.argmax(1)
        rows = []
        for b in range(preps.shape[0]):
            dist = float(d[b, l2[b]])
            rows.append({"nearest_l2": self.ids[int(l2[b])], "l2_distance": dist,
                         "l2_ratio": dist / self.median if self.median > 0 else math.nan,
                         "nearest_agreement": self.ids[int(best[b])], "agreement": float(agree[b, best[b]]),
                         "agreement_with_nearest_l2": float(agree[b, l2[b]])})
        return rows


def audit(run_dir, *, out=None, split: str = "test", steps: int = 5, embeddings: Sequence = (), images: int | None = 2000,
          device: str = "cpu", chunk: int = 16) -> Audit:
    """Audit the networks the space of ``run_dir`` generates against its training networks (see the
    module doc). ``images``: how many test images the predictions are compared on (None: all);
    ``embeddings``: embedding files to decode as well. With ``out`` the CSV, the plot and the summary
    are written there."""
    from .export import load_embedding

    _check(split, steps, images, chunk)
    ex = open_explorer(run_dir, device, what="audit")
    x, y = ex.images("test")
    if images is not None:
        x, y = x[:images], y[:images]
    trained = ex.space.preset.train_archs or tuple(ex.arch_names)
    train_ids = {a: [e["id"] for e in ex.zoo.instances("train", a)] for a in ex.arch_names if a in trained}
    train_ids = {a: v for a, v in train_ids.items() if v}
    if not train_ids:
        raise ValueError(f"zoo: the run's zoo {str(ex.zoo.path)!r} has no training networks to compare with")
    refs = {a: _Reference(ex, a, ids, x, chunk) for a, ids in train_ids.items()}
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []

    def add(kind: str, names: list[str], sources: list[str], preps: torch.Tensor, cids: torch.Tensor,
            inputs: dict[int, torch.Tensor] | None = None) -> None:
        """Evaluate and match B generated PReps (each read as the architecture of its ClassId)."""
        for c in sorted(set(cids.tolist())):
            spec = ex.spec_of(c)
            ks = [k for k in range(len(names)) if int(cids[k]) == c]
            p = torch.stack([trim(preps[k], spec) for k in ks])
            pred = predictions(spec, p, x, chunk=chunk)
            ref = refs.get(spec.name) or next(iter(refs.values()))
            if ref.spec.name != spec.name:  # no training networks of this architecture: compare predictions only
                matched = [{**m, "nearest_l2": None, "l2_distance": None, "l2_ratio": None,
                            "agreement_with_nearest_l2": None} for m in _agreement_only(pred, refs)]
            else:
                matched = ref.match(p, pred)
            for i, k in enumerate(ks):
                row = {"kind": kind, "network": names[k], "source": sources[k], "arch": spec.name,
                       "test_acc": float((pred[i] == y.cpu()).float().mean()), **matched[i]}
                if inputs is not None and k in inputs:
                    row["agreement_with_input"] = float((pred[i] == inputs[k]).float().mean())
                rows.append(row)

    # decoded networks of the split, and the two baselines built from their inputs
    ids = [e["id"] for e in ex.zoo.instances(split) if e["architecture"] in ex.arch_names]
    if ids:
        inp = torch.cat([ex.preps(ids[s:s + chunk]) for s in range(0, len(ids), chunk)])
        with torch.no_grad():
            z = torch.cat([ex.space.encode(inp[s:s + chunk]) for s in range(0, len(ids), chunk)])
        dec, cids = decode_batches(ex, z, chunk)
        arch_c = torch.tensor([ex.arch_names.index(ex.zoo.entry(i)["architecture"]) if ex.protocol == "multi" else 0
                               for i in ids])
        in_pred = {}
        for c in sorted(set(arch_c.tolist())):
            ks = [k for k in range(len(ids)) if int(arch_c[k]) == c]
            spec = ex.spec_of(c)
            pr = predictions(spec, torch.stack([trim(inp[k], spec) for k in ks]), x, chunk=chunk)
            in_pred.update({k: pr[i] for i, k in enumerate(ks)})
        add("decoded", [f"decoded {i}" for i in ids], ids, dec, cids, in_pred)
        # baselines, read as the input's own architecture
        noisy, avg, names, srcs, keep = [], [], [], [], []
        for k, i in enumerate(ids):
            spec = ex.spec_of(int(arch_c[k]))
            if spec.name not in refs:
                continue
            a, d = trim(inp[k], spec), trim(dec[k], spec) if int(cids[k]) == int(arch_c[k]) else None
            norm = float((d - a).norm()) if d is not None else float(a.norm()) * 0.1
            noise = torch.randn(a.shape, generator=gen).to(a.device)
            noisy.append(torch.zeros_like(inp[k]))
            noisy[-1][:a.shape[0]] = a + noise * (norm / max(float(noise.norm()), 1e-12))
            ref = refs[spec.name]
            near = torch.cdist(a.flatten()[None].double(), ref.flat)[0].argsort()
            near = [int(j) for j in near if ref.ids[int(j)] != i][:2]
            mean = ref.preps[near].mean(0)
            avg.append(torch.zeros_like(inp[k]))
            avg[-1][:mean.shape[0]] = mean
            keep.append(k)
            names.append(i)
            srcs.append(i)
        if keep:
            kc = arch_c[keep]
            inputs = {n: in_pred[k] for n, k in enumerate(keep)}
            add("noise_baseline", [f"noise {i}" for i in names], srcs, torch.stack(noisy), kc, inputs)
            add("average_baseline", [f"average of 2 nearest to {i}" for i in names], srcs, torch.stack(avg), kc,
                inputs)
        # an interpolation between the weakest and the strongest network of the split
        if steps and len(ids) >= 2:
            acc_in = {k: float((in_pred[k] == y.cpu()).float().mean()) for k in in_pred}
            lo, hi = min(acc_in, key=acc_in.get), max(acc_in, key=acc_in.get)
            alphas = [(s + 1) / (steps + 1) for s in range(steps)]
            t = torch.tensor(alphas, device=z.device)[:, None]
            zi = torch.lerp(z[lo][None], z[hi][None], t)
            dec_i, cid_i = decode_batches(ex, zi, chunk)
            add("interpolation", [f"{ids[lo]} -> {ids[hi]} at {a:.3f}" for a in alphas],
                [f"{ids[lo]},{ids[hi]}"] * steps, dec_i, cid_i)
    # embeddings from files
    for f in embeddings:
        ze = load_embedding(f).to(ex.device)
        dec_e, cid_e = decode_batches(ex, ze, chunk)
        add("embedding", [str(f)], [str(f)], dec_e, cid_e)
    # unseen architectures: midpoints between the first and last trained architecture's networks
    unseen_archs = [a for a in ex.arch_names if a not in trained]
    if ex.protocol == "multi" and unseen_archs and len(train_ids) >= 2:
        a_ids, b_ids = train_ids[next(iter(train_ids))], train_ids[list(train_ids)[-1]]
        pairs = [(i, j) for i in a_ids for j in b_ids]
        with torch.no_grad():
            za = ex.space.encode(ex.preps([p[0] for p in pairs]))
            zb = ex.space.encode(ex.preps([p[1] for p in pairs]))
        dec_u, cid_u = decode_batches(ex, torch.lerp(za, zb, 0.5), chunk)
        keep = [k for k in range(len(pairs)) if ex.arch_names[int(cid_u[k])] in unseen_archs]
        if keep:
            add("unseen", [f"{pairs[k][0]} + {pairs[k][1]} at 0.5" for k in keep],
                [f"{pairs[k][0]},{pairs[k][1]}" for k in keep], dec_u[keep], cid_u[keep])
    summary = _summarize(rows)
    result = Audit(rows, summary)
    if out is not None:
        d = check_out_dir(out)
        result.files["csv"] = write_csv(d / "audit.csv", AUDIT_FIELDS, rows)
        result.files["png"] = _plot(rows, d / "audit.png")
        result.files["summary"] = d / "summary.md"
        atomic_write_bytes(d / "summary.md", ("\n".join(summary_lines(result)) + "\n").encode())
    return result


def _agreement_only(pred: torch.Tensor, refs: dict) -> list[dict]:
    """Nearest training network by prediction agreement over every architecture's training networks."""
    out = []
    for b in range(pred.shape[0]):
        best_id, best = None, -1.0
        for ref in refs.values():
            agree = (pred[b][None] == ref.pred).float().mean(-1)
            j = int(agree.argmax())
            if float(agree[j]) > best:
                best_id, best = ref.ids[j], float(agree[j])
        out.append({"nearest_agreement": best_id, "agreement": best})
    return out


def _mean(values) -> float:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else math.nan


def _summarize(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            out[kind] = {"count": len(rs), "agreement": _mean(r["agreement"] for r in rs),
                         "l2_ratio": _mean(r.get("l2_ratio") for r in rs),
                         "test_acc": _mean(r["test_acc"] for r in rs),
                         "agreement_with_input": _mean(r.get("agreement_with_input") for r in rs)}
    return out


def summary_lines(a: Audit) -> list[str]:
    """The summary as a Markdown table and one sentence."""
    lines = ["| generated | networks | agreement with the nearest training network | L2 distance / median train-train "
             "| with its input | test accuracy |", "|---|---:|---:|---:|---:|---:|"]
    for kind, s in a.summary.items():
        f = (lambda v: "-" if v is None or math.isnan(v) else f"{v:.3f}")
        lines.append(f"| {kind} | {s['count']} | {f(s['agreement'])} | {f(s['l2_ratio'])} | "
                     f"{f(s['agreement_with_input'])} | {f(s['test_acc'])} |")
    dec = a.summary.get("decoded")
    if dec is not None:
        verdict = ("copies: they agree with some training network as much as with themselves"
                   if dec["agreement"] > 0.99 and dec["l2_ratio"] < 0.05 else
                   "not copies: no training network agrees with them completely, and in weight space they sit "
                   f"{dec['l2_ratio']:.2f} of a typical training-pair distance from the nearest one")
        lines += ["", f"Decoded networks: {verdict}."]
    return lines


def _plot(rows: list[dict], path) -> Path:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for c, kind in enumerate(KINDS):
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        ax.scatter([r["test_acc"] for r in rs], [r["agreement"] for r in rs], s=14, color=cmap(c), label=kind)
        l2 = [r["l2_ratio"] for r in rs if r.get("l2_ratio") is not None and not math.isnan(r["l2_ratio"])]
        if l2:
            ax2.hist(l2, bins=20, alpha=0.5, color=cmap(c), label=kind)
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("agreement with the nearest training network")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("prediction agreement", fontsize=10)
    ax2.set_xlabel("L2 distance to the nearest training network / median train-train distance")
    ax2.set_ylabel("networks")
    if ax2.get_legend_handles_labels()[0]:  # no histogram when no network has a distance (one training network)
        ax2.legend(fontsize=8)
    ax2.set_title("distance in weight space (0: a copy)", fontsize=10)
    return save_figure(fig, path)
