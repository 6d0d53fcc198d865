"""Recipes of ``netspace zoo fit-sdf`` (:func:`netspace_fast.sdf.fit.fit_sdf_zoo`).

``paper``: the original protocol (METHOD.md section 3): 10,000 Adam steps, lr 1e-4 multiplied by
0.9 every 1,000 steps, 20,000 points per shape per step, MSE; 1,000 shapes (procedural chairs
unless ``--shapes DIR`` names ShapeNet chairs), pools of 500,000 points per shape (DeepSDF's size).

``small``: two dozen procedural chairs in minutes on 2 CPU cores (the acceptance preset). One
shape-step at 20,000 points is ~8 GFLOP (forward + backward), so the paper protocol is ~80 TFLOP
per shape: hours per shape on this class of machine. The small preset cuts points per step (1,024)
and steps (1,200), and raises the learning rate to 3e-4 (x0.9 every 200 steps). Measured on 4
chairs (held-out fraction within 0.01 after 100/400/800 steps): lr 3e-4: 0.70/0.84/0.91;
lr 1e-3: 0.39/0.63/0.73 (too high for sin(30 x)). Figures of the whole preset in BENCHMARKS.md, "SIREN fitting".
Its networks all start from ONE random SIREN (``init="shared"``, our design; the original gives
each MLP its own random initialization, as ``paper`` does): fitting moves a SIREN's first layer by
only ~2% (it carries sin(30 x)'s phases), so with an initialization per shape every network holds
its own random 1,024 first-layer values that NetSpace's decoder must reproduce to ~1e-3, and the
space learns slowly (18 chairs: 0.38 of points within 0.01 after 100 epochs of ``sdf-small``, still
0.65 after 150 epochs with a SIREN-initialized decoder). From one shared start the networks differ
only by what fitting changed and the same space reaches 0.8 (~140 epochs on uniform points, ~65
on shape points, ``sdf-small``). Fit quality is the
same (median held-out within 0.01: 0.920 shared, 0.921 per shape).

``chairs``: real chair meshes (``netspace shapes extract-chairs``; a folder source fits all its
shapes): the small preset with twice the steps (2,400, lr x0.9 every 300). Real chairs carry more
detail than the procedural ones (thin slats, cushions, turned legs): the small preset leaves their
median held-out fraction within 0.01 just under 0.9 (figures in BENCHMARKS.md, "Real chairs").

``tiny``: 2 chairs, a handful of steps, small pools: the test suite's smoke preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["INITS", "SDF_PRESETS", "SdfPreset"]

INITS = ("per-shape", "shared")  # each network its own random SIREN, or one random SIREN for all


@dataclass(frozen=True)
class SdfPreset:
    name: str
    n_shapes: int          # procedural chairs made (a folder source uses all of its shapes)
    steps: int             # Adam steps per shape
    lr: float              # initial learning rate
    lr_decay: float        # lr multiplied by this every ``decay_every`` steps
    decay_every: int
    points: int            # points per shape per step
    group: int             # networks fitted together (one batched job; its pools live in memory)
    pool_size: int         # sampled points per shape (procedural and mesh sources)
    heldout_size: int      # held-out points per shape (fit quality)
    checkpoint_every: int  # steps between checkpoints
    split: tuple[float, float]  # fractions of shapes in val and test (the rest is train)
    init: str = "per-shape"  # "per-shape": each network its own random SIREN; "shared": one for all

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {self.init!r}")

    def config(self) -> dict:
        d = asdict(self)
        d["split"] = list(self.split)
        if d["init"] == "per-shape":  # the default: zoos written before the field existed still resume
            del d["init"]
        return d


SDF_PRESETS: dict[str, SdfPreset] = {
    "tiny": SdfPreset("tiny", n_shapes=2, steps=20, lr=1e-4, lr_decay=0.9, decay_every=10, points=512, group=2,
                      pool_size=4_000, heldout_size=1_000, checkpoint_every=5, split=(0.0, 0.5)),
    "small": SdfPreset("small", n_shapes=24, steps=1_200, lr=3e-4, lr_decay=0.9, decay_every=200, points=1_024,
                       group=24, pool_size=50_000, heldout_size=10_000, checkpoint_every=100, split=(0.125, 0.125),
                       init="shared"),
    "paper": SdfPreset("paper", n_shapes=1_000, steps=10_000, lr=1e-4, lr_decay=0.9, decay_every=1_000,
                       points=20_000, group=64, pool_size=500_000, heldout_size=20_000, checkpoint_every=250,
                       split=(0.1, 0.1)),
}
# the small preset with twice the steps; groups of 25: the 49 chairs of the Debian catalogs fit in two jobs
SDF_PRESETS["chairs"] = replace(SDF_PRESETS["small"], name="chairs", steps=2_400, decay_every=300, group=25)
