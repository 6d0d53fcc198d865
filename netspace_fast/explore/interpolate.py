"""Interpolation between two networks (``netspace interpolate``; METHOD.md section 7).

``steps`` evenly spaced embeddings between the two networks' embeddings are decoded (decoder calls of
``chunk`` embeddings) and evaluated on the dataset's test images by batched calls; the same for the
linear interpolation of the two input PReps (raw weights; only between networks of one architecture).
Multi-Architecture runs also give the predicted ClassId at each step, and each decoded PRep is
evaluated as the architecture it names. Writes ``interpolation.csv`` and ``interpolation.png``.
SDF runs are handed to :func:`netspace_fast.sdf.mesh.interpolate_shapes`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..interpolation import check_steps
from .common import accuracies, bar, check_out_dir, decode_batches, is_sdf_run, open_explorer, pyplot, save_figure, write_csv

__all__ = ["INTERPOLATION_FIELDS", "Interpolation", "interpolate", "summary_lines"]

INTERPOLATION_FIELDS = ("step", "alpha", "embedding_acc", "weights_acc", "predicted_class_id", "predicted_arch")


@dataclass
class Interpolation:
    """One row per step (``INTERPOLATION_FIELDS``; ``weights_acc`` None between two architectures,
    ``predicted_*`` None in Single), the two networks, their input accuracies, and the files written."""

    a: str
    b: str
    protocol: str
    rows: list[dict]
    input_acc: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)


def interpolate(run_dir, a: str, b: str, *, steps: int = 100, out=None, device: str = "cpu", chunk: int = 16,
                progress: bool = False):
    """Interpolate between zoo instances ``a`` and ``b`` of the run's zoo (see the module doc); with
    ``out`` the CSV and the plot are written into that folder. Returns an :class:`Interpolation`
    (SDF runs: whatever :func:`netspace_fast.sdf.mesh.interpolate_shapes` returns)."""
    from ..space.run import Run

    steps = check_steps(steps)
    run = Run.open(run_dir)
    if is_sdf_run(run):
        try:
            from ..sdf.mesh import interpolate_shapes
        except ImportError as e:
            raise ValueError(f"interpolate: {str(run_dir)!r} is an SDF run, and SDF interpolation "
                             f"(netspace_fast.sdf.mesh) is not available: {e}") from None
        return interpolate_shapes(run_dir, a, b, steps, out, device)
    ex = open_explorer(run_dir, device, what="interpolate")
    ea, eb = ex.entry(a), ex.entry(b)
    x, y = ex.images("test")
    preps = ex.preps([a, b])
    with torch.no_grad():
        z = ex.space.encode(preps)  # (2, E)
        alphas = torch.linspace(0, 1, steps, device=z.device)
    # decoded and evaluated block by block: memory bounded by the block, whatever the number of steps
    block = chunk * 8
    emb_acc, cids = torch.empty(steps), torch.empty(steps, dtype=torch.long)
    pbar = bar(progress, steps, "decoding the interpolation", "network")
    for s in range(0, steps, block):
        with torch.no_grad():
            zs = torch.lerp(z[0:1], z[1:2], alphas[s:s + block, None])
        decoded, c = decode_batches(ex, zs, chunk)
        emb_acc[s:s + block] = accuracies(ex.space.specs, decoded, c, x, y, chunk=chunk)
        cids[s:s + block] = c.cpu()
        del decoded
        if pbar is not None:
            pbar.update(zs.shape[0])
    if pbar is not None:
        pbar.close()
    same_arch = ea["architecture"] == eb["architecture"]
    spec_in = [s for s in ex.space.specs if s.name == ea["architecture"]][0]
    spec_b = [s for s in ex.space.specs if s.name == eb["architecture"]][0]
    input_acc = {a: float(accuracies(spec_in, preps[0:1], None, x, y)[0]),
                 b: float(accuracies(spec_b, preps[1:2], None, x, y)[0])}
    w_acc = None
    if same_arch:
        w_acc = torch.empty(steps)
        for s in range(0, steps, chunk):  # the interpolated PReps, chunk by chunk
            al = alphas[s:s + chunk, None, None]
            w = torch.lerp(preps[0:1], preps[1:2], al)
            w_acc[s:s + chunk] = accuracies(spec_in, w, None, x, y, chunk=chunk)
    multi = ex.protocol == "multi"
    rows = []
    for k in range(steps):
        c = int(cids[k])
        rows.append({"step": k, "alpha": float(alphas[k]), "embedding_acc": float(emb_acc[k]),
                     "weights_acc": None if w_acc is None else float(w_acc[k]),
                     "predicted_class_id": c if multi else None,
                     "predicted_arch": ex.space.specs[c].name if multi else None})
    result = Interpolation(a, b, ex.protocol, rows, input_acc)
    if out is not None:
        d = check_out_dir(out)
        result.files["csv"] = write_csv(d / "interpolation.csv", INTERPOLATION_FIELDS, rows)
        result.files["png"] = _plot(result, [s.name for s in ex.space.specs], ea, eb, d / "interpolation.png")
    return result


def _plot(r: Interpolation, arch_names: list[str], ea: dict, eb: dict, path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    al = [row["alpha"] for row in r.rows]
    ax.plot(al, [row["embedding_acc"] for row in r.rows], "-", color="tab:blue", lw=1.8,
            label="decoded embedding interpolation")
    if r.rows[0]["weights_acc"] is not None:
        ax.plot(al, [row["weights_acc"] for row in r.rows], "--", color="tab:orange", lw=1.8,
                label="raw weight (PRep) interpolation")
    else:
        ax.text(0.5, 0.02, "no weight interpolation: the two networks have different architectures",
                transform=ax.transAxes, ha="center", fontsize=8, color="gray")
    if r.protocol == "multi":
        colors = plt.get_cmap("tab10")
        for c, name in enumerate(arch_names):
            pts = [(row["alpha"], row["embedding_acc"]) for row in r.rows if row["predicted_class_id"] == c]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=colors(c + 2), zorder=3,
                           label=f"predicted ClassId {c} ({name})")
    ax.set_xlabel(f"alpha (0: {r.a}, {ea['architecture']}; 1: {r.b}, {eb['architecture']})")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"interpolation {r.a} -> {r.b} ({len(r.rows)} steps)")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def summary_lines(r: Interpolation) -> list[str]:
    """A few lines describing an interpolation (for the CLI and reports)."""
    e = [row["embedding_acc"] for row in r.rows]
    lines = [f"inputs: {r.a} {r.input_acc[r.a]:.4f}, {r.b} {r.input_acc[r.b]:.4f} test accuracy",
             f"decoded embeddings: ends {e[0]:.4f} / {e[-1]:.4f}, min {min(e):.4f}, mean {sum(e) / len(e):.4f}"]
    if r.rows[0]["weights_acc"] is not None:
        w = [row["weights_acc"] for row in r.rows]
        lines.append(f"raw weights: ends {w[0]:.4f} / {w[-1]:.4f}, min {min(w):.4f}, mean {sum(w) / len(w):.4f}")
    else:
        lines.append("raw weights: not interpolated (different architectures)")
    if r.protocol == "multi":
        seq = []
        for row in r.rows:
            if not seq or seq[-1][0] != row["predicted_arch"]:
                seq.append([row["predicted_arch"], row["alpha"], row["alpha"]])
            seq[-1][2] = row["alpha"]
        lines.append("predicted architectures along the path: "
                     + " -> ".join(f"{n} [{lo:.2f}, {hi:.2f}]" for n, lo, hi in seq))
    return lines
