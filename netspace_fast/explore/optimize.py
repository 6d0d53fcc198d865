"""Latent space optimization (``netspace optimize``; METHOD.md section 6): the decoder frozen, Adam on
one embedding, the decoded network distilled from a teacher on the training images.

- Start: a zoo instance's embedding (``start=ID``) or a seeded random one (``start="random"``):
  z ~ N(mean, std^2) per dimension, with the mean and standard deviation of the embeddings of the
  run's training networks (``torch.Generator`` seeded with ``seed``).
- Teacher: ``teacher=ID`` if given; otherwise the zoo's ResNet56 (the Multi runs' teacher, as in
  training); a zoo without one (Single zoos) gives its training network of the best recorded
  validation accuracy (Single training distils each decoded network from its own input network;
  a random start has no input network, so the best one stands in). Its logits on the training images
  are computed once.
- Loss: Single ``kd_loss`` (T = 4); Multi ``multi_kd_loss`` (0.9 KD + 0.1 CE) of the decoded
  network read as the wanted architecture (``arch``; default: the start network's, or the random
  start's predicted one) plus ``class_loss`` of the ClassId head towards that architecture.
- Every ``eval_every`` steps (and at step 0 and the last): the distillation loss on a fixed subset of
  training images, validation and test accuracy of the decoded network read as its predicted
  architecture; the best validation accuracy (Multi: among evaluations predicting the wanted
  architecture, if any) is kept and saved as an exported network (:mod:`.export`).

Writes ``curve.csv``, ``curve.png``, ``best.safetensors`` (plain state dict), ``best_embedding.safetensors``
and ``summary.json`` into ``out``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine import batched_forward
from ..space.losses import class_loss, kd_loss, multi_kd_loss
from ..storage import atomic_write_bytes, strict_json
from ..zoo.presets import TEACHER
from .common import accuracies, bar, check_out_dir, open_explorer, pyplot, save_figure, write_csv
from .export import save_embedding, save_network

__all__ = ["CURVE_FIELDS", "Optimization", "optimize", "random_embedding"]

CURVE_FIELDS = ("step", "seconds", "distill_loss", "predicted_class_id", "predicted_arch", "val_acc", "test_acc")


@dataclass
class Optimization:
    """The curve (one row per evaluation, ``CURVE_FIELDS``), the best evaluation's row, the best
    embedding (1, E) and PRep, what was optimized, and the files written."""

    rows: list[dict]
    best: dict
    best_embedding: torch.Tensor
    best_prep: torch.Tensor
    arch: str
    teacher: str
    start: str
    files: dict[str, Path] = field(default_factory=dict)


def _positive(value, name: str, kind=int):
    ok = isinstance(value, kind) and not isinstance(value, bool) and value > 0
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok:
        raise ValueError(f"{name}: expected a positive {kind.__name__}, got {value!r}")
    return value


@torch.no_grad()
def random_embedding(ex, seed: int = 0, n: int = 1) -> torch.Tensor:
    """``n`` seeded random embeddings (n, E): N(mean, std^2) per dimension, mean and std of the
    embeddings of the run's training networks."""
    ids = [e["id"] for e in ex.zoo.instances("train") if e["architecture"] in ex.arch_names]
    if len(ids) < 2:
        raise ValueError(f"start: a random start needs the statistics of at least 2 training networks; the "
                         f"run's zoo has {len(ids)}")
    z = torch.cat([ex.space.encode(ex.preps(ids[s:s + 32])) for s in range(0, len(ids), 32)])
    mean, std = z.mean(0), z.std(0)
    g = torch.Generator().manual_seed(int(seed))
    return (mean.cpu() + std.cpu() * torch.randn(n, z.shape[1], generator=g)).to(z.device)


def _teacher_id(ex, teacher: str | None) -> str:
    if teacher is not None:
        if teacher not in ex.zoo:
            raise ValueError(f"teacher: the run's zoo has no instance {teacher!r}")
        return teacher
    big = ex.zoo.instances(arch=TEACHER)
    if big:
        return big[0]["id"]
    cands = [e for e in ex.zoo.instances("train") if e["architecture"] in ex.arch_names]
    if not cands:
        raise ValueError("teacher: the run's zoo has no training networks to take a teacher from; name one "
                         "with teacher=ID")
    if all(e.get("val_acc") is None for e in cands):  # nothing recorded: measure (batched)
        x, y = ex.images("val")
        accs = accuracies(ex.space.specs, ex.preps([e["id"] for e in cands]),
                          torch.tensor([ex.arch_names.index(e["architecture"]) for e in cands]), x, y)
        return cands[int(accs.argmax())]["id"]
    return max(cands, key=lambda e: -1.0 if e.get("val_acc") is None else e["val_acc"])["id"]


