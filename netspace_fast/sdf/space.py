"""NetSpace on MLPs (METHOD.md sections 5, 6; seed Sec. V): the NetSpace encoder and decoder
trained on a zoo of SIREN SDF networks with the SDF loss.

- A step: a meta-batch of B input MLPs (PReps) is encoded and decoded; the input and the decoded
  MLPs are queried at the SAME points, each set of B networks by ONE
  :func:`netspace_fast.batched_forward` call (the input MLPs' outputs without gradient); loss = MSE
  between the two outputs, averaged over points and networks. ``points_from``: ``"uniform"`` (zoos
  without recorded shapes; the tiny preset): N points uniform in the bounding cube [-1, 1]^3 (the box
  the shapes are normalized into), shared by the B networks; ``"shapes"`` (the original code,
  ``data/mlpdset.py``; the small and paper presets): each MLP's own N points drawn from its shape's
  SDF samples (the zoo's shapes, rebuilt from its configuration by :func:`zoo_shapes`; DeepSDF
  files: half ``pos``, half ``neg``), so mostly near the surface.
- Metric (the paper's): the fraction of points where |decoded - input| <= ``tolerance`` (0.01),
  per network; :func:`within_fraction`. At every validation epoch it is computed for every training
  and every validation MLP on fixed points, the same at every validation (:func:`metric_points`:
  ``eval_points`` uniform points seeded by the run's seed, or each MLP's first ``eval_points``
  held-out points of its shape), and averaged over the networks: ``train_within`` and
  ``val_within``. Training stops when ``train_within`` reaches ``target`` (0.8 in the paper) or
  after the epoch budget; the weights with the best ``val_within`` are kept (``best.json``).
- An epoch (our definition: there is no image set): ``passes`` passes over the training MLPs, each
  a random permutation cut into meta-batches of ``meta_batch`` (the last one smaller when
  ``meta_batch`` does not divide the number of training MLPs), every meta-batch with fresh points.
  The paper preset uses one pass (250 steps per epoch on its 1,000 MLPs at the original's
  meta-batch 4, 50,000 points per MLP: ``train_mlps.py``).
- Resumable like the other NetSpace runs (:class:`netspace_fast.space.run.Run`: ``run.json``,
  ``state.json``, safetensors checkpoints, ``best.safetensors`` + ``best.json``; command
  ``"train sdf"``, recipe protocol ``"sdf"``): the permutation and the points of epoch e come from a
  generator seeded with (seed, e), so a run resumed from its epoch-e checkpoint continues exactly as
  an uninterrupted one. A run that reached its target records ``stopped: "target"`` and a rerun
  returns at once.
- ``prep_init="siren"`` (our design; the tiny preset): the decoder's scale-layer bias starts as the
  PRep of a freshly SIREN-initialized MLP (seeded), so every decoded network starts as a valid SIREN
  instead of the paper's U(0, 1) * 1e-2 weights (all positive, a near-constant function) and the
  decoder only has to learn the per-shape differences; ``"paper"`` keeps
  :class:`netspace_fast.space.nets.ScaleLayer`'s initialization. ``prep_lr``: the scale layer's
  own learning rate (its bias is a set of network weights, ~0.005 for SIREN's hidden layers);
  ``lr_decay``: both learning rates times ``lr_decay`` per epoch (a function of the epoch:
  resume-safe). ``prep_init="mean"`` (the small preset, for zoos fitted from one shared SIREN
  initialization, :mod:`netspace_fast.sdf.presets`): the bias starts as the mean training PRep, so
  the decoder learns each MLP's difference from the mean; ``center``: the encoder sees each PRep
  minus that mean (:class:`CenteredEncoder`; otherwise the first layer's values, ~100x the hidden
  layers' and nearly the same in every MLP of such a zoo, dominate the encoder's maxima). The small
  preset's sizes and factors are measured, see ``SDF_SPACE_PRESETS``.

Python: :func:`train_sdf_space`, :func:`sdf_step`, :func:`within_fraction`, :class:`SdfSpace`
(``SdfSpace.load(run_dir)``: encode, decode, the zoo's PReps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .. import archs
from ..archs import ArchSpec
from ..engine import batched_forward
from ..killpoint import after_checkpoint
from ..monitor import end_epoch, log, progress_bar, tensorboard_writer
from ..prep import PRepLayout, pack_preps
from ..space.nets import Decoder, Encoder, SpaceConfig
from ..space.run import Run

__all__ = ["SDF_ARCH", "SDF_SPACE_PRESETS", "CenteredEncoder", "SdfData", "SdfSpacePreset", "SdfSpace", "SdfStep",
           "build_sdf_space", "eval_points", "load_sdf_data", "metric_points", "sdf_step", "step_points",
           "train_sdf_space", "uniform_points", "within_fraction", "zoo_shapes"]

SDF_ARCH = "siren"
COMMAND = "train sdf"
TOLERANCE = 0.01  # the paper's "sufficiently close"
BOUND = 1.0  # points are drawn in [-BOUND, BOUND]^3
PREP_INITS = ("paper", "siren", "mean")  # the decoder's scale-layer bias at the start (module doc)
POINTS_FROM = ("uniform", "shapes")  # where a step's query points come from (module doc)


def _check_target(target) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise ValueError(f"target: expected a fraction in (0, 1] (the paper's 0.8), got {target!r}")
    return float(target)


@dataclass(frozen=True)
class SdfSpacePreset:
    """A recipe of ``netspace train sdf``. ``width``: PRep width; an epoch is ``passes`` passes over the
    training MLPs in meta-batches of ``meta_batch``, each step with ``points`` fresh uniform points;
    ``eval_points`` the fixed points of the metric; ``space``: :class:`SpaceConfig` sizes other than
    the PRep's (empty: the paper's); ``prep_init``: ``"paper"`` or ``"siren"`` (module doc)."""

    description: str
    width: int
    epochs: int
    meta_batch: int
    points: int
    lr: float = 1e-4
    passes: int = 1
    target: float = 0.8
    tolerance: float = TOLERANCE
    val_every: int = 1
    eval_points: int = 8192
    clip_grad: float = 0.0
    prep_lr: float = 0.0  #: > 0: the learning rate of the decoder's scale layer (0: ``lr``, the paper)
    lr_decay: float = 1.0  #: both learning rates multiplied by this after every epoch (1: constant, the paper)
    prep_init: str = "paper"
    center: bool = False  #: the encoder sees each PRep minus the training MLPs' mean PRep (module doc)
    points_from: str = "uniform"  #: "uniform" (the cube) or "shapes" (each MLP's shape samples; module doc)
    space: dict = field(default_factory=dict)
    protocol: str = "sdf"

    def __post_init__(self) -> None:
        for name in ("width", "epochs", "meta_batch", "points", "passes", "val_every", "eval_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay: expected a factor in (0, 1], got {self.lr_decay!r}")
        if self.points_from not in POINTS_FROM:
            raise ValueError(f"points_from: expected one of {POINTS_FROM}, got {self.points_from!r}")
        if self.prep_init not in PREP_INITS:
            raise ValueError(f"prep_init: expected one of {PREP_INITS}, got {self.prep_init!r}")
        _check_target(self.target)

    def lr_at(self, epoch: int) -> tuple[float, float]:
        """The learning rates (everything but the scale layer, the scale layer) of ``epoch`` (1-based)."""
        f = self.lr_decay ** (epoch - 1)
        return self.lr * f, (self.prep_lr or self.lr) * f

    @classmethod
    def from_json(cls, d: dict) -> "SdfSpacePreset":
        return cls(**d)

    def to_json(self) -> dict:
        return asdict(self)


# The small preset (our design; measured: BENCHMARKS.md, "NetSpace on SIREN MLPs (SDF)"): E = 1024, PReps of width 1024
# (68 rows for 67,073 values); the points of each MLP drawn from its own shape's samples, as the
# original does (uniform points in the cube reach 0.8 too, at epoch ~140 instead of ~65, but the
# decoded chairs are blobs: the uniform metric says little about the surface); for zoos fitted from
# one shared SIREN initialization (the fit-sdf small preset): the scale-layer bias starts as the mean
# training PRep and the encoder sees each PRep minus it (module doc), its input multiplied by 3000
# (the MLPs' differences are ~0.003 per weight; 1000: 0.47 within 0.01 after 40 epochs against 0.53
# at 3000, uniform points), decoder channels doubled (dec_b 128, dec_c 64: 18 fitted chairs plateau
# at 0.44 with 64/32), lr 1e-3 for the convolutions, 2e-4 for the scale layer (its bias IS the
# decoded weights; 5e-5: smoother, 0.8 at epoch 170 instead of 140, uniform points), x0.99 per epoch;
# an epoch is 4 passes over the training MLPs. On the fit-sdf small zoo (18 training chairs) it
# reaches 0.8 at epoch ~65 (~2 minutes). With a zoo fitted per shape (every MLP its own random
# initialization) the same recipe on uniform points stalls at 0.38, and a SIREN-initialized bias
# (the previous small preset) reached 0.65 after 150 epochs.
_SMALL = {"embed": 1024, "view": 32, "dec_a": 16, "dec_b": 128, "dec_c": 64, "prep_scale": 3000.0}
_TINY = {"embed": 256, "view": 16, "dec_a": 8, "dec_b": 16, "dec_c": 8, "prep_scale": 1000.0}

SDF_SPACE_PRESETS: dict[str, SdfSpacePreset] = {
    "sdf-small": SdfSpacePreset("NetSpace on a few dozen SIREN MLPs (CPU, minutes)", 1024, epochs=300, meta_batch=4,
                                points=2048, lr=1e-3, prep_lr=2e-4, lr_decay=0.99, passes=4, val_every=5,
                                eval_points=4096, prep_init="mean", center=True, points_from="shapes",
                                space=_SMALL),
    "sdf-tiny": SdfSpacePreset("smoke test: a tiny SDF space, 3 epochs", 1024, epochs=3, meta_batch=2, points=256,
                               lr=1e-3, prep_lr=2e-4, eval_points=1024, prep_init="siren", space=_TINY),
    # the paper (seed Sec. V) as the original code runs it (train_mlps.py, trainers/mlps.py): SpaceConfig.paper
    # (PReps 8 x 10,000), meta-batch 4, Adam 1e-4, 50,000 points per MLP per step drawn from its shape's
    # samples (half pos, half neg), stop at 0.8 (4,000 epochs for its figures); the metric on each MLP's
    # held-out shape points (20,000 with the paper fit-sdf preset)
    "sdf-paper": SdfSpacePreset("NetSpace on 1,000 chair MLPs (paper: E = 4096, width 10,000, meta-batch 4, Adam "
                                "1e-4, 50,000 shape points per MLP, up to 4,000 epochs, stop at 0.8)", 10_000,
                                epochs=4000, meta_batch=4, points=50_000, lr=1e-4, val_every=10, eval_points=20_000,
                                points_from="shapes"),
}
# real chairs (netspace shapes extract-chairs, fit-sdf --preset chairs: 37 training MLPs, more detail than the
# procedural chairs): sdf-small with the learning rates decaying x0.98 a epoch instead of x0.99 and the scale
# layer at 1e-4 instead of 2e-4. The scale layer's bias IS the decoded weights and Adam moves it by ~its learning
# rate every step, a noise floor on every decoded MLP: on these chairs sdf-small is at 0.33 of the points within
# 0.01 after 30 epochs; x0.97 a epoch levels off at ~0.74 (scale layer 2e-4) or ~0.77 (1e-4); x0.98 with the
# scale layer at 1e-4 reaches 0.8 at epoch 155, 19 min on 2 cores (BENCHMARKS.md, "Real chairs")
SDF_SPACE_PRESETS["sdf-chairs"] = replace(SDF_SPACE_PRESETS["sdf-small"],
                                         description="NetSpace on the real chairs' SIREN MLPs (CPU, ~20 min)",
                                         prep_lr=1e-4, lr_decay=0.98)
DEFAULT_PRESET = "sdf-small"


# ---------------------------------------------------------------------------------------------
# points, metric, step


def uniform_points(n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """``n`` points (n, 3) uniform in the bounding cube [-1, 1]^3 (drawn on the CPU: reproducible)."""
    return (torch.rand(n, 3, generator=generator) * (2 * BOUND) - BOUND).to(device)


def eval_points(preset: "SdfSpacePreset", seed: int, device="cpu") -> torch.Tensor:
    """The fixed points (``preset.eval_points``, 3) of a run's metric (seeded by the run's seed)."""
    return uniform_points(preset.eval_points, torch.Generator().manual_seed(seed * 1_000_003 + 1), device)


def _sdf_spec() -> ArchSpec:
    return archs.spec(SDF_ARCH)


@torch.no_grad()
def within_fraction(decoded: torch.Tensor, inputs: torch.Tensor, points: torch.Tensor, *,
                    tolerance: float = TOLERANCE, chunk: int = 16, point_chunk: int = 16384) -> torch.Tensor:
    """The paper's metric per network (B,): the fraction of ``points`` (N, 3) where the decoded MLP
    ``decoded[b]`` and the input MLP ``inputs[b]`` (SIREN PReps (B, H, W)) differ by at most
    ``tolerance``; with ``points`` (B, N, 3), network b's own points ``points[b]``. Both sets
    evaluated by batched calls of ``chunk`` networks x ``point_chunk`` points."""
    if not isinstance(decoded, torch.Tensor) or not isinstance(inputs, torch.Tensor):
        raise TypeError("decoded, inputs: expected PRep batches (B, H, W) as Tensors")
    if decoded.dim() != 3 or inputs.dim() != 3 or decoded.shape[0] != inputs.shape[0]:
        raise ValueError(f"decoded, inputs: expected two PRep batches (B, H, W) of the same B, got "
                         f"{tuple(decoded.shape)} and {tuple(inputs.shape)}")
    shared = points.dim() == 2
    if not (points.dim() in (2, 3) and points.shape[-1] == 3 and (shared or points.shape[0] == decoded.shape[0])):
        raise ValueError(f"points: expected (N, 3) or ({decoded.shape[0]}, N, 3), got {tuple(points.shape)}")
    spec = _sdf_spec()
    B, N = decoded.shape[0], points.shape[-2]
    hits = torch.zeros(B, dtype=torch.float64)
    for s in range(0, B, chunk):
        for p in range(0, N, point_chunk):
            x = points[p:p + point_chunk] if shared else points[s:s + chunk, p:p + point_chunk]
            a = batched_forward(spec, decoded[s:s + chunk], x)
            b = batched_forward(spec, inputs[s:s + chunk], x)
            hits[s:s + chunk] += ((a - b).abs() <= tolerance).sum((1, 2)).double().cpu()
    return (hits / N).float()


@dataclass
class SdfStep:
    loss: torch.Tensor  #: the scalar to minimize (MSE, mean over networks and points)
    per_network: torch.Tensor  #: (B,) MSE of each decoded network
    within: torch.Tensor  #: (B,) the metric of each decoded network on the step's points (no gradient)
    decoded: torch.Tensor  #: (B, H, W) decoded PReps


def sdf_step(encoder: Encoder, decoder: Decoder, preps: torch.Tensor, points: torch.Tensor, *,
             tolerance: float = TOLERANCE) -> SdfStep:
    """The SDF loss of a meta-batch ``preps`` (B, H, W) of SIREN MLPs at ``points`` (N, 3), or at
    per-network points (B, N, 3): the input MLPs (ONE batched call, no gradient) and the decoded MLPs
    (ONE batched call) at the same points."""
    if preps.dim() != 3:
        raise ValueError(f"preps: expected a meta-batch (B, H, W), got {tuple(preps.shape)}")
    spec = _sdf_spec()
    with torch.no_grad():
        target = batched_forward(spec, preps, points)  # (B, N, 1), one call
    decoded = decoder(encoder(preps))
    out = batched_forward(spec, decoded, points)  # one call
    err = out - target
    per = err.square().mean((1, 2))
    within = (err.detach().abs() <= tolerance).float().mean((1, 2))
    return SdfStep(per.mean(), per, within, decoded)


# ---------------------------------------------------------------------------------------------
# data and networks


@dataclass
class SdfData:
    ids: dict[str, list[str]]  #: split -> instance ids
    preps: dict[str, torch.Tensor]  #: split -> (B, H, W) PReps
    height: int
    shapes: object = None  #: the zoo's ShapeSet (``points_from="shapes"`` only)
    shape_index: dict = field(default_factory=dict)  #: split -> each MLP's shape index in ``shapes``


def zoo_shapes(zoo_dir):
    """The :class:`~netspace_fast.sdf.shapes.ShapeSet` an SDF zoo was fitted on, rebuilt from its
    configuration by :func:`~netspace_fast.sdf.shapes.reopen_shapes` (mesh samples from the zoo's
    cache): a zoo without recorded shapes, a folder that is gone or whose files changed since
    fitting is a ValueError naming the zoo."""
    from ..zoo.format import Zoo
    from .shapes import reopen_shapes

    cfg = Zoo.open(zoo_dir).config
    d = cfg.get("shapes") if isinstance(cfg, dict) else None
    if not isinstance(d, dict) or "source" not in d:
        raise ValueError(f"zoo: {str(zoo_dir)!r} records no shapes (a zoo of `netspace zoo fit-sdf` does); "
                         f"points_from='shapes' needs them")
    try:
        return reopen_shapes(d, cache_dir=Path(zoo_dir) / ".sdf_cache")
    except ValueError as e:
        what = str(e).replace("since they were described", "since fitting")
        raise ValueError(f"zoo: the shapes of {str(zoo_dir)!r} {what}") from None


def check_sdf_zoo(zoo, zoo_dir) -> None:
    """A ValueError naming the zoo unless every instance is a SIREN MLP (an SDF zoo)."""
    found = sorted({e["architecture"] for e in zoo.instances()})
    if not found:
        raise ValueError(f"zoo: {str(zoo_dir)!r} holds no networks")
    if found != [SDF_ARCH]:
        raise ValueError(f"zoo: {str(zoo_dir)!r} is not an SDF zoo: train sdf needs {SDF_ARCH} MLPs (netspace zoo "
                         f"fit-sdf), this zoo holds {', '.join(found)} networks")


def load_sdf_data(zoo_dir, width: int, splits=("train", "val"), device="cpu", shapes=None) -> SdfData:
    """The SIREN PReps of ``splits`` of an SDF zoo, and with ``shapes`` (the zoo's
    :func:`zoo_shapes`) each MLP's shape index; a non-SDF zoo or an empty split is a ValueError."""
    from ..zoo.format import Zoo

    zoo = Zoo.open(zoo_dir)
    check_sdf_zoo(zoo, zoo_dir)
    height = PRepLayout.for_spec(_sdf_spec(), width).height
    ids, preps = {}, {}
    for split in splits:
        ids[split] = [e["id"] for e in zoo.instances(split, SDF_ARCH)]
        if not ids[split]:
            raise ValueError(f"zoo: split {split!r} of {str(zoo_dir)!r} has no {SDF_ARCH} MLPs (train sdf needs "
                             f"training and validation MLPs)")
        preps[split] = zoo.preps(split, SDF_ARCH, width, height).to(device)
    data = SdfData(ids, preps, height)
    if shapes is not None:
        data.shapes = shapes
        where = {id: i for i, id in enumerate(data.shapes.ids)}
        for split, names in ids.items():
            missing = [n for n in names if n not in where]
            if missing:
                raise ValueError(f"zoo: instance {missing[0]!r} of {str(zoo_dir)!r} is none of its shapes")
            data.shape_index[split] = [where[n] for n in names]
    return data


