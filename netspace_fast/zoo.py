"""Batched zoo training (issue 4): B instances of one architecture trained as one job.

The B instances live in one module with every parameter stacked along a leading B dimension. The
activations of a convolution are either ONE grouped channels-last tensor (the layout of
:mod:`netspace_fast.grouped`): the conv is one grouped convolution over all instances, and
BatchNorm over the B*C network-major channels IS per-instance BatchNorm (statistics per instance,
running statistics per instance); or B per-instance channels-last tensors, each conv and BatchNorm
run per instance. :mod:`netspace_fast.layout` picks per layer from the work per instance. Adam and SGD
(momentum, weight decay) act elementwise, so one optimizer over the stacked parameters keeps
per-instance optimizer state. Each instance has its own initialization seed and its own data
order and augmentation draws, so training B instances together gives the instances each would
get alone (tested).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import archs
from .archs import ArchSpec, SpecNet
from .data import MEAN, STD
from .layout import flatten, plan_blocks, to_grouped, to_split
from .ops.batched_ref import ACT_CODES, apply_act
from .ops.gather import gather_grouped, gather_grouped_ref

CL = torch.channels_last

__all__ = ["BatchedZooNet", "crop_flip_draws", "random_crop_flip", "train_epoch", "evaluate", "make_optimizer",
           "train_zoo", "PRESETS"]


def _key(name: str) -> str:
    return name.replace(".", "__")


class BatchedZooNet(nn.Module):
    """B instances (BN form) of one architecture, parameters stacked: forward (B, N, ...) -> (B, N, out)."""

    def __init__(self, models: list[SpecNet]) -> None:
        super().__init__()
        if not models:
            raise ValueError("models: expected at least one network")
        spec = models[0].spec
        for i, m in enumerate(models):
            if not isinstance(m, SpecNet) or m.spec != spec or m.batchnorm != models[0].batchnorm:
                raise ValueError(f"models: model {i} is not a {spec.name}/{spec.dataset} like model 0")
        self.spec: ArchSpec = spec
        self.B = len(models)
        self.batchnorm = models[0].batchnorm
        self.eps: dict[str, float] = {}
        self.momentum: dict[str, float] = {}
        states = [m.state_dict() for m in models]
        for name in states[0]:
            stacked = torch.stack([s[name].detach().clone() for s in states])
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                self.register_buffer(_key(name), stacked)
            else:
                self.register_parameter(_key(name), nn.Parameter(stacked))
        for layer in spec.layers:
            if self.batchnorm and layer.bn is not None:
                bn = models[0].get_submodule(layer.bn)
                self.eps[layer.bn], self.momentum[layer.bn] = bn.eps, bn.momentum

    def _t(self, name: str) -> torch.Tensor:
        return getattr(self, _key(name))

    def forward(self, x: torch.Tensor, *, grouped: bool = False) -> torch.Tensor:
        """x: (B, N, C, H, W), one batch per instance; or, with ``grouped=True``, the grouped input
        (N, B*C, H, W) itself, instance b's channels at b*C.. (what :func:`gather_grouped` writes
        straight from the dataset: no relayout here)."""
        B, (C, *rest) = self.B, self.spec.input_shape
        dims = ", ".join(map(str, rest))
        if grouped:
            if x.dim() != 2 + len(rest) or tuple(x.shape[1:]) != (B * C, *rest):
                raise ValueError(f"x: expected (N, B*C={B * C}, {dims}) with grouped=True, got {tuple(x.shape)}")
            values = {0: x.contiguous(memory_format=CL)}
        else:
            if x.dim() != 3 + len(rest) or x.shape[0] != B:
                raise ValueError(f"x: expected (B={B}, N, {C}, {dims}), got {tuple(x.shape)}")
            N = x.shape[1]
            values = {0: x.transpose(0, 1).reshape(N, B * C, *rest).contiguous(memory_format=CL)}
        cache: dict[tuple[int, str], object] = {}

        def value(v: int, form: str):  # an activation in the form a layer wants, converted once
            if (v, form) not in cache:
                cache[(v, form)] = to_split(values[v], B) if form == "split" else to_grouped(values[v])
            return cache[(v, form)]

        layers = self.spec.layers
        x0 = values[0]
        if x0.dim() == 4:
            blocks = plan_blocks([(lay.kind, lay.src, lay.dst, lay.out_features, lay.kernel, lay.stride, lay.padding)
                                  for lay in layers], x0.shape[0], tuple(x0.shape[-2:]), x0.device)
        else:
            blocks = [(i, i + 1, False) for i in range(len(layers))]
        for start, stop, split in blocks:
            if split:
                self._split_block(layers[start:stop], values, value)
                continue
            layer = layers[start]
            h = values[layer.src]
            if layer.kind == "conv":
                z = self._conv(layer, value(layer.src, "grouped"))
            elif layer.kind == "linear":
                z = _StackedLinear.apply(h, self._t(f"{layer.name}.weight"), self._t(f"{layer.name}.bias"))
            elif layer.kind == "avgpool":
                z = F.avg_pool2d(value(layer.src, "grouped"), layer.kernel, layer.stride)
            else:  # (B, N, C*H*W), each instance's own (c, h, w) order
                z = flatten(h, B)
            if layer.residual is not None:
                z = z + (value(layer.residual, "grouped") if layer.kind in ("conv", "avgpool")
                         else values[layer.residual])
            values[layer.dst] = _activation(z, layer.act)
        return values[layers[-1].dst]

    def _bias(self, layer) -> torch.Tensor | None:
        return self._t(f"{layer.name}.bias") if hasattr(self, _key(f"{layer.name}.bias")) else None

    def _bn(self, layer) -> str | None:
        """The layer's BatchNorm (None without); counts the step like nn.BatchNorm2d in training."""
        if not (self.batchnorm and layer.bn is not None):
            return None
        if self.training:
            self._t(f"{layer.bn}.num_batches_tracked").add_(1)
        return layer.bn

    def _conv(self, layer, h):
        """conv (+ per-instance BatchNorm) of all instances as ONE grouped call."""
        w, bias = self._t(f"{layer.name}.weight"), self._bias(layer)
        z = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1) if bias is not None else None,
                     layer.stride, layer.padding, 1, self.B)
        bn = self._bn(layer)
        if bn is not None:
            z = F.batch_norm(z, self._t(f"{bn}.running_mean").view(-1), self._t(f"{bn}.running_var").view(-1),
                             self._t(f"{bn}.weight").reshape(-1), self._t(f"{bn}.bias").reshape(-1), self.training,
                             self.momentum[bn], self.eps[bn])
        return z

    def _split_block(self, block, values, value) -> None:
        """Per-instance convs (+ BatchNorm) and pools, instance by instance (see layout.plan_blocks)."""
        B = self.B
        inside = {layer.dst for layer in block}
        outside = {v: value(v, "split") for layer in block for v in (layer.src, layer.residual)
                   if v is not None and v not in inside}
        out = {v: [None] * B for v in inside}
        params = [self._instance_params(layer) if layer.kind == "conv" else None for layer in block]
        for b in range(B):
            for layer, prm in zip(block, params):
                h = out[layer.src][b] if layer.src in inside else outside[layer.src][b]
                if layer.kind == "conv":
                    ws, bs, bn = prm
                    z = F.conv2d(h, ws[b], bs[b], layer.stride, layer.padding)
                    if bn is not None:  # running statistics updated in place through the per-instance views
                        rm, rv, gs, be, name = bn
                        z = F.batch_norm(z, rm[b], rv[b], gs[b], be[b], self.training, self.momentum[name],
                                         self.eps[name])
                else:
                    z = F.avg_pool2d(h, layer.kernel, layer.stride)
                if layer.residual is not None:
                    z = z + (out[layer.residual][b] if layer.residual in inside else outside[layer.residual][b])
                out[layer.dst][b] = _activation(z, layer.act)
        values.update(out)

    def _instance_params(self, layer):
        """Per-instance views of a conv layer's weights, bias and BatchNorm tensors. unbind: ONE
        backward node stacks the B gradients (indexing would add B full-size buffers)."""
        w, bias, name = self._t(f"{layer.name}.weight"), self._bias(layer), self._bn(layer)
        bn = None if name is None else (self._t(f"{name}.running_mean"), self._t(f"{name}.running_var"),
                                        self._t(f"{name}.weight").unbind(0), self._t(f"{name}.bias").unbind(0), name)
        return w.unbind(0), (bias.unbind(0) if bias is not None else [None] * self.B), bn

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One SpecNet state dict per instance (the BN form, as trained)."""
        names = [k.replace("__", ".") for k in self.state_dict()]
        full = self.state_dict()
        return [{n: full[_key(n)][b].detach().clone() for n in names} for b in range(self.B)]

    def preps(self, width: int = 10_000, height: int | None = None) -> torch.Tensor:
        """(B, H, W) PReps of the trained instances, BatchNorm folded by the fused pack kernel."""
        from .prep import pack_preps

        with torch.no_grad():
            return pack_preps(self.instances(), width, height)

    def instances(self) -> list[SpecNet]:
        out = []
        for sd in self.state_dicts():
            m = archs.build(self.spec.name, self.spec.dataset, batchnorm=self.batchnorm)
            m.load_state_dict(sd)
            out.append(m.eval())
        return out


#: the padding value of random crops of images normalized as in netspace_fast.data: black
NORMALIZED_BLACK = tuple(-m / s for m, s in zip(MEAN, STD))


def crop_flip_draws(M: int, pad: int, gen: torch.Generator, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One instance's augmentation draws for M samples: crop offsets (M, 2) in [0, 2*pad] and flips (M,)."""
    off = torch.randint(0, 2 * pad + 1, (M, 2), generator=gen)
    flips = (torch.rand(M, generator=gen) < 0.5) & flip
    return off, flips


