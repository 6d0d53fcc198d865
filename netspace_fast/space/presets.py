"""NetSpace training recipes (METHOD.md section 6) as presets: small ones for the embedded digits zoos
on a CPU (a scaled-down network, our design: METHOD.md section 5 leaves CPU sizes open) and the
paper's (E = 4096, PRep width 10,000, Adam lr 1e-4, about 1k epochs) for GPUs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = ["SPACE_PRESETS", "SpacePreset", "default_preset"]

MULTI_ARCHS = ("lenetlike", "vanillacnn", "resnet8", "resnet32")  # ClassId order


@dataclass(frozen=True)
class SpacePreset:
    """``space``: the :class:`netspace_fast.space.SpaceConfig` sizes other than the PRep's (empty: the
    paper's); ``archs``: the architectures in ClassId order (Multi)."""

    description: str
    dataset: str
    protocol: str  # "single" or "multi"
    width: int
    epochs: int
    meta_batch: int
    image_batch: int
    lr: float = 1e-4
    val_every: int = 1
    clip_grad: float = 0.0  #: > 0: the gradients' global norm is clipped to it before each step (0: off, the paper)
    lr_milestones: tuple[int, ...] = ()  #: epochs after which the learning rate is multiplied by 0.1 (the paper: none)
    space: dict = field(default_factory=dict)
    archs: tuple[str, ...] = ()
    images_per_epoch: int = 0  #: > 0: an epoch is this many training images (a fresh random subset each epoch)
    val_images: int = 0  #: > 0: validation (best epoch) on a fixed seeded subset of this many val images
    #: True: every step's meta-batch is one pair of networks of the two training architectures, formed as
    #: the original code's unseen-architecture training set (:func:`netspace_fast.space.train.arch_pairs`)
    pairs: bool = False
    #: Multi: the architectures whose train-split networks are trained on (empty: all of ``archs``); the
    #: others are unseen in training (in val/test only), whatever the zoo's train split holds
    train_archs: tuple[str, ...] = ()
    #: True: the training images get the zoo's augmentation each step (random crop with padding S/8 and a
    #: horizontal flip, as the original's training image loader; the teacher sees the same augmented
    #: images); validation and test images never
    augment: bool = False
    kd_temperature: float = 4.0  #: the distillation temperature T (the paper's 4)
    #: the learning rate's schedule (the paper: constant): "step" (x0.1 after each of ``lr_milestones``),
    #: "cosine" (from ``lr`` down to ``lr * lr_final`` at the last epoch) or "exp" (geometric, the same ends)
    lr_schedule: str = "step"
    lr_final: float = 0.0  #: cosine / exp: the last epoch's rate as a fraction of the first (exp: > 0)
    warmup_epochs: int = 0  #: > 0: the rate rises linearly over these first epochs (epoch e: e / warmup of it)
    #: > 0: the decoder's scale layer (whose bias is every decoded weight) learns at this rate, on the same
    #: schedule (0: ``lr``, the paper)
    prep_lr: float = 0.0
    #: Multi: the best weights are the validation's with the largest mean decoded accuracy plus this weight
    #: times its ClassId accuracy (0: the mean decoded accuracy alone, the original's rule; 1: one wrong
    #: ClassId of 8 val networks weighs as 12.5 points of mean decoded accuracy)
    class_id_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.lr_final <= 1.0 or (self.lr_schedule == "exp" and self.lr_final <= 0.0):
            raise ValueError(f"lr_final: expected a fraction in {'(0' if self.lr_schedule == 'exp' else '[0'}, 1], "
                             f"got {self.lr_final!r}")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs: expected an int >= 0, got {self.warmup_epochs!r}")
        if not self.prep_lr >= 0.0:
            raise ValueError(f"prep_lr: expected a rate >= 0, got {self.prep_lr!r}")
        if not self.class_id_weight >= 0.0:
            raise ValueError(f"class_id_weight: expected a weight >= 0, got {self.class_id_weight!r}")

    @classmethod
    def from_json(cls, d: dict) -> "SpacePreset":
        """The preset a run recorded (:meth:`to_json`)."""
        return cls(**{**d, "archs": tuple(d["archs"]), "lr_milestones": tuple(d.get("lr_milestones", ())),
                      "train_archs": tuple(d.get("train_archs", ()))})

    def lr_factor(self, epoch: int, epochs: int | None = None) -> float:
        """The schedule's factor on the rates in ``epoch`` (1-based) of a run of ``epochs`` (the preset's
        unless given): a function of the epoch alone, so a resumed run continues the same schedule."""
        last = self.epochs if epochs is None else epochs
        w = self.warmup_epochs
        warm = min(1.0, epoch / w) if w else 1.0
        if self.lr_schedule == "step":
            return warm * 0.1 ** sum(epoch > m for m in self.lr_milestones)
        t = min(1.0, max(0.0, (epoch - w - 1) / max(1, last - w - 1)))  # 0 after the warm-up .. 1 at the end
        if self.lr_schedule == "cosine":
            return warm * (self.lr_final + (1.0 - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t)))
        return warm * self.lr_final ** t

    def lr_at(self, epoch: int, epochs: int | None = None) -> float:
        """The learning rate of ``epoch`` (1-based; see :meth:`lr_factor`)."""
        return self.lr * self.lr_factor(epoch, epochs)

    def prep_lr_at(self, epoch: int, epochs: int | None = None) -> float:
        """The scale layer's rate in ``epoch``: ``prep_lr`` (else ``lr``) on the same schedule."""
        return (self.prep_lr or self.lr) * self.lr_factor(epoch, epochs)

    def to_json(self) -> dict:
        d = asdict(self)
        d["archs"] = list(self.archs)
        d["lr_milestones"] = list(self.lr_milestones)
        d["train_archs"] = list(self.train_archs)
        for name, default in _RECORDED_WHERE_SET.items():  # recorded where set: older runs' records stay equal
            if d[name] == default:
                del d[name]
        return d