class CenteredEncoder(Encoder):
    """The NetSpace encoder applied to ``prep - center`` (``center``: a buffer (H, W), saved with the
    weights): the mean of the training PReps, set once when a run starts (``SdfSpacePreset.center``)."""

    def __init__(self, config: SpaceConfig) -> None:
        super().__init__(config)
        self.register_buffer("center", torch.zeros(config.height, config.width))

    def forward(self, preps: torch.Tensor) -> torch.Tensor:
        return super().forward(preps - self.center)


def build_sdf_space(preset: SdfSpacePreset, seed: int, device="cpu",
                    train_preps: torch.Tensor | None = None) -> tuple[Encoder, Decoder]:
    """The encoder and decoder of a run (seeded); ``prep_init="siren"`` puts a SIREN-initialized PRep
    into the decoder's scale-layer bias, ``"mean"`` the mean of ``train_preps`` (module doc; a
    checkpoint loaded afterwards replaces either)."""
    height = PRepLayout.for_spec(_sdf_spec(), preset.width).height
    cfg = SpaceConfig(height, preset.width, **preset.space)
    torch.manual_seed(seed)
    enc, dec = (CenteredEncoder(cfg) if preset.center else Encoder(cfg)), Decoder(cfg)
    mean = None
    if train_preps is not None and (preset.prep_init == "mean" or preset.center):
        if train_preps.dim() != 3 or tuple(train_preps.shape[1:]) != (height, preset.width):
            raise ValueError(f"train_preps: expected PReps (B, {height}, {preset.width}), got "
                             f"{tuple(train_preps.shape)}")
        mean = train_preps.detach().float().mean(0).cpu()
        if preset.center:
            enc.center.copy_(mean)
    if preset.prep_init == "siren":
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            init = pack_preps([archs.build(SDF_ARCH)], preset.width, height)[0].detach()
        with torch.no_grad():
            dec.scalelayer.bias.copy_(init)
    elif preset.prep_init == "mean" and mean is not None:
        with torch.no_grad():
            dec.scalelayer.bias.copy_(mean)
    return enc.to(device), dec.to(device)