def _activation(z, act: str):
    """The layer's activation, in place (nothing saved for backward reads its input)."""
    return apply_act(z, ACT_CODES[act], inplace=True)


class _StackedLinear(torch.autograd.Function):
    """(B, N, in) @ (B, out, in)^T + (B, out): B linear layers, one GEMM each way.

    Autograd through ``baddbmm(bias, h, w.transpose(1, 2))`` computes the weight gradient as
    ``(h^T g)^T``, a transposed view that the gradient accumulation then copies into the
    parameter's layout; here it is computed as ``g^T h``, already (B, out, in)."""

    @staticmethod
    def forward(ctx, h, w, b):
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        h, w = ctx.saved_tensors
        gh = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), h) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.needs_input_grad[2] else None
        return gh, gw, gb


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator, flip: bool = True, fill=None) -> torch.Tensor:
    """Random crop with padding ``pad`` (value ``fill[c]``, default 0) and (if ``flip``) random horizontal
    flip, per sample of x (M, C, S, S)."""
    M = x.shape[0]
    off, flips = crop_flip_draws(M, pad, gen, flip)
    out = gather_grouped_ref(x, torch.arange(M)[None], off[None], flips[None], pad, fill)  # (M, C, S, S), B = 1
    return out.contiguous()


@dataclass
class DataOrder:
    """Per-instance data order and augmentation draws: one generator per instance."""

    gens: list[torch.Generator]

    @classmethod
    def from_seeds(cls, seeds: list[int]) -> "DataOrder":
        return cls([torch.Generator().manual_seed(10_000 + int(s)) for s in seeds])


