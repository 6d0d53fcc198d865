"""The resumable zoo job: ``train_zoo(out_dir, preset)`` trains every architecture of a preset as
one batched job, checkpoints atomically after every epoch, writes finished instances into the zoo
(never twice) and resumes after a kill from the last completed epoch."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import torch

from .. import archs, data
from ..killpoint import after_checkpoint
from ..monitor import log, progress_bar, tensorboard_writer
from ..storage import TMP_PREFIX, atomic_write_bytes, load_error_reason, locked
from . import format as zoo_format
from .augment import NORMALIZED_BLACK
from .distributed import setup_distributed, shard
from .loop import DataOrder, evaluate, make_optimizer, train_epoch
from .model import BatchedZooNet
from .presets import PRESETS, TEACHER, Preset

__all__ = ["train_zoo"]


_CHECKPOINT_KEYS = frozenset({"net", "opt", "sched", "gens", "best_acc", "best_state", "epoch"})


def _save_checkpoint(state: dict, path) -> None:
    """The job state after an epoch, written atomically (netspace_fast.storage)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path, device) -> dict:
    """The job state written by :func:`_save_checkpoint`, read with ``torch.load(..., weights_only=True)``:
    a checkpoint holds only tensors, numbers, strings and containers (the data-order generators'
    states are byte tensors), so a planted file that pickles anything else is refused and runs no code."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise ValueError(f"checkpoint {str(path)!r}: expected a zoo job checkpoint that "
                         f"torch.load(..., weights_only=True) can read, got a file it refuses "
                         f"({load_error_reason(e)}); delete it to restart this job from "
                         f"epoch 0") from None
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= set(state):
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {str(path)!r}: expected a dict with keys {sorted(_CHECKPOINT_KEYS)}, got {got}; "
                         f"delete it to restart this job from epoch 0")
    return state


def train_zoo(out_dir, preset: str, *, root=None, seed: int = 0, device: str = "cpu", progress: bool = True,
              tensorboard=None, download: bool = False, arch: str | None = None):
    """Train the zoo of ``preset`` into ``out_dir``; resumable after a kill, refuses another config.

    Each architecture is one batched job (all its instances trained together). The job state is
    checkpointed atomically after every epoch (``out_dir/.checkpoints``); finished instances go to
    the zoo as they are final (multi: best on validation, at the end; single: each snapshot at its
    epoch) and are never written twice: a rerun of the same command resumes from the last
    completed epoch and skips instances already in the manifest.

    Under ``torchrun --nproc_per_node=K`` (WORLD_SIZE > 1) every job's instances are sharded over
    the K ranks (contiguous blocks; gloo on CPU, NCCL on CUDA): each rank trains its block as one
    batched job and writes its instances into the same manifest (manifest updates are serialized
    by a file lock), so the result is one zoo with the same instances as a one-process run (every
    instance has its own seed and data order). Checkpoints are per block of instances: a rerun with
    another K whose blocks differ is refused (one line naming both counts) while a checkpoint holds
    instances not yet in the zoo, rather than training them again from epoch 0; instances already in
    the manifest are never retrained, whatever K. Temporary files of writes cut by a kill are removed
    on the rerun.
    ``tensorboard``: a log directory for per-epoch scalars (needs the ``tensorboard`` package).
    ``download``: fetch the preset's dataset into ``root`` first (:func:`netspace_fast.data.download`).
    ``arch``: train this architecture instead (a name, or ``package.module:factory`` for a user
    architecture, see :func:`netspace_fast.archs.register`): it replaces the architecture of a
    preset with one (its counts kept); a preset with several gets it as one more, with the first
    one's counts (the teacher stays). A user architecture's name, factory path and spec digest are
    recorded in the zoo's config, so the zoo reopens wherever the factory is importable.
    """

    if preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    if arch is not None:
        p = with_arch(p, arch)
    rank, world, device, dist, owned = setup_distributed(device)  # no GPU where one is asked for: refused here
    writer = tensorboard_writer(tensorboard)  # a missing package is reported before any work (LOGDIR made later)
    if rank == 0:
        data.fetch(p.dataset, root, download)
    if dist is not None and download:
        dist.barrier()  # the other ranks read what rank 0 fetched
    out = Path(out_dir)
    config = {"preset": preset, "seed": int(seed), "dataset": p.dataset, "protocol": p.protocol,
              "archs": [list(a) for a in p.archs], "epochs": p.epochs, "lr": p.lr, "runs": p.runs,
              "snapshots": list(p.snapshots), "milestones": list(p.milestones), "batch_size": p.batch_size,
              "crop_pad": p.crop_pad, "flip": p.flip, **p.config()}
    user = user_archs([a[0] for a in p.archs], p.dataset)
    if user:
        config["user_archs"] = user
    _refuse_other_rank_count(out, p, world)  # checkpoints of another rank count: refused before any work
    # the inputs first (the dataset's files, the device): a start that fails on them writes nothing
    splits = {s: data.tensors(p.dataset, s, root=root, seed=seed) for s in ("train", "val", "test")}
    splits = {s: (x.to(device), y.to(device)) for s, (x, y) in splits.items()}
    zoo_format.init_zoo(out, config)
    with locked(out):  # every writer of the zoo's files writes under this lock: a temporary file seen
        for tmp in out.glob(f"{TMP_PREFIX}*"):  # here is a killed writer's (zoo verify would report it)
            tmp.unlink(missing_ok=True)
    if p.eval_images:  # accuracies of train/val on a fixed subset; training still draws from all of train
        g = torch.Generator().manual_seed(int(seed) + 7)
        sub = {s: torch.randperm(len(splits[s][1]), generator=g)[:p.eval_images].sort().values for s in ("train", "val")}
        splits["eval_train"] = tuple(t[sub["train"].to(device)] for t in splits["train"])
        splits["eval_val"] = tuple(t[sub["val"].to(device)] for t in splits["val"])
    else:
        splits["eval_train"], splits["eval_val"] = splits["train"], splits["val"]
    (out / ".checkpoints").mkdir(exist_ok=True)
    pad = archs.DATASETS[p.dataset][1] // 8 if p.crop_pad < 0 else p.crop_pad
    show = progress and rank == 0
    try:
        for job, (arch, n_train, n_val, n_test) in enumerate(p.archs):
            B = p.runs if p.protocol == "single" else n_train + n_val + n_test
            seeds = [int(seed) * 100_000 + job * 1_000 + i for i in range(B)]
            mine = shard(B, rank, world)
            done = {e["id"] for e in zoo_format.Zoo.open(out).instances()}
            ids = [i for k in mine for i in _instance_ids(p, arch, k)]
            for tmp in (out / ".checkpoints").glob(f"{TMP_PREFIX}{_checkpoint(out, job, arch, mine, B).name}.*"):
                tmp.unlink(missing_ok=True)  # a killed write's (only this rank writes this checkpoint)
            if all(i in done for i in ids):  # (a rank with an empty block has nothing to do)
                log(show, f"{arch}: all {len(ids)} instances{' of rank 0' if world > 1 else ''} already in the zoo")
                continue
            _train_job(out, p, arch, (n_train, n_val, n_test), seeds, mine, splits, pad, done, device, show, job,
                       writer, rank, world)
    finally:
        if writer is not None:
            writer.close()
    if dist is not None:
        dist.barrier()  # every rank's instances are in the manifest before anyone reports success
        if owned:
            dist.destroy_process_group()
    return out


def with_arch(p, arch: str):
    """The preset ``p`` with architecture ``arch`` (see :func:`train_zoo`); the spec is traced here,
    so an unsupported network is refused before any data is read."""
    import dataclasses

    name = archs.resolve(arch)
    archs.spec(name, p.dataset)
    students = [a for a in p.archs if a[0] != TEACHER or p.protocol != "multi"]
    if len(students) <= 1:
        new = tuple((name, *a[1:]) if a in students else a for a in p.archs)
    elif any(a[0] == name for a in p.archs):
        new = p.archs
    else:
        new = (*students, (name, *students[0][1:]), *(a for a in p.archs if a not in students))
    return dataclasses.replace(p, archs=new)


def user_archs(names, dataset: str) -> dict:
    """The zoo config's record of the user architectures among ``names``: name -> factory path and
    spec digest. A factory that is not importable by path (defined in ``__main__``) is refused: the
    zoo could not be reopened by anyone else."""
    out = {}
    for name in names:
        reg = archs.registered(name)
        if reg is None:
            continue
        if reg.path is None:
            raise ValueError(f"arch: the factory of {name!r} is not importable by path (defined in __main__ or a "
                             f"local function); define it in a module and pass package.module:factory")
        out[name] = {"factory": reg.path, "spec": archs.spec_hash(archs.spec(name, dataset))}
    return out


def _checkpoint(out: Path, job: int, arch: str, mine: range, B: int) -> Path:
    """The resume checkpoint of block ``mine`` of job ``job`` (its B members)."""
    block = "" if len(mine) == B else f"-{mine.start}-{mine.stop}"
    return out / ".checkpoints" / f"{job}-{arch}{block}.pt"


def _refuse_other_rank_count(out: Path, p: Preset, world: int) -> None:
    """ValueError (one line) if a job's checkpoint was written for another number of ranks and holds
    instances not yet in the zoo: this run would silently train them again from epoch 0."""
    has_zoo = (out / zoo_format.MANIFEST_NAME).is_file()  # read before the zoo is created or resumed
    done = {e["id"] for e in zoo_format.Zoo.open(out).instances()} if has_zoo else set()
    for job, (arch, n_train, n_val, n_test) in enumerate(p.archs):
        B = p.runs if p.protocol == "single" else n_train + n_val + n_test
        blocks = {(b.start, b.stop) for b in (shard(B, r, world) for r in range(world)) if len(b)}
        for f in sorted((out / ".checkpoints").glob(f"{job}-{arch}*.pt")):
            m = re.fullmatch(rf"{job}-{re.escape(arch)}(?:-(\d+)-(\d+))?\.pt", f.name)
            if m is None:
                continue
            block = (int(m[1]), int(m[2])) if m[1] else (0, B)
            if block in blocks or all(i in done for k in range(*block) for i in _instance_ids(p, arch, k)):
                continue  # ours, or finished: nothing to lose
            k = next((k for k in range(1, B + 1) if block in {(b.start, b.stop) for b in
                                                            (shard(B, r, k) for r in range(k))}), None)
            were = f"{k} rank{'s' if k != 1 else ''}" if k else "another number of ranks"
            what = "runs" if p.protocol == "single" else "instances"
            raise ValueError(f"checkpoint {str(f)!r} holds {arch} {what} {block[0]}..{block[1] - 1} as trained "
                             f"by {were}; this run has {world} rank{'s' if world != 1 else ''}: rerun with {were} "
                             f"to resume them, or delete that file to train them again from epoch 0")


def _instance_ids(p: Preset, arch: str, k: int) -> list[str]:
    """The zoo ids that job member ``k`` yields (multi: one instance; single: one per snapshot)."""
    return [f"{arch}-r{k}-e{e:03d}" for e in p.snapshots] if p.protocol == "single" else [f"{arch}-{k:03d}"]


def _train_job(out, p: Preset, arch: str, counts, seeds_all, mine: range, splits, pad, done, device, progress, job,
               writer=None, rank: int = 0, world: int = 1) -> None:
    seeds = seeds_all[mine.start:mine.stop]
    B = len(seeds)
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(archs.build(arch, p.dataset))
    net = BatchedZooNet(models).to(device)
    opt = make_optimizer(net, p.protocol, p.lr)
    sched = None if p.protocol == "single" else torch.optim.lr_scheduler.MultiStepLR(opt, list(p.milestones), 0.1)
    order = DataOrder.from_seeds(seeds)
    best_acc = torch.full((B,), -1.0)
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    start = 0
    ckpt = _checkpoint(out, job, arch, mine, len(seeds_all))
    if ckpt.exists():  # resume from the last completed epoch
        state = _load_checkpoint(ckpt, device)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        if sched is not None:
            sched.load_state_dict(state["sched"])
        for g, s in zip(order.gens, state["gens"]):
            g.set_state(s.cpu())  # CPU generators: their states were mapped to ``device`` with the rest
        best_acc, best_state, start = state["best_acc"].cpu(), state["best_state"], state["epoch"]
        if world > 1:  # every rank says it (a rerun must prove each rank resumed), not only rank 0
            print(f"{arch}: rank {rank} of {world}: resuming after epoch {start}",
                  file=sys.stderr, flush=True)
        else:
            log(progress, f"{arch}: resuming after epoch {start}")
    xtr, ytr = splits["train"]
    # single protocol: which split each (run, snapshot) instance goes to, 100:16:16, from the seed
    if p.protocol == "single":
        n = len(seeds_all) * len(p.snapshots)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seeds_all[0]))
        n_val = n_test = max(1, round(n * 16 / 132))
        where = {}
        for pos, k in enumerate(perm.tolist()):
            where[k] = "val" if pos < n_val else "test" if pos < n_val + n_test else "train"
    who = f"{B} instances" + (f", rank 0 of {world}" if world > 1 else "")
    bar = progress_bar(progress, f"{arch} ({who})", start, p.epochs)
    for epoch in range(start + 1, p.epochs + 1):
        loss = train_epoch(net, opt, xtr, ytr, order, p.batch_size, pad, p.flip, list(NORMALIZED_BLACK),
                           limit=p.images_per_epoch)
        if sched is not None:
            sched.step()
        if p.protocol == "single" and epoch in p.snapshots:
            accs = {s: evaluate(net, *splits[f"eval_{s}" if s != "test" else s]) for s in ("train", "val", "test")}
            for r, m in zip(mine, net.instances()):
                k = r * len(p.snapshots) + p.snapshots.index(epoch)
                iid = f"{arch}-r{r}-e{epoch:03d}"
                if iid not in done:
                    zoo_format.write_instance(out, m, id=iid, arch=arch, dataset=p.dataset, protocol=p.protocol,
                                              seed=seeds_all[r], epoch=epoch,
                                              acc={s: float(a[r - mine.start]) for s, a in accs.items()},
                                              split=where[k])
        elif p.protocol != "single":
            val = evaluate(net, *splits["eval_val"])
            better = val > best_acc
            if bool(better.any()):
                for k, v in net.state_dict().items():
                    mask = better.to(v.device)
                    best_state[k][mask] = v.detach()[mask]
                best_acc = torch.where(better, val, best_acc)
        _save_checkpoint({"net": net.state_dict(), "opt": opt.state_dict(),
                          "sched": sched.state_dict() if sched is not None else None,
                          "gens": [g.get_state() for g in order.gens], "best_acc": best_acc,
                          "best_state": best_state, "epoch": epoch}, ckpt)
        scalars = {"loss": float(loss.mean())}
        if p.protocol != "single":
            scalars["best_val_acc"] = float(best_acc.mean())
        if writer is not None:
            for name, v in scalars.items():
                writer.add_scalar(f"{arch}/{name}", v, epoch)
            writer.add_histogram(f"{arch}/instance_loss", loss, epoch)
            writer.flush()
        if bar is not None:
            bar.set_postfix({k: round(v, 4) for k, v in scalars.items()}, refresh=False)
            bar.update(1)
        else:
            log(progress, f"{arch}: epoch {epoch}/{p.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
        after_checkpoint(epoch)
    if bar is not None:
        bar.close()
    if p.protocol != "single":  # the best-on-validation instances are final now
        net.load_state_dict(best_state)
        accs = {s: evaluate(net, *splits[f"eval_{s}" if s != "test" else s]) for s in ("train", "val", "test")}
        n_train, n_val, _ = counts
        for i, m in zip(mine, net.instances()):
            iid = f"{arch}-{i:03d}"
            if iid in done:
                continue
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            zoo_format.write_instance(out, m, id=iid, arch=arch, dataset=p.dataset, protocol=p.protocol,
                                      seed=seeds_all[i], epoch=p.epochs,
                                      acc={s: float(a[i - mine.start]) for s, a in accs.items()}, split=split)
        log(progress, f"{arch}: {len(mine)} instances written (best val acc mean {float(best_acc.mean()):.4f})")