# ---------------------------------------------------------------------------------------------
# training


def resolve_preset(preset: str | None) -> tuple[str, SdfSpacePreset]:
    name = DEFAULT_PRESET if preset is None else preset
    if not isinstance(name, str) or name not in SDF_SPACE_PRESETS:
        raise ValueError(f"preset: unknown SDF preset {name!r}; valid presets: {', '.join(SDF_SPACE_PRESETS)}")
    return name, SDF_SPACE_PRESETS[name]


def train_sdf_space(run_dir, zoo_dir, preset: str | None = None, *, seed: int = 0, epochs: int | None = None,
                    target: float | None = None, device: str = "cpu", progress: bool = True,
                    tensorboard=None) -> Run:
    """Train (or resume) NetSpace on the SDF zoo ``zoo_dir`` into ``run_dir`` (module doc); returns the
    run. ``epochs`` and ``target`` override the preset's; ``tensorboard``: a log directory for the
    per-epoch scalars (needs the ``tensorboard`` package)."""
    from ..zoo.format import Zoo

    name, p = resolve_preset(preset)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    n_epochs = p.epochs if epochs is None else epochs
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs <= 0:
        raise ValueError(f"epochs: expected a positive int, got {n_epochs!r}")
    target = p.target if target is None else _check_target(target)
    from ..settings import check_device

    device = check_device(device)
    check_sdf_zoo(Zoo.open(zoo_dir), zoo_dir)  # before a run folder is created
    shapes = zoo_shapes(zoo_dir) if p.points_from == "shapes" else None  # also before a run folder exists
    config = {"zoo": str(Path(zoo_dir).resolve()), "preset": name, "recipe": p.to_json(), "archs": [SDF_ARCH],
              "protocol": "sdf", "seed": seed, "epochs": n_epochs, "target": target, "root": None}
    writer = tensorboard_writer(tensorboard)  # a missing package: before any work
    from .fit import full_fp32

    try:
        run = Run.create_or_resume(run_dir, COMMAND, config)
        with full_fp32():  # sin(30 x) multiplies TF32's rounding by 30: 0.01 needs float32 (GPU)
            _train_loop(run, zoo_dir, shapes, p, seed, n_epochs, target, device, progress, writer)
    finally:
        if writer is not None:
            writer.close()
    return run