def train_epoch(net: BatchedZooNet, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                order: DataOrder, batch_size: int, augment_pad: int = 0, flip: bool = True, fill=None) -> torch.Tensor:
    """One epoch over (images, labels) for every instance, each in its own order; returns (B,) mean loss.

    ``augment_pad``: random crops with that padding (value ``fill[c]`` per channel, default 0; for
    normalized images the normalized black, :data:`NORMALIZED_BLACK`, pads like torchvision's
    ``RandomCrop`` before normalization), and random horizontal flips if ``flip``."""
    net.train()
    B, M = net.B, images.shape[0]
    perms = [torch.randperm(M, generator=g) for g in order.gens]
    steps = math.ceil(M / batch_size)
    total = torch.zeros(B, device=images.device)
    images = images.detach().contiguous(memory_format=CL)  # once per epoch: the gather then reads C floats at once
    for t in range(steps):
        idx = torch.stack([p[t * batch_size:(t + 1) * batch_size] for p in perms]).to(images.device)  # (B, n)
        off = flips = None
        if augment_pad:  # each instance's own draws, from its own generator
            draws = [crop_flip_draws(idx.shape[1], augment_pad, g, flip) for g in order.gens]
            off = torch.stack([d[0] for d in draws]).to(images.device)
            flips = torch.stack([d[1] for d in draws]).to(images.device)
        # one pass from the dataset to the grouped channels-last input, augmentation included
        xb = gather_grouped(images, idx, off, flips, augment_pad, fill)
        yb = labels[idx]
        out = net(xb, grouped=True)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="none")
        per_instance = loss.view(B, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        per_instance.sum().backward()  # instances are independent: the sum keeps each one's gradient
        optimizer.step()
        total += per_instance.detach() * idx.shape[1]
    return (total / M).cpu()


@torch.no_grad()
def evaluate(net: BatchedZooNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(B,) accuracy of every instance on the same images."""
    net.eval()
    correct = torch.zeros(net.B, device=images.device)
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size]
        out = net(x.unsqueeze(0).expand(net.B, *x.shape))
        correct += (out.argmax(-1) == labels[s:s + batch_size]).sum(1)
    return (correct / images.shape[0]).cpu()


# ---------------------------------------------------------------------------------------------
# protocols as presets, and the resumable job that writes a zoo


@dataclass(frozen=True)
class Preset:
    """One zoo recipe (METHOD.md section 3). ``archs``: (architecture, n_train, n_val, n_test)."""

    description: str
    dataset: str
    protocol: str  # "multi" (SGD, best on validation), "single" (Adam, snapshots), "teacher"
    archs: tuple[tuple[str, int, int, int], ...]
    epochs: int
    batch_size: int = 128
    lr: float = 0.05
    milestones: tuple[int, ...] = ()
    runs: int = 0  # single: runs trained together; instances are (run, snapshot epoch)
    snapshots: tuple[int, ...] = ()
    crop_pad: int = -1  # random-crop padding; -1: size/8 (4 for 32 px, 8 for 64 px), 0: none
    flip: bool = True  # random horizontal flip (off for digits: a mirrored digit is another glyph)


def _single_schedule(last: int) -> tuple[int, ...]:
    """METHOD.md: every epoch up to 100, then every 2, 5, 10, 25, 50 epochs up to 600."""
    epochs = list(range(1, min(100, last) + 1))
    prev = 100
    for limit, step in ((200, 2), (300, 5), (400, 10), (500, 25), (600, 50)):
        epochs += range(prev + step, min(limit, last) + 1, step)
        prev = limit
    return tuple(epochs)


PRESETS: dict[str, Preset] = {
    # small presets: digits, minutes on 2 CPU cores
    # (measured: SGD lr 0.05 lets some LeNetLike instances die on digits; lr 0.02, batch 64, 60
    # epochs: 95.0-97.2% test accuracy without augmentation, 96.9-98.9% with 2-pixel random shifts)
    "digits-multi": Preset("multi protocol on digits: 8 LeNetLike, SGD, best on validation", "digits", "multi",
                           (("lenetlike", 4, 2, 2),), epochs=60, batch_size=64, lr=0.02, milestones=(30, 40, 50),
                           crop_pad=2, flip=False),
    "digits-single": Preset("single protocol on digits: LeNetLike, Adam 1e-4, snapshots of 4 runs", "digits",
                            "single", (("lenetlike", 0, 0, 0),), epochs=40, batch_size=64, lr=1e-4, runs=4,
                            snapshots=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40), crop_pad=0, flip=False),
    "digits-tiny": Preset("smoke test: 2 LeNetLike on digits, 3 epochs", "digits", "multi", (("lenetlike", 1, 1, 0),),
                          epochs=3, batch_size=64, lr=0.02, milestones=(2,), crop_pad=0, flip=False),
    # paper scale (GPU): METHOD.md section 3
    "cifar10-multi": Preset("multi protocol, CIFAR-10 (paper)", "cifar10", "multi",
                            (("lenetlike", 60, 16, 16), ("vanillacnn", 50, 16, 16), ("resnet8", 60, 16, 16),
                             ("resnet32", 100, 16, 16)), epochs=300, milestones=(150, 180, 210)),
    "cifar10-unseen": Preset("unseen-architectures training set, CIFAR-10 (paper)", "cifar10", "multi",
                             (("lenetlike", 40, 16, 16), ("resnet32", 80, 16, 16)), epochs=300,
                             milestones=(150, 180, 210)),
    "cifar10-single": Preset("single protocol, ResNet8 CIFAR-10 (paper)", "cifar10", "single",
                             (("resnet8", 0, 0, 0),), epochs=600, lr=1e-4, runs=4, snapshots=_single_schedule(600)),
    "cifar10-teacher": Preset("ResNet56 teacher, CIFAR-10 (paper)", "cifar10", "multi", (("resnet56", 1, 0, 0),),
                              epochs=300, milestones=(150, 180, 210)),
    "tinyimagenet-multi": Preset("multi protocol, Tiny-ImageNet (paper)", "tinyimagenet", "multi",
                                 (("lenetlike", 60, 16, 16), ("vanillacnn", 50, 16, 16), ("resnet8", 60, 16, 16),
                                  ("resnet32", 100, 16, 16)), epochs=300, milestones=(150, 180, 210)),
}


def _atomic_torch_save(obj, path) -> None:
    import os
    import tempfile

    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _maybe_die(epoch: int) -> None:
    """Test hook: NETSPACE_TEST_SIGKILL_AFTER_EPOCH=k kills this process right after epoch k's
    checkpoint, the moment a real kill is most likely to lose work (tests/test_zoo_train.py)."""
    import os
    import signal

    if os.environ.get("NETSPACE_TEST_SIGKILL_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)


def make_optimizer(net: nn.Module, protocol: str, lr: float) -> torch.optim.Optimizer:
    """The protocol's optimizer over the stacked parameters (METHOD.md section 3): Adam for
    ``single``, SGD (momentum 0.9, weight decay 5e-4) otherwise. The fused implementation (one
    pass per parameter for decay, momentum and update) where this torch has it for the device;
    the same arithmetic, per element, so per-instance state stays per instance."""
    kind, kw = ((torch.optim.Adam, {}) if protocol == "single"
                else (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 5e-4}))
    try:
        return kind(net.parameters(), lr=lr, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / torch version
        return kind(net.parameters(), lr=lr, **kw)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _distributed(device: str):
    """(rank, world, device, dist, owned) under torchrun (WORLD_SIZE > 1), else (0, 1, device, None, False).

    The process group is gloo on CPU and NCCL on CUDA (``owned``: created here, so destroyed by the
    caller); each rank trains on its LOCAL_RANK GPU."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device, None, False
    import torch.distributed as dist

    if device.startswith("cuda") and ":" not in device:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, dist, owned


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n)`` that rank ``rank`` of ``world`` trains (sizes differ by <= 1)."""
    return range(n * rank // world, n * (rank + 1) // world)


def train_zoo(out_dir, preset: str, *, root=None, seed: int = 0, device: str = "cpu", progress: bool = True,
              tensorboard=None):
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
    instance has its own seed and data order). Resuming needs the same K (checkpoints are per
    block); instances already in the manifest are never retrained, whatever K.
    ``tensorboard``: a log directory for per-epoch scalars (needs the ``tensorboard`` package).
    """
    from pathlib import Path

    from . import data, zoo_format

    if preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    writer = _tensorboard_writer(tensorboard)  # a missing package is reported before any work
    rank, world, device, dist, owned = _distributed(device)
    out = Path(out_dir)
    config = {"preset": preset, "seed": int(seed), "dataset": p.dataset, "protocol": p.protocol,
              "archs": [list(a) for a in p.archs], "epochs": p.epochs, "lr": p.lr, "runs": p.runs,
              "snapshots": list(p.snapshots), "milestones": list(p.milestones), "batch_size": p.batch_size,
              "crop_pad": p.crop_pad, "flip": p.flip}
    zoo_format.init_zoo(out, config)
    splits = {s: data.tensors(p.dataset, s, root=root, seed=seed) for s in ("train", "val", "test")}
    splits = {s: (x.to(device), y.to(device)) for s, (x, y) in splits.items()}
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
            if all(i in done for i in ids):  # (a rank with an empty block has nothing to do)
                _log(show, f"{arch}: all {len(ids)} instances{' of rank 0' if world > 1 else ''} already in the zoo")
                continue
            _train_job(out, p, arch, (n_train, n_val, n_test), seeds, mine, splits, pad, done, device, show, job,
                       writer, world)
    finally:
        if writer is not None:
            writer.close()
    if dist is not None:
        dist.barrier()  # every rank's instances are in the manifest before anyone reports success
        if owned:
            dist.destroy_process_group()
    return out


def _instance_ids(p: Preset, arch: str, k: int) -> list[str]:
    """The zoo ids that job member ``k`` yields (multi: one instance; single: one per snapshot)."""
    return [f"{arch}-r{k}-e{e:03d}" for e in p.snapshots] if p.protocol == "single" else [f"{arch}-{k:03d}"]


def _tensorboard_writer(logdir):
    if logdir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError(f"tensorboard: logging scalars to {str(logdir)!r} needs the 'tensorboard' package, which "
                         f"is not installed (pip install tensorboard): {e}") from None
    return SummaryWriter(str(logdir))


def _train_job(out, p: Preset, arch: str, counts, seeds_all, mine: range, splits, pad, done, device, progress, job,
               writer=None, world: int = 1) -> None:
    from . import zoo_format

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
    block = "" if len(mine) == len(seeds_all) else f"-{mine.start}-{mine.stop}"
    ckpt = out / ".checkpoints" / f"{job}-{arch}{block}.pt"
    if ckpt.exists():  # resume from the last completed epoch
        state = torch.load(ckpt, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        if sched is not None:
            sched.load_state_dict(state["sched"])
        for g, s in zip(order.gens, state["gens"]):
            g.set_state(s)
        best_acc, best_state, start = state["best_acc"].cpu(), state["best_state"], state["epoch"]
        _log(progress, f"{arch}: resuming after epoch {start}")
    xtr, ytr = splits["train"]
    # single protocol: which split each (run, snapshot) instance goes to, 100:16:16, from the seed
    if p.protocol == "single":
        n = len(seeds_all) * len(p.snapshots)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seeds_all[0]))
        n_val = n_test = max(1, round(n * 16 / 132))
        where = {}
        for rank, k in enumerate(perm.tolist()):
            where[k] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    bar = _progress_bar(progress, arch, start, p.epochs, B, world)
    for epoch in range(start + 1, p.epochs + 1):
        loss = train_epoch(net, opt, xtr, ytr, order, p.batch_size, pad, p.flip, list(NORMALIZED_BLACK))
        if sched is not None:
            sched.step()
        if p.protocol == "single" and epoch in p.snapshots:
            accs = {s: evaluate(net, *splits[s]) for s in ("train", "val", "test")}
            for r, m in zip(mine, net.instances()):
                k = r * len(p.snapshots) + p.snapshots.index(epoch)
                iid = f"{arch}-r{r}-e{epoch:03d}"
                if iid not in done:
                    zoo_format.write_instance(out, m, id=iid, arch=arch, dataset=p.dataset, protocol=p.protocol,
                                              seed=seeds_all[r], epoch=epoch,
                                              acc={s: float(a[r - mine.start]) for s, a in accs.items()},
                                              split=where[k])
        elif p.protocol != "single":
            val = evaluate(net, *splits["val"])
            better = val > best_acc
            if bool(better.any()):
                for k, v in net.state_dict().items():
                    mask = better.to(v.device)
                    best_state[k][mask] = v.detach()[mask]
                best_acc = torch.where(better, val, best_acc)
        _atomic_torch_save({"net": net.state_dict(), "opt": opt.state_dict(),
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
            _log(progress, f"{arch}: epoch {epoch}/{p.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
        _maybe_die(epoch)
    if bar is not None:
        bar.close()
    if p.protocol != "single":  # the best-on-validation instances are final now
        net.load_state_dict(best_state)
        accs = {s: evaluate(net, *splits[s]) for s in ("train", "val", "test")}
        n_train, n_val, _ = counts
        for i, m in zip(mine, net.instances()):
            iid = f"{arch}-{i:03d}"
            if iid in done:
                continue
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            zoo_format.write_instance(out, m, id=iid, arch=arch, dataset=p.dataset, protocol=p.protocol,
                                      seed=seeds_all[i], epoch=p.epochs,
                                      acc={s: float(a[i - mine.start]) for s, a in accs.items()}, split=split)
        _log(progress, f"{arch}: {len(mine)} instances written (best val acc mean {float(best_acc.mean()):.4f})")


def _progress_bar(progress: bool, arch: str, start: int, epochs: int, B: int, world: int):
    """A tqdm bar over epochs on stderr (rank 0 only under torchrun). None without progress; also
    when stderr is not a terminal (a log file gets one line per epoch, not carriage-return
    redraws) or tqdm is missing (a bare environment such as the GPU machine)."""
    if not progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None

    who = f"{B} instances" + (f", rank 0 of {world}" if world > 1 else "")
    return tqdm(total=epochs, initial=start, desc=f"{arch} ({who})", unit="epoch", dynamic_ncols=True,
                file=sys.stderr)