@torch.no_grad()
def _logits(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([model(x[s:s + batch]) for s in range(0, x.shape[0], batch)])


def optimize(run_dir, *, start: str = "random", arch: str | None = None, steps: int = 500, lr: float = 1e-4,
             eval_every: int | None = None, image_batch: int = 128, seed: int = 0, teacher: str | None = None,
             out=None, device: str = "cpu", progress: bool = False) -> Optimization:
    """Latent space optimization (see the module doc); ``start`` is ``"random"`` or a zoo instance id."""
    steps = _positive(steps, "steps")
    lr = float(_positive(lr, "lr", float))
    image_batch = _positive(image_batch, "image_batch")
    eval_every = _positive(eval_every, "eval_every") if eval_every is not None else max(1, steps // 20)
    if not isinstance(start, str):
        raise TypeError(f"start: expected 'random' or a zoo instance id (str), got {type(start).__name__}")
    ex = open_explorer(run_dir, device, what="optimize")
    multi = ex.protocol == "multi"
    space = ex.space
    for p in list(space.decoder.parameters()) + list(space.encoder.parameters()):
        p.requires_grad_(False)  # frozen: only the embedding learns
    if start == "random":
        z0 = random_embedding(ex, seed)
        start_arch = None
    else:
        start_arch = ex.entry(start)["architecture"]
        z0 = space.encode(ex.preps([start]))
    if arch is not None:
        if not isinstance(arch, str) or arch.lower() not in ex.arch_names:
            raise ValueError(f"arch: expected one of this space's architectures ({', '.join(ex.arch_names)}), "
                             f"got {arch!r}")
        arch = arch.lower()
    else:
        arch = start_arch or ex.arch_names[int(ex.class_ids(z0)[0])]
    target = ex.arch_names.index(arch)
    spec = ex.space.specs[target]
    tid = _teacher_id(ex, teacher)
    xtr, ytr = ex.images("train")
    xva, yva = ex.images("val")
    xte, yte = ex.images("test")
    tmodel = ex.zoo.model(tid).to(ex.device).eval()
    t_logits = _logits(tmodel, xtr)
    del tmodel
    fixed = torch.arange(min(1024, xtr.shape[0]), device=xtr.device)  # the distillation loss reported
    tgt = torch.tensor([target], device=z0.device)

    def loss_of(z, idx):
        prep = space.decoder(z)
        student = batched_forward(spec, prep, xtr[idx])
        if multi:
            return multi_kd_loss(student, t_logits[idx], ytr[idx]).mean() + class_loss(space.decoder.class_logits(z),
                                                                                      tgt)
        return kd_loss(student, t_logits[idx]).mean()

    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    g = torch.Generator().manual_seed(int(seed) + 1)
    order, pos = torch.randperm(xtr.shape[0], generator=g), 0
    rows: list[dict] = []
    best = None
    t0 = time.perf_counter()

    def evaluate(step: int):
        nonlocal best
        with torch.no_grad():
            zz = z.detach()
            prep = space.decoder(zz)
            c = int(ex.class_ids(zz)[0])
            dl = float(loss_of(zz, fixed))
            cid = torch.tensor([c])
            va = float(accuracies(space.specs, prep, cid, xva, yva)[0])
            te = float(accuracies(space.specs, prep, cid, xte, yte)[0])
        row = {"step": step, "seconds": time.perf_counter() - t0, "distill_loss": dl,
               "predicted_class_id": c if multi else None, "predicted_arch": ex.arch_names[c] if multi else None,
               "val_acc": va, "test_acc": te}
        rows.append(row)
        ok = (not multi) or c == target
        key = (ok, va, -dl)  # ties in accuracy: the lower distillation loss
        if best is None or key > best[0]:
            best = (key, row, zz.clone(), prep[0].clone(), c)
        return row

    b = bar(progress, steps, "latent optimization", "step")
    evaluate(0)
    for step in range(1, steps + 1):
        if pos + image_batch > order.numel():
            order, pos = torch.randperm(xtr.shape[0], generator=g), 0
        idx = order[pos:pos + image_batch].to(xtr.device)
        pos += image_batch
        loss = loss_of(z, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            r = evaluate(step)
            if b is not None:
                b.set_postfix_str(f"val {r['val_acc']:.3f} test {r['test_acc']:.3f}", refresh=False)
        if b is not None:
            b.update(1)
    if b is not None:
        b.close()
    _, best_row, best_z, best_prep, best_c = best
    result = Optimization(rows, best_row, best_z, best_prep, ex.arch_names[best_c], tid, start)
    if out is not None:
        d = check_out_dir(out)
        result.files["csv"] = write_csv(d / "curve.csv", CURVE_FIELDS, rows)
        result.files["png"] = _plot(result, d / "curve.png")
        result.files["network"] = save_network(d / "best.safetensors", best_prep, ex.space.specs[best_c],
                                               {"run": str(Path(run_dir).resolve()), "source":
                                                f"latent optimization from {start}, step {best_row['step']}"})
        result.files["embedding"] = save_embedding(d / "best_embedding.safetensors", best_z)
        summary = {"run": str(Path(run_dir).resolve()), "start": start, "seed": seed, "arch": arch,
                   "teacher": tid, "steps": steps, "lr": lr, "image_batch": image_batch, "eval_every": eval_every,
                   "random_start": "N(mean, std^2) per dimension of the training networks' embeddings"
                   if start == "random" else None, "best": best_row, "first": rows[0], "last": rows[-1]}
        atomic_write_bytes(d / "summary.json", (json.dumps(strict_json(summary), indent=1) + "\n").encode())
        result.files["summary"] = d / "summary.json"
    return result


def _plot(r: Optimization, path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    st = [row["step"] for row in r.rows]
    ax.plot(st, [row["test_acc"] for row in r.rows], "-o", ms=3, label="test accuracy")
    ax.plot(st, [row["val_acc"] for row in r.rows], "--", lw=1, label="validation accuracy")
    ax.axvline(r.best["step"], color="gray", lw=0.8, ls=":", label=f"best (step {r.best['step']})")
    ax.set_xlabel("Adam step on the embedding")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(st, [row["distill_loss"] for row in r.rows], color="tab:red", lw=1, alpha=0.6)
    ax2.set_ylabel("distillation loss (red)")
    ax.set_title(f"latent optimization from {r.start} (teacher {r.teacher}, arch {r.arch})", fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    return save_figure(fig, path)