def param_groups(enc: Encoder, dec: Decoder, p: SdfSpacePreset) -> list[dict]:
    """Adam's parameter groups: the scale layer at ``prep_lr`` (when set), everything else at ``lr``."""
    scale = list(dec.scalelayer.parameters())
    rest = [q for q in list(enc.parameters()) + list(dec.parameters()) if all(q is not t for t in scale)]
    return [{"params": rest, "lr": p.lr}, {"params": scale, "lr": p.prep_lr or p.lr}]


def _batches(n: int, meta_batch: int, passes: int, g: torch.Generator) -> list[torch.Tensor]:
    out = []
    for _ in range(passes):
        order = torch.randperm(n, generator=g)
        out += list(order.split(meta_batch))
    return out


def step_points(p: SdfSpacePreset, g: torch.Generator, data: SdfData, nets: torch.Tensor, device) -> torch.Tensor:
    """A step's query points: (points, 3) uniform in the cube, or (B, points, 3), each training MLP
    ``nets[b]``'s own draw from its shape's samples (``points_from="shapes"``)."""
    if p.points_from == "uniform":
        return uniform_points(p.points, g, device)
    index = data.shape_index["train"]
    return torch.stack([data.shapes.sample(index[int(k)], p.points, g)[0] for k in nets]).to(device)