LR_SCHEDULES = ("step", "cosine", "exp")
_RECORDED_WHERE_SET = {"lr_schedule": "step", "lr_final": 0.0, "warmup_epochs": 0, "prep_lr": 0.0,
                      "class_id_weight": 0.0}


_SMALL = {"embed": 1024, "view": 32, "dec_a": 16, "dec_b": 64, "dec_c": 32, "prep_scale": 30.0}
_TINY = {"embed": 256, "view": 16, "dec_a": 8, "dec_b": 16, "dec_c": 8, "prep_scale": 30.0}

SPACE_PRESETS: dict[str, SpacePreset] = {
    "digits-single": SpacePreset("Single-Architecture on a digits zoo (CPU, minutes)", "digits", "single", 1024,
                                 epochs=200, meta_batch=8, image_batch=128, lr=1e-3, val_every=5, space=_SMALL),
    # the demo's space (`netspace demo`, on the digits-demo zoo): digits-single with distillation at T = 1 and
    # 240 epochs (measured on the digits-demo zoo, seed 0: the slope of decoded on input test accuracy 0.90,
    # Spearman 0.987, mean |gap| 2.1 points; 120 epochs at T = 4: slope 0.78, gap 3.7; x0.1 after epoch 160:
    # gap 4.2, the validation gap stops falling; BENCHMARKS.md, "Demo")
    "digits-demo": SpacePreset("Single-Architecture for the demo on the digits-demo zoo (CPU, ~4 min)", "digits",
                               "single", 1024, epochs=240, meta_batch=8, image_batch=128, lr=1e-3, val_every=5,
                               space=_SMALL, kd_temperature=1.0),
    "digits-tiny-single": SpacePreset("smoke test: a tiny Single space on a digits zoo, 3 epochs", "digits", "single",
                                      1024, epochs=3, meta_batch=2, image_batch=512, lr=1e-3, space=_TINY),
    "fmnist-tiny-single": SpacePreset("smoke test: a tiny Single space on a Fashion-MNIST zoo, 3 epochs",
                                      "fashion-mnist", "single", 1024, epochs=3, meta_batch=2, image_batch=512, lr=1e-3,
                                      space=_TINY),
    "digits-tiny-multi": SpacePreset("smoke test: a tiny Multi space on a digits zoo, 2 epochs", "digits", "multi",
                                     1024, epochs=2, meta_batch=2, image_batch=512, lr=1e-3, space=_TINY,
                                     archs=MULTI_ARCHS),
    # Multi on CPU: the decoded ResNets sit on a plateau (weights ~1e-2, the signal vanishes through
    # the blocks) for ~200 of their own steps before they learn (measured), so the preset trains long;
    # centered scale-layer bias and clipping: see SpaceConfig.bias_init
    "digits-multi": SpacePreset("Multi-Architecture on a digits zoo (CPU, ~25 min)", "digits", "multi", 1024,
                                epochs=300, meta_batch=2, image_batch=128, lr=3e-4, val_every=10, clip_grad=1.0,
                                space={**_SMALL, "bias_init": "centered"}, archs=MULTI_ARCHS),
    # the unseen presets' meta-batch is one pair, a LeNetLike and a ResNet32, as the original's unseen-architecture
    # training set (NetsDatasetMissing) loads them: L_gamma always interpolates across them (measured with one random
    # network a step instead: none of 225 interpolated embeddings read as VanillaCNN or ResNet8 after 300 epochs)
    "digits-unseen": SpacePreset("sampling unseen architectures on a digits-unseen zoo (CPU)", "digits", "multi", 1024,
                                 epochs=300, meta_batch=2, image_batch=128, lr=3e-4, val_every=10, clip_grad=1.0,
                                 space={**_SMALL, "bias_init": "centered"}, archs=MULTI_ARCHS, pairs=True,
                                 train_archs=("lenetlike", "resnet32")),
    # real data on 2 CPU cores (Fashion-MNIST): the digits recipes, an epoch being a fresh random subset of 1,152
    # training images (9 image batches, as a digits epoch) and validation on a fixed 2,000 of the 12k val images
    # (Multi: 1,000, with the zoo's 1,000, so that fmnist-multi's zoo + space fit ~30 min)
    # distillation at T = 1 and 600 epochs (our choice, measured on two zoo seeds not tuned on: test mean |gap|
    # 0.78 / 1.09 points, Spearman 0.977 / 0.990, slope of decoded on input accuracy 0.85 / 0.82; at T = 4 and
    # 200 epochs the decoded accuracies spread half as much as the inputs', slope 0.43-0.48; BENCHMARKS.md,
    # "NetSpace quality: what each change did")
    "fmnist-single": SpacePreset("Single-Architecture on an fmnist-single zoo (CPU, ~20 min)", "fashion-mnist",
                                 "single", 1024, epochs=600, meta_batch=8, image_batch=128, lr=1e-3, val_every=5,
                                 space=_SMALL, images_per_epoch=1152, val_images=2000, kd_temperature=1.0),
    # MNIST (an imported zoo's, e.g. the Model Zoos' MNIST CNNs): the Fashion-MNIST Single recipe
    "mnist-single": SpacePreset("Single-Architecture on an MNIST zoo (CPU, ~20 min)", "mnist", "single", 1024,
                                epochs=600, meta_batch=8, image_batch=128, lr=1e-3, val_every=5, space=_SMALL,
                                images_per_epoch=1152, val_images=2000, kd_temperature=1.0),
    "mnist-tiny-single": SpacePreset("smoke test: a tiny Single space on an MNIST zoo, 3 epochs", "mnist", "single",
                                     1024, epochs=3, meta_batch=2, image_batch=512, lr=1e-3, space=_TINY),
    # Multi: the Single recipe's distillation at T = 1, 64 images a step (a step is the decoded ResNet32s'
    # evaluation and backward: half the images, half the step, twice the steps), 300 epochs of cosine decay
    # 3e-4 -> 1.5e-5 after 10 warm-up epochs, and the best weights by mean decoded accuracy + ClassId accuracy
    # (class_id_weight: one wrong ClassId of the 8 val networks costs 12.5 points). Measured: BENCHMARKS.md,
    # "The fmnist-multi preset now"; at T = 4, 150 epochs of 128 images and a constant rate the decoded
    # networks were 8-15 points below their inputs
    "fmnist-multi": SpacePreset("Multi-Architecture on an fmnist-multi zoo (CPU, ~45 min)", "fashion-mnist", "multi",
                                1024, epochs=300, meta_batch=2, image_batch=64, lr=3e-4, val_every=10, clip_grad=1.0,
                                space={**_SMALL, "bias_init": "centered"}, archs=MULTI_ARCHS, images_per_epoch=1152,
                                val_images=1000, kd_temperature=1.0, lr_schedule="cosine", lr_final=0.05,
                                warmup_epochs=10, class_id_weight=1.0),
    # trains on LeNetLike + ResNet32 only (on an fmnist-unseen zoo, or on an fmnist-multi zoo, whose other train
    # networks it leaves out), one LeNetLike + one ResNet32 per step, paired as the original's unseen-architecture
    # training set; fmnist-multi's recipe (T = 1, 64 images a step, cosine decay after a warm-up) over 200 epochs
    # (every step decodes a LeNetLike, a ResNet32 and their two interpolations: ~13 s an epoch of 64-image steps
    # on 2 idle cores, measured at the start of a run, so ~45 min; 7.5 s at 128 images, the step's fixed costs
    # do not halve); the best weights by mean decoded accuracy alone (the val VanillaCNNs and ResNet8s are never
    # trained on: their ClassIds are not expected right)
    "fmnist-unseen": SpacePreset("sampling unseen architectures on an fmnist-unseen or fmnist-multi zoo (CPU, ~45 min)",
                                 "fashion-mnist", "multi", 1024, epochs=200, meta_batch=2, image_batch=64, lr=3e-4,
                                 val_every=10, clip_grad=1.0, space={**_SMALL, "bias_init": "centered"},
                                 archs=MULTI_ARCHS, images_per_epoch=1152, val_images=1000, pairs=True,
                                 train_archs=("lenetlike", "resnet32"), kd_temperature=1.0, lr_schedule="cosine",
                                 lr_final=0.05, warmup_epochs=10),
    "cifar10-single": SpacePreset("Single-Architecture, CIFAR-10 (paper)", "cifar10", "single", 10_000, epochs=1000,
                                  meta_batch=8, image_batch=128, val_every=10, augment=True),
    "cifar10-multi": SpacePreset("Multi-Architecture, CIFAR-10 (paper)", "cifar10", "multi", 10_000, epochs=1000,
                                 meta_batch=2, image_batch=128, val_every=10, archs=MULTI_ARCHS, augment=True),
    "cifar10-unseen": SpacePreset("sampling unseen architectures, CIFAR-10 (paper)", "cifar10", "multi", 10_000,
                                  epochs=1000, meta_batch=2, image_batch=128, val_every=10, archs=MULTI_ARCHS,
                                  pairs=True, train_archs=("lenetlike", "resnet32"), augment=True),
    "tinyimagenet-single": SpacePreset("Single-Architecture, Tiny-ImageNet (paper)", "tinyimagenet", "single",
                                       10_000, epochs=1000, meta_batch=8, image_batch=128, val_every=10, augment=True),
    "tinyimagenet-multi": SpacePreset("Multi-Architecture, Tiny-ImageNet (paper)", "tinyimagenet", "multi", 10_000,
                                      epochs=1000, meta_batch=2, image_batch=128, val_every=10, archs=MULTI_ARCHS, augment=True),
}


PRESET_PREFIX = {"fashion-mnist": "fmnist"}  #: dataset -> the prefix of its preset names (others: the dataset)


def default_preset(protocol: str, dataset: str) -> str:
    """The preset that fits a zoo's dataset (e.g. digits-single for a digits zoo, fmnist-multi for a
    Fashion-MNIST zoo)."""
    name = f"{PRESET_PREFIX.get(dataset, dataset)}-{protocol}"
    if name not in SPACE_PRESETS:
        raise ValueError(f"preset: no {protocol} preset for dataset {dataset!r}; valid presets: "
                         f"{', '.join(SPACE_PRESETS)}")
    return name
