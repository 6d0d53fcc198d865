"""NetSpace training (METHOD.md section 6; seed Sec. IV): ``train_space(run_dir, zoo_dir, protocol)``.

Every image batch of an epoch draws a meta-batch of training networks and takes one Adam step on
:func:`netspace_fast.space.step.single_step` / :func:`~netspace_fast.space.step.multi_step` (the
networks evaluated by batched calls). The image order and the meta-batches of epoch e come from a
generator seeded with (seed, e), so a run resumed from its epoch-e checkpoint continues exactly as
an uninterrupted one (bit-identical on CPU). Validation every ``val_every`` epochs (and after the
last) on the validation networks and images keeps the best weights: Single by the smallest mean
|input - decoded| accuracy gap, Multi by the largest mean decoded accuracy (as the original; a preset's
``class_id_weight`` adds that weight times the ClassId accuracy).
Images are used without augmentation. Run folder: :mod:`netspace_fast.space.run`. Under
``torchrun --nproc_per_node=K`` (gloo on CPU, NCCL on CUDA) the ranks share each step's work and
average their gradients (see :func:`_train_loop`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import archs, data
from ..engine import module_logits
from ..archs import ArchSpec
from ..killpoint import after_checkpoint
from ..monitor import end_epoch, log, progress_bar, tensorboard_writer
from ..zoo.distributed import setup_distributed
from ..zoo.presets import TEACHER
from ..prep import PRepLayout
from .evaluate import NetGroup, evaluate_networks, summarize
from .nets import Decoder, Encoder, SpaceConfig
from .presets import SPACE_PRESETS, SpacePreset, default_preset
from .run import Run
from .losses import KD_T
from .step import multi_step, single_step

__all__ = ["SpaceData", "StepModule", "build_space", "load_space_data", "rank_loss", "train_space"]



@dataclass
class SpaceData:
    """What a run trains and validates on, read from a zoo."""

    specs: list[ArchSpec]  #: Single: [the architecture]; Multi: the architectures in ClassId order
    height: int
    groups: dict[str, list[NetGroup]]  #: split -> networks per architecture
    images: dict[str, tuple[torch.Tensor, torch.Tensor]]  #: split -> (images, labels)
    teacher_logits: torch.Tensor | None  #: Multi: the teacher's logits on the training images
    teacher: torch.nn.Module | None = None  #: Multi: the teacher itself (for augmented images)

    def stacked(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All PReps of a split (B, H, W) and their ClassIds (B,) (0 in Single)."""
        groups = self.groups[split]
        preps = torch.cat([g.preps for g in groups])
        ids = torch.cat([torch.full((len(g.ids),), g.class_id or 0, dtype=torch.long) for g in groups])
        return preps, ids


def arch_pairs(class_ids: torch.Tensor) -> list[tuple[int, int]]:
    """The meta-batches of the unseen-architecture training set, as the original code forms them
    (``NetsDatasetMissing``): the networks of the lower ClassId (A) and of the higher (B), each in
    zoo order, paired A[i] with B[i]; the leftovers of the larger group paired with each other,
    consecutively (an odd one out is left out: the original would fail on it). Needs exactly two
    ClassIds among ``class_ids``; returns pairs of indices into it."""
    present = sorted(set(class_ids.tolist()))
    if len(present) != 2:
        raise ValueError(f"preset: pairs need the train split to hold exactly two architectures (ClassIds), got "
                         f"{present}")
    a = [i for i, c in enumerate(class_ids.tolist()) if c == present[0]]
    b = [i for i, c in enumerate(class_ids.tolist()) if c == present[1]]
    n = min(len(a), len(b))
    rest = a[n:] if len(a) > n else b[n:]
    return list(zip(a[:n], b[:n])) + [(rest[i], rest[i + 1]) for i in range(0, len(rest) - 1, 2)]


def _zoo_archs(zoo, split: str) -> list[str]:
    return sorted({e["architecture"] for e in zoo.instances(split)} - {TEACHER})