def metric_points(p: SdfSpacePreset, seed: int, data: SdfData, device) -> dict[str, torch.Tensor]:
    """Each split's fixed metric points: :func:`eval_points` (uniform), or per MLP the first
    ``eval_points`` held-out points of its shape (``points_from="shapes"``; fewer when a shape has
    fewer)."""
    if p.points_from == "uniform":
        x = eval_points(p, seed, device)
        return {split: x for split in data.preps}
    out = {}
    for split, index in data.shape_index.items():
        held = [data.shapes.heldout(i)[0] for i in index]
        n = min([p.eval_points] + [h.shape[0] for h in held])
        out[split] = torch.stack([h[:n] for h in held]).to(device)
    return out


def _evaluate(enc, dec, data: SdfData, points: dict[str, torch.Tensor], tolerance: float) -> dict:
    """Mean metric and MSE of the decoded training and validation MLPs on the fixed points."""
    out = {}
    with torch.no_grad():
        for split, preps in data.preps.items():
            decoded = torch.cat([dec(enc(preps[s:s + 16])) for s in range(0, preps.shape[0], 16)])
            w = within_fraction(decoded, preps, points[split], tolerance=tolerance)
            out[f"{split}_within"] = float(w.mean())
            out[f"{split}_within_min"] = float(w.min())
    return out


