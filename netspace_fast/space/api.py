"""The Python face of a trained NetSpace: ``Space.load(run_dir)``, then encode PReps, decode embeddings,
get decoded networks as ordinary modules, and evaluate a split of the zoo.

    import netspace_fast as nf
    space = nf.space.Space.load("run")
    z = space.encode(preps)                    # (B, E)
    preps2 = space.decode(z)                   # (B, H, W)
    nets = space.decoded_networks(z)           # BN-free nn.Modules (Multi: the predicted architecture)
    rows = space.evaluate("test")              # one dict per network, as ``netspace eval``
"""

from __future__ import annotations

import torch
from torch import nn

from .. import archs
from ..prep import load_prep
from .evaluate import evaluate_networks
from .presets import SpacePreset
from .run import Run

__all__ = ["Space"]


class Space:
    """A NetSpace run's encoder and decoder (its best weights) with the run's architectures."""

    def __init__(self, run: Run, encoder, decoder, preset: SpacePreset, specs: list, device: str) -> None:
        self.run, self.encoder, self.decoder, self.preset, self.specs, self.device = (run, encoder, decoder, preset,
                                                                                      specs, device)

    @classmethod
    def load(cls, run_dir, *, which: str = "best", device: str = "cpu") -> "Space":
        from .train import build_space

        run = Run.open(run_dir)
        if run.command == "train sdf":
            raise ValueError(f"run: {str(run_dir)!r} is an SDF run (train sdf); load it with "
                             f"netspace_fast.sdf.space.SdfSpace.load")
        cfg = run.config
        p = SpacePreset.from_json(cfg["recipe"])
        height = _height(run)
        enc, dec = build_space(p, height, cfg["seed"], device)
        run.load_weights(enc, dec, which)
        enc.eval(), dec.eval()
        names = list(p.archs) if p.protocol == "multi" else list(cfg["archs"])  # recorded by train and import
        return cls(run, enc, dec, p, [archs.spec(n, p.dataset) for n in names], device)

    @property
    def protocol(self) -> str:
        return self.preset.protocol

    @torch.no_grad()
    def encode(self, preps: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, E) of PReps (B, H, W) at this space's PRep shape."""
        return self.encoder(preps.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded PReps (B, H, W) of embeddings (B, E)."""
        return self.decoder(z.to(self.device))

    @torch.no_grad()
    def class_ids(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted ClassIds (B,) (Multi only)."""
        return self.decoder.class_logits(z.to(self.device)).argmax(-1)

    def decoded_networks(self, z: torch.Tensor) -> list[nn.Module]:
        """The decoded networks as BN-free modules (Multi: of the architecture each predicted ClassId names)."""
        preps = self.decode(z)
        ids = self.class_ids(z).tolist() if self.protocol == "multi" else [0] * preps.shape[0]
        out = []
        for prep, c in zip(preps, ids):
            spec = self.specs[c]
            module = archs.build(spec.name, spec.dataset, batchnorm=False).to(self.device)
            out.append(load_prep(module, _trim(prep, spec)).eval())
        return out

    def evaluate(self, split: str = "test") -> list[dict]:
        """Rows of every network of ``split`` of the run's zoo on the dataset's test images."""
        from .train import load_space_data

        cfg = self.run.config
        if cfg.get("zoo") is None:
            raise ValueError("evaluate: this run names no zoo")
        d = load_space_data(cfg["zoo"], self.preset, root=cfg["root"], splits=(split,), images_split="test",
                            device=self.device)
        x, y = d.images[split]
        return evaluate_networks(self.encoder, self.decoder, d.groups[split], x, y,
                                 self.specs if self.protocol == "multi" else None)


def _height(run: Run) -> int:
    """The PRep height of a run's networks, from its saved decoder (scalelayer.scale is (H, W))."""
    from safetensors import safe_open

    name = "best.safetensors" if (run.path / "best.safetensors").is_file() else (run.state() or {}).get("checkpoint")
    if name is None:
        raise ValueError(f"run {str(run.path)!r} has no weights yet")
    with safe_open(str(run.path / name), "pt") as f:
        return int(f.get_slice("decoder.scalelayer.scale").get_shape()[0])


def _trim(prep: torch.Tensor, spec) -> torch.Tensor:
    """A PRep at the architecture's own height (multi-architecture PReps share the tallest one)."""
    from ..prep import PRepLayout

    return prep[:PRepLayout.for_spec(spec, prep.shape[1]).height]