def load_space_data(zoo_dir, preset: SpacePreset, *, root=None, splits=("train", "val"), images_split=None,
                    device: str = "cpu", allow_empty: bool = False) -> SpaceData:
    """The networks of ``splits`` of the zoo as PReps (at one height), the images of the same splits
    (or of ``images_split`` for every split), and in Multi the teacher's logits; every mismatch between
    zoo and preset is a ValueError, and so is an empty split unless ``allow_empty``."""
    from ..zoo.format import Zoo

    zoo = Zoo.open(zoo_dir)
    datasets = {e["dataset"] for e in zoo.instances()}
    if datasets != {preset.dataset}:
        raise ValueError(f"zoo: {str(zoo_dir)!r} holds networks of dataset(s) {sorted(datasets)}, the preset needs "
                         f"{preset.dataset!r}")
    if preset.protocol == "single":
        present = _zoo_archs(zoo, "train")
        if len(present) != 1:
            raise ValueError(f"zoo: a Single-Architecture run needs one architecture in the train split, "
                             f"{str(zoo_dir)!r} has {present or 'none'}")
        names = present
    else:
        names = list(preset.archs)
        for split in splits:
            extra = sorted(set(_zoo_archs(zoo, split)) - set(names))
            if extra:
                raise ValueError(f"zoo: split {split!r} holds architectures {extra} that the preset does not know "
                                 f"(its ClassIds: {names})")
    specs = [archs.spec(n, preset.dataset) for n in names]
    height = max(PRepLayout.for_spec(s, preset.width).height for s in specs)
    groups = {}
    for split in splits:
        gs = []
        for c, spec in enumerate(specs):
            if split == "train" and preset.train_archs and spec.name not in preset.train_archs:
                continue  # unseen in training
            ids = [e["id"] for e in zoo.instances(split, spec.name)]
            if ids:
                gs.append(NetGroup(ids, spec, c if preset.protocol == "multi" else None,
                                   zoo.preps(split, spec.name, preset.width, height).to(device)))
        if not gs and not allow_empty:
            raise ValueError(f"zoo: split {split!r} of {str(zoo_dir)!r} has no networks of {names}")
        groups[split] = gs
    seed = int((zoo.config or {}).get("seed", 0)) if isinstance(zoo.config, dict) else 0
    images = {}
    for split in splits:  # as the zoo's networks see them (an imported zoo: in its own geometry)
        x, y = data.zoo_tensors(zoo.config, preset.dataset, images_split or split, root=root, seed=seed)
        images[split] = (x.to(device), y.to(device))
    teacher_logits = teacher = None
    if preset.protocol == "multi" and "train" in splits:
        teachers = zoo.instances(arch=TEACHER)
        if not teachers:
            raise ValueError(f"zoo: a Multi-Architecture run needs a {TEACHER} teacher in the zoo; "
                             f"{str(zoo_dir)!r} has none")
        teacher = zoo.model(teachers[0]["id"]).to(device).eval()
        teacher_logits = module_logits(teacher, images["train"][0])  # CPU: small calls, channels_last
    return SpaceData(specs, height, groups, images, teacher_logits, teacher)


def build_space(preset: SpacePreset, height: int, seed: int, device: str = "cpu") -> tuple[Encoder, Decoder]:
    cfg = SpaceConfig(height, preset.width, num_archs=len(preset.archs) if preset.protocol == "multi" else 0,
                      **preset.space)
    torch.manual_seed(seed)
    return Encoder(cfg).to(device), Decoder(cfg).to(device)