def _train_loop(run: Run, zoo_dir, shapes, p: SdfSpacePreset, seed: int, n_epochs: int, target: float, device, progress: bool,
                writer) -> None:
    state = run.state() or {"epoch": 0, "best_score": None, "history": []}
    if state.get("stopped") == "target":
        log(progress, f"the run reached its target ({target}) at epoch {state['epoch']}; nothing to do")
        return
    data = load_sdf_data(zoo_dir, p.width, device=device, shapes=shapes)
    enc, dec = build_sdf_space(p, seed, device, train_preps=data.preps["train"])
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(param_groups(enc, dec, p), lr=p.lr)
    if run.state() is not None:
        state = run.load_checkpoint(enc, dec, opt)
        log(progress, f"resuming after epoch {state['epoch']}")
    fixed = metric_points(p, seed, data, device)
    preps = data.preps["train"]
    bar = progress_bar(progress, "NetSpace sdf", state["epoch"], n_epochs)
    for epoch in range(state["epoch"] + 1, n_epochs + 1):
        enc.train(), dec.train()
        for group, lr in zip(opt.param_groups, p.lr_at(epoch)):  # a function of the epoch: resume-safe
            group["lr"] = lr
        g = torch.Generator().manual_seed(seed * 1_000_003 + 1_000 + epoch)
        losses, within = [], []
        for nets in _batches(preps.shape[0], p.meta_batch, p.passes, g):
            x = step_points(p, g, data, nets, device)
            out = sdf_step(enc, dec, preps[nets.to(preps.device)], x, tolerance=p.tolerance)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if p.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, p.clip_grad)
            opt.step()
            losses.append(float(out.loss.detach()))
            within.append(float(out.within.mean()))
        record = {"epoch": epoch, "loss": sum(losses) / len(losses), "step_within": sum(within) / len(within)}
        stopped = None
        if epoch % p.val_every == 0 or epoch == n_epochs:
            enc.eval(), dec.eval()
            record.update(_evaluate(enc, dec, data, fixed, p.tolerance))
            score = record["val_within"]
            if state["best_score"] is None or score > state["best_score"]:
                state["best_score"] = score
                run.save_best(enc, dec, {"epoch": epoch, "score": score, "train_within": record["train_within"],
                                         "val_within": score})
            if record["train_within"] >= target:
                stopped = "target"
        state = {"epoch": epoch, "best_score": state["best_score"], "history": state["history"] + [record]}
        if stopped:
            state["stopped"] = stopped
        run.save_checkpoint(enc, dec, opt, state)
        line = f"loss {record['loss']:.3g} within {record['step_within']:.3f}"
        if "train_within" in record:
            line += f" | train {record['train_within']:.3f} val {record['val_within']:.3f}"
        end_epoch(epoch, n_epochs, line, progress=progress, bar=bar, writer=writer,
                  scalars={f"{'val' if k.startswith('val') else 'train'}/{k}": v for k, v in record.items()
                           if k != "epoch"})
        after_checkpoint(epoch)
        if stopped:
            log(progress, f"target {target} reached on the training MLPs at epoch {epoch} (validation "
                          f"{record['val_within']:.3f})")
            break
    if bar is not None:
        bar.close()


