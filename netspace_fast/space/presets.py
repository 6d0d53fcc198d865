"""NetSpace training recipes (METHOD.md section 6) as presets: small ones for the embedded digits zoos
on a CPU (a scaled-down network, our design: METHOD.md section 5 leaves CPU sizes open) and the
paper's (E = 4096, PRep width 10,000, Adam lr 1e-4, about 1k epochs) for GPUs."""

from __future__ import annotations

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

    @classmethod
    def from_json(cls, d: dict) -> "SpacePreset":
        """The preset a run recorded (:meth:`to_json`)."""
        return cls(**{**d, "archs": tuple(d["archs"]), "lr_milestones": tuple(d.get("lr_milestones", ()))})

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (1-based): ``lr`` times 0.1 per milestone already passed."""
        return self.lr * 0.1 ** sum(epoch > m for m in self.lr_milestones)

    def to_json(self) -> dict:
        d = asdict(self)
        d["archs"] = list(self.archs)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


_SMALL = {"embed": 1024, "view": 32, "dec_a": 16, "dec_b": 64, "dec_c": 32, "prep_scale": 30.0}
_TINY = {"embed": 256, "view": 16, "dec_a": 8, "dec_b": 16, "dec_c": 8, "prep_scale": 30.0}

SPACE_PRESETS: dict[str, SpacePreset] = {
    "digits-single": SpacePreset("Single-Architecture on a digits zoo (CPU, minutes)", "digits", "single", 1024,
                                 epochs=200, meta_batch=8, image_batch=128, lr=1e-3, val_every=5, space=_SMALL),
    # the demo's space (`netspace demo`, on the digits-demo zoo): digits-single, shorter
    "digits-demo": SpacePreset("Single-Architecture for the demo on the digits-demo zoo (CPU, ~3 min)", "digits",
                               "single", 1024, epochs=120, meta_batch=8, image_batch=128, lr=1e-3, val_every=5,
                               space=_SMALL),
    "digits-tiny-single": SpacePreset("smoke test: a tiny Single space on a digits zoo, 3 epochs", "digits", "single",
                                      1024, epochs=3, meta_batch=2, image_batch=512, lr=1e-3, space=_TINY),
    "digits-tiny-multi": SpacePreset("smoke test: a tiny Multi space on a digits zoo, 2 epochs", "digits", "multi",
                                     1024, epochs=2, meta_batch=2, image_batch=512, lr=1e-3, space=_TINY,
                                     archs=MULTI_ARCHS),
    # Multi on CPU: the decoded ResNets sit on a plateau (weights ~1e-2, the signal vanishes through
    # the blocks) for ~200 of their own steps before they learn (measured), so the preset trains long;
    # centered scale-layer bias and clipping: see SpaceConfig.bias_init
    "digits-multi": SpacePreset("Multi-Architecture on a digits zoo (CPU, ~25 min)", "digits", "multi", 1024,
                                epochs=300, meta_batch=2, image_batch=128, lr=3e-4, val_every=10, clip_grad=1.0,
                                space={**_SMALL, "bias_init": "centered"}, archs=MULTI_ARCHS),
    # meta-batch 2, not cifar10-unseen's 1: L_gamma needs a LeNetLike and a ResNet32 in one meta-batch, and with one
    # network a step the ClassId head never learns the unseen architectures (measured: at 1, none of 225
    # interpolated embeddings read as VanillaCNN or ResNet8 after 300 epochs; at 2, 150 of 225 by epoch 150)
    "digits-unseen": SpacePreset("sampling unseen architectures on a digits-unseen zoo (CPU)", "digits", "multi", 1024,
                                 epochs=300, meta_batch=2, image_batch=128, lr=3e-4, val_every=10, clip_grad=1.0,
                                 space={**_SMALL, "bias_init": "centered"}, archs=MULTI_ARCHS),
    "cifar10-single": SpacePreset("Single-Architecture, CIFAR-10 (paper)", "cifar10", "single", 10_000, epochs=1000,
                                  meta_batch=8, image_batch=128, val_every=10),
    "cifar10-multi": SpacePreset("Multi-Architecture, CIFAR-10 (paper)", "cifar10", "multi", 10_000, epochs=1000,
                                 meta_batch=2, image_batch=128, val_every=10, archs=MULTI_ARCHS),
    "cifar10-unseen": SpacePreset("sampling unseen architectures, CIFAR-10 (paper)", "cifar10", "multi", 10_000,
                                  epochs=1000, meta_batch=1, image_batch=128, val_every=10, archs=MULTI_ARCHS),
    "tinyimagenet-single": SpacePreset("Single-Architecture, Tiny-ImageNet (paper)", "tinyimagenet", "single",
                                       10_000, epochs=1000, meta_batch=8, image_batch=128, val_every=10),
    "tinyimagenet-multi": SpacePreset("Multi-Architecture, Tiny-ImageNet (paper)", "tinyimagenet", "multi", 10_000,
                                      epochs=1000, meta_batch=2, image_batch=128, val_every=10, archs=MULTI_ARCHS),
}


def default_preset(protocol: str, dataset: str) -> str:
    """The preset that fits a zoo's dataset (e.g. digits-single for a digits zoo)."""
    name = f"{dataset}-{protocol}"
    if name not in SPACE_PRESETS:
        raise ValueError(f"preset: no {protocol} preset for dataset {dataset!r}; valid presets: "
                         f"{', '.join(SPACE_PRESETS)}")
    return name