def _val_images(d: SpaceData, preset: SpacePreset, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation images: all of the val split, or a fixed seeded subset of ``preset.val_images``."""
    x, y = d.images["val"]
    if preset.val_images and preset.val_images < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 11))[:preset.val_images]
        keep = keep.sort().values.to(y.device)
        x, y = x[keep], y[keep]
    return x, y


def _validate(enc, dec, d: SpaceData, preset: SpacePreset, images=None, input_cache: dict | None = None
              ) -> tuple[float, dict]:
    x, y = images if images is not None else d.images["val"]
    rows = evaluate_networks(enc, dec, d.groups["val"], x, y, d.specs if preset.protocol == "multi" else None,
                             input_cache=input_cache)
    s = summarize(rows)
    return _score(s, preset), s


def _score(s: dict, preset: SpacePreset) -> float:
    """A validation's score (larger is better): Single ``-mean |gap|``; Multi the mean decoded accuracy
    plus the preset's ``class_id_weight`` times the ClassId accuracy."""
    if preset.protocol == "single":
        return -s["mean_abs_gap"]
    return s["mean_decoded_acc"] + preset.class_id_weight * s.get("class_id_acc", 0.0)


def train_space(run_dir, zoo_dir, protocol: str, preset: str | None = None, *, seed: int = 0,
                epochs: int | None = None, device: str = "cpu", root=None, progress: bool = True,
                tensorboard=None, download: bool = False) -> Run:
    """Train (or resume) a NetSpace run in ``run_dir`` on the zoo in ``zoo_dir``; returns the run.
    ``tensorboard``: a log directory for per-epoch scalars (every loss term, the validation gap,
    Spearman, ClassId accuracy; needs the ``tensorboard`` package). ``download``: fetch the preset's
    dataset into ``root`` first (:func:`netspace_fast.data.download`)."""
    from ..zoo.format import Zoo

    if protocol not in ("single", "multi"):
        raise ValueError(f"protocol: expected 'single' or 'multi', got {protocol!r}")
    zoo = Zoo.open(zoo_dir)
    if isinstance(zoo.config, dict) and zoo.config.get("kind") == "sdf":
        raise ValueError(f"zoo: {str(zoo_dir)!r} is an SDF zoo (SIREN MLPs of shapes, from netspace zoo fit-sdf); "
                         f"train {protocol} learns image classifiers: use netspace train sdf --zoo {str(zoo_dir)}")
    zoo_dataset = next((e["dataset"] for e in zoo.instances()), None)
    if zoo_dataset is None:
        raise ValueError(f"zoo: {str(zoo_dir)!r} holds no networks")
    name = preset or default_preset(protocol, zoo_dataset)
    if name not in SPACE_PRESETS:
        raise ValueError(f"preset: unknown {name!r}; valid presets: {', '.join(SPACE_PRESETS)}")
    p = SPACE_PRESETS[name]
    if p.protocol != protocol:
        raise ValueError(f"preset: {name!r} is a {p.protocol} preset, not {protocol}")
    n_epochs = p.epochs if epochs is None else epochs
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {n_epochs!r}")
    user = zoo.config.get("user_archs") if isinstance(zoo.config, dict) else None
    if protocol == "multi" and user:  # user architectures next to the built-in ones: ClassIds after theirs
        extra = tuple(n for n in user if n not in p.archs and n in _zoo_archs(zoo, "train"))
        p = dataclasses.replace(p, archs=(*p.archs, *extra))
    names = list(p.archs) if protocol == "multi" else _zoo_archs(zoo, "train")
    config = {"zoo": str(Path(zoo_dir).resolve()), "preset": name, "recipe": p.to_json(), "archs": names,
              "seed": int(seed), "epochs": n_epochs,
              "root": None if root is None else str(Path(root).expanduser().resolve())}
    if user:
        config["user_archs"] = user
    rank, world, device, dist, owned = setup_distributed(device)
    if world > 1 and protocol == "single" and p.meta_batch % world:
        raise ValueError(f"preset: Single under torchrun splits the meta-batch of {p.meta_batch} networks over the "
                         f"ranks; {world} ranks do not divide it")
    writer = tensorboard_writer(tensorboard) if rank == 0 else None  # a missing package: before any work
    if rank == 0:
        data.fetch(p.dataset, root, download)
    if dist is not None and download:
        dist.barrier()  # the other ranks read what rank 0 fetched
    try:
        if rank == 0:
            run = Run.create_or_resume(run_dir, f"train {protocol}", config)
        if dist is not None:
            dist.barrier()
        if rank != 0:
            run = Run.create_or_resume(run_dir, f"train {protocol}", config)
        _train_loop(run, zoo_dir, p, protocol, int(seed), n_epochs, device, root, progress and rank == 0, writer,
                    rank, world, dist)
    finally:
        if writer is not None:
            writer.close()
        if dist is not None and owned:
            dist.destroy_process_group()
    return run


def augment_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The zoo's augmentation of a batch of normalized images (N, C, S, S): a random crop with padding
    S // 8 (normalized black) and a random horizontal flip per image, drawn from ``gen``
    (:func:`netspace_fast.zoo.augment.crop_flip_draws`), applied by the ``gather_grouped`` op."""
    from ..ops.gather_grouped import gather_grouped
    from ..zoo.augment import NORMALIZED_BLACK, crop_flip_draws

    n, pad = x.shape[0], x.shape[-1] // 8
    off, flips = crop_flip_draws(n, pad, gen)
    index = torch.arange(n)[None]
    if x.device.type != "cpu":
        index, off, flips = (_to_device(t, x.device) for t in (index, off, flips))
    return gather_grouped(x, index, off[None], flips[None], pad, list(NORMALIZED_BLACK)).contiguous()


def rank_loss(enc, dec, protocol: str, specs, preps, class_ids, nets, x, y, teacher_logits, idx, rank: int,
              world: int, T: float = KD_T):
    """Rank ``rank``'s share of one step's loss (of ``world`` ranks), such that the mean over the ranks
    of its gradients is the gradient of the whole step's loss: Single takes its slice of the
    meta-batch's networks ``nets`` (a mean over networks of equal slices); Multi takes its slice of the
    images ``idx``, weighting the image-averaged terms by its share of the images. Returns (loss, the
    step's outputs). A Single rank's slice is weighted by its share of the networks, so slices of
    unequal size (a last meta-batch smaller than the others) still average to the step's loss; a rank
    left without networks (fewer networks than ranks) runs one network at weight 0, so that every
    rank takes part in the gradient averaging."""
    if protocol == "single":
        if world == 1:
            out = single_step(enc, dec, specs[0], preps[nets], x[idx], T)
            return out.loss, out
        mine = nets.tensor_split(world)[rank]
        weight = world * mine.numel() / nets.numel()
        if mine.numel() == 0:
            mine = nets[:1]
        out = single_step(enc, dec, specs[0], preps[mine], x[idx], T)
        return weight * out.loss, out
    part = idx.tensor_split(world)[rank] if world > 1 else idx
    out = multi_step(enc, dec, specs, preps[nets], class_ids[nets], x[part], y[part], teacher_logits[part], T)
    if world == 1:
        return out.loss, out
    share = world * part.numel() / idx.numel()  # this rank's images, as a share of the mean
    return out.class_loss + out.gamma_class_loss + share * (out.kd.sum() + out.gamma_kd.sum()), out


class StepModule(torch.nn.Module):
    """The encoder and the decoder as one module whose forward is a rank's share of a step's loss
    (:func:`rank_loss`): what ``DistributedDataParallel`` wraps under torchrun, so that its hooks
    average the gradients over the ranks during the backward (every rank then takes the step one
    process would take on the whole meta-batch)."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, *args, **kwargs):
        return rank_loss(self.encoder, self.decoder, *args, **kwargs)


def _ddp(enc: Encoder, dec: Decoder, device) -> torch.nn.Module:
    """``DistributedDataParallel`` over :class:`StepModule` (gloo on CPU, NCCL on a CUDA device).
    ``find_unused_parameters``: a step need not reach every parameter (a Single step never uses a
    ClassId head; a Multi rank's images may leave a branch unused), and DDP must not wait for them."""
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device)
    return DistributedDataParallel(StepModule(enc, dec), device_ids=[dev] if dev.type == "cuda" else None,
                                   find_unused_parameters=True)


def param_groups(enc: Encoder, dec: Decoder, p: SpacePreset) -> list[dict]:
    """Adam's parameter groups: everything at ``lr``; with ``prep_lr`` set, the decoder's scale layer in a
    second group of its own (one group otherwise: the optimizer state of runs before ``prep_lr``)."""
    params = list(enc.parameters()) + list(dec.parameters())
    if not p.prep_lr:
        return [{"params": params, "lr": p.lr}]
    scale = list(dec.scalelayer.parameters())
    rest = [q for q in params if all(q is not t for t in scale)]
    return [{"params": rest, "lr": p.lr}, {"params": scale, "lr": p.prep_lr}]


def _train_loop(run: Run, zoo_dir, p: SpacePreset, protocol: str, seed: int, n_epochs: int, device: str, root,
                progress: bool, writer, rank: int, world: int, dist) -> None:
    """The epochs. Under torchrun (``world`` > 1) every rank draws the same images and meta-batch;
    Single splits the meta-batch's networks over the ranks (each rank encodes, decodes and evaluates
    its share: the loss is a mean over networks), Multi splits the image batch (the meta-batch's
    L_gamma pairs need all its networks in one place; the image-dependent terms are weighted by the
    rank's share of the images). The gradients are averaged over the ranks during every backward
    (``DistributedDataParallel`` over :class:`StepModule`),
    so every rank takes the same step as one process on the whole meta-batch; rank 0 writes."""
    d = load_space_data(zoo_dir, p, root=root, device=device)
    enc, dec = build_space(p, d.height, seed, device)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(param_groups(enc, dec, p), lr=p.lr)
    state = {"epoch": 0, "best_score": None, "history": []}
    if run.state() is not None:
        state = run.load_checkpoint(enc, dec, opt)
        log(progress, f"resuming after epoch {state['epoch']}")
    preps, class_ids = d.stacked("train")
    x, y = d.images["train"]
    M = x.shape[0]
    step = _ddp(enc, dec, device) if world > 1 else StepModule(enc, dec)
    val_images = _val_images(d, p, seed)
    val_inputs: dict = {}  # the val networks' own accuracies on val_images: computed once, not every validation
    pairs = torch.tensor(arch_pairs(class_ids)) if p.pairs else None
    bar = progress_bar(progress, f"NetSpace {protocol}" + (f" (rank 0 of {world})" if world > 1 else ""),
                       state["epoch"], n_epochs)
    for epoch in range(state["epoch"] + 1, n_epochs + 1):
        enc.train(), dec.train()
        for group, lr in zip(opt.param_groups, (p.lr_at(epoch, n_epochs), p.prep_lr_at(epoch, n_epochs))):
            group["lr"] = lr  # a function of the epoch alone: a resumed run gets the same
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(M, generator=g)
        if p.images_per_epoch:
            order = order[:p.images_per_epoch]
        # the step's losses stay on the device (0-d tensors) and are read once, at the end of the epoch:
        # float() every step would wait for the device each step (up to 4 times with the loss terms)
        losses, terms = [], {}
        pair_order = torch.randperm(len(pairs), generator=g) if pairs is not None else None
        for t, s in enumerate(range(0, len(order), p.image_batch)):
            idx = _to_device(order[s:s + p.image_batch], x.device)
            if pairs is not None:  # one pair a step, the pairs in a fresh order each epoch
                nets = _to_device(pairs[pair_order[t % len(pairs)]], preps.device)
            else:
                nets = _to_device(torch.randperm(preps.shape[0], generator=g)[:p.meta_batch], preps.device)
            if p.augment:  # the batch augmented, and the teacher's logits on the augmented images
                xb, yb = augment_images(x[idx], g), y[idx]
                tb = None
                if d.teacher is not None:
                    with torch.no_grad():
                        tb = d.teacher(xb)
                loss, out = step(protocol, d.specs, preps, class_ids, nets, xb, yb, tb,
                                 torch.arange(len(idx), device=x.device), rank, world, T=p.kd_temperature)
            else:
                loss, out = step(protocol, d.specs, preps, class_ids, nets, x, y, d.teacher_logits, idx, rank, world,
                                 T=p.kd_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under torchrun DDP's hooks average the gradients over the ranks here
            if p.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, p.clip_grad)
            opt.step()
            losses.append(loss.detach())
            for k, v in _terms(out).items():
                terms.setdefault(k, []).append(v)
        losses, terms = _read_once(losses, terms)  # the epoch's one wait for the device
        record = {"epoch": epoch, "loss": sum(losses) / len(losses)}
        record.update({k: sum(v) / len(v) for k, v in terms.items()})
        if epoch % p.val_every == 0 or epoch == n_epochs:
            enc.eval(), dec.eval()
            score, summary = _validate(enc, dec, d, p, val_images, val_inputs)
            record["val"] = summary
            if state["best_score"] is None or score > state["best_score"]:
                state["best_score"] = score
                if rank == 0:
                    run.save_best(enc, dec, {"epoch": epoch, "score": score, "val": summary})
        state = {"epoch": epoch, "best_score": state["best_score"], "history": state["history"] + [record]}
        if rank == 0:
            run.save_checkpoint(enc, dec, opt, state)
        if dist is not None:
            dist.barrier()  # every rank past the checkpoint: a resume finds the same epoch for all
        line = (f"loss {record['loss']:.4f}" + (f" val {_short(record['val'], protocol)}" if "val" in record else ""))
        end_epoch(epoch, n_epochs, line, progress=progress, bar=bar, writer=writer,
                  scalars=_scalars(record) if writer is not None else None)
        after_checkpoint(epoch)
    if bar is not None:
        bar.close()
    if world > 1:
        print(f"rank {rank}: weights sha256 {_fingerprint(params)}", file=sys.stderr, flush=True)


def _fingerprint(params) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor of a step's draws (image indices, network indices) to ``device`` without waiting
    for the device: on CUDA through pinned memory, non-blocking (a plain ``.to('cuda')`` from pageable
    memory synchronizes the stream); elsewhere ``t.to(device)``."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _terms(out) -> dict[str, torch.Tensor]:
    """The loss terms of a step, for the metrics (Multi: L_class, mixture, L_gamma's parts), as 0-d
    tensors on the step's device (read by :func:`_read_once`)."""
    if not hasattr(out, "class_loss"):
        return {}
    t = {"class_loss": out.class_loss.detach(), "kd_mixture": out.kd.detach().mean()}
    if out.gamma_kd.numel():
        t["gamma_class_loss"] = out.gamma_class_loss.detach()
        t["gamma_kd_mixture"] = out.gamma_kd.detach().sum()
    return t


def _read_once(losses: list[torch.Tensor], terms: dict[str, list[torch.Tensor]]
               ) -> tuple[list[float], dict[str, list[float]]]:
    """An epoch's step losses and loss terms (0-d tensors) as Python floats, in one transfer: the same
    numbers as ``float()`` of each (float32 values, summed afterwards in Python as before)."""
    keys = list(terms)
    rows = [losses] + [terms[k] for k in keys]
    flat = torch.cat([torch.stack([v.reshape(()) for v in row]).double() for row in rows if row]).tolist()
    out, i = [], 0
    for row in rows:
        out.append(flat[i:i + len(row)])
        i += len(row)
    return out[0], dict(zip(keys, out[1:]))


def _scalars(record: dict) -> dict[str, float]:
    """An epoch's TensorBoard scalars (tag -> value): every loss term, and the validation figures."""
    out = {f"train/{k}": v for k, v in record.items() if isinstance(v, float)}
    val = record.get("val")
    if val:
        for k in ("mean_abs_gap", "spearman", "slope", "intercept", "span_ratio", "mean_decoded_acc", "class_id_acc"):
            if k in val and isinstance(val[k], float) and not math.isnan(val[k]):
                out[f"val/{k}"] = val[k]
    return out


def _short(s: dict, protocol: str) -> str:
    if protocol == "single":
        return f"mean |gap| {s['mean_abs_gap']:.4f} spearman {s['spearman']:.3f}"
    acc = s.get("class_id_acc", math.nan)
    return f"mean decoded acc {s['mean_decoded_acc']:.4f} ClassId acc {acc:.3f}"