# ---------------------------------------------------------------------------------------------
# a trained SDF space


class SdfSpace:
    """The encoder and decoder of an SDF run (its best weights by default) with its zoo."""

    def __init__(self, run: Run, encoder: Encoder, decoder: Decoder, preset: SdfSpacePreset, device) -> None:
        self.run, self.encoder, self.decoder, self.preset, self.device = run, encoder, decoder, preset, device
        self.spec = _sdf_spec()

    @classmethod
    def load(cls, run_dir, *, which: str = "best", device: str = "cpu") -> "SdfSpace":
        run = Run.open(run_dir)
        if run.command != COMMAND:
            raise ValueError(f"run: {str(run_dir)!r} is a {run.command!r} run, not an SDF run ({COMMAND!r})")
        p = SdfSpacePreset.from_json(run.config["recipe"])
        enc, dec = build_sdf_space(p, run.config["seed"], device)
        run.load_weights(enc, dec, which)
        enc.eval(), dec.eval()
        return cls(run, enc, dec, p, device)

    @property
    def zoo_dir(self) -> Path:
        return Path(self.run.config["zoo"])

    @torch.no_grad()
    def encode(self, preps: torch.Tensor) -> torch.Tensor:
        return self.encoder(preps.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        z = z.to(self.device)
        return torch.cat([self.decoder(z[s:s + chunk]) for s in range(0, z.shape[0], chunk)])

    def preps(self, ids: list[str]) -> torch.Tensor:
        """The PReps (B, H, W) of zoo instances ``ids`` (a ValueError naming a missing or non-SIREN id)."""
        from ..zoo.format import Zoo

        zoo = Zoo.open(self.zoo_dir)
        models = []
        for i in ids:
            if not isinstance(i, str):
                raise TypeError(f"id: expected a zoo instance id (str), got {type(i).__name__}")
            if i not in zoo:
                some = ", ".join(e["id"] for e in zoo.instances()[:5])
                raise ValueError(f"id: the run's zoo {str(self.zoo_dir)!r} has no instance {i!r} (e.g. {some})")
            if zoo.entry(i)["architecture"] != SDF_ARCH:
                raise ValueError(f"id: instance {i!r} is not a {SDF_ARCH} MLP")
            models.append(zoo.model(i))
        height = self.decoder.config.height
        with torch.no_grad():
            return pack_preps(models, self.preset.width, height).to(self.device)
