"""Shared pieces of the exploration commands: opening a run's space, its zoo and images, looking up
instances, decoding embeddings in batches, evaluating PReps by batched calls (one ``batched_forward``
call per architecture and image batch, never one network at a time), writing CSVs and plots
atomically."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data
from ..archs import ArchSpec
from ..engine import batched_forward, images_per_call
from ..prep import PRepLayout, pack_preps
from ..storage import atomic_write_bytes

__all__ = ["Explorer", "accuracies", "bar", "check_out_dir", "decode_batches", "is_sdf_run", "open_explorer",
           "pyplot", "save_figure", "trim", "write_csv"]


def is_sdf_run(run) -> bool:
    """Whether a :class:`netspace_fast.space.run.Run` is an SDF run (another protocol, own commands)."""
    cfg = run.config if isinstance(run.config, dict) else {}
    recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}
    return (run.command.split()[-1:] == ["sdf"] or recipe.get("protocol") == "sdf" or cfg.get("protocol") == "sdf")


def trim(prep: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
    """A PRep (H, W) cut to the architecture's own height (Multi PReps share the tallest one)."""
    return prep[:PRepLayout.for_spec(spec, prep.shape[-1]).height]


@dataclass
class Explorer:
    """A trained space with what the exploration commands need: the :class:`~netspace_fast.space.Space`,
    its zoo (:class:`~netspace_fast.zoo.format.Zoo`) and the dataset seed the zoo's splits use."""

    space: object  # netspace_fast.space.Space
    zoo: object  # netspace_fast.zoo.format.Zoo
    seed: int

    @property
    def protocol(self) -> str:
        return self.space.protocol

    @property
    def dataset(self) -> str:
        return self.space.preset.dataset

    @property
    def device(self) -> str:
        return self.space.device

    @property
    def height(self) -> int:
        return self.space.decoder.config.height

    @property
    def width(self) -> int:
        return self.space.decoder.config.width

    @property
    def arch_names(self) -> list[str]:
        """Single: [the run's architecture]; Multi: the architectures in ClassId order."""
        return [s.name for s in self.space.specs]

    def spec_of(self, class_id: int) -> ArchSpec:
        return self.space.specs[int(class_id) if self.protocol == "multi" else 0]

    def entry(self, id: str) -> dict:
        """The zoo entry of instance ``id`` (a ValueError naming a few valid ids otherwise)."""
        if not isinstance(id, str):
            raise TypeError(f"id: expected a zoo instance id (str), got {type(id).__name__}")
        if id not in self.zoo:
            ids = [e["id"] for e in self.zoo.instances()]
            some = ", ".join(ids[:6]) + (", ..." if len(ids) > 6 else "")
            raise ValueError(f"id: the run's zoo {str(self.zoo.path)!r} has no instance {id!r} (its {len(ids)} "
                             f"instances: {some})")
        e = self.zoo.entry(id)
        if e["architecture"] not in self.arch_names:
            raise ValueError(f"id: instance {id!r} is a {e['architecture']}, which this space does not hold "
                             f"(its architectures: {', '.join(self.arch_names)})")
        return e

    def preps(self, ids: Sequence[str]) -> torch.Tensor:
        """The PReps (B, H, W) of zoo instances at this space's PRep shape (BN folded while packing;
        one packing call per architecture)."""
        entries = [self.entry(i) for i in ids]
        out = torch.empty(len(ids), self.height, self.width)
        by_arch: dict[str, list[int]] = {}
        for k, e in enumerate(entries):
            by_arch.setdefault(e["architecture"], []).append(k)
        with torch.no_grad():
            for arch, ks in by_arch.items():
                out[ks] = pack_preps([self.zoo.model(ids[k]) for k in ks], self.width, self.height)
        return out.to(self.device)

    def images(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's images and labels of ``split`` (the zoo's seed: the same split as training)."""
        root = self.space.run.config.get("root")
        x, y = data.zoo_tensors(self.zoo.config, self.dataset, split, root=root, seed=self.seed)
        return x.to(self.device), y.to(self.device)

    def class_ids(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted ClassIds (B,) of embeddings (Multi), zeros (Single)."""
        if self.protocol != "multi":
            return torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        return self.space.class_ids(z)


def open_explorer(run_dir, device: str = "cpu", *, what: str = "this command") -> Explorer:
    """The space of ``run_dir`` (its best weights) and its zoo; a clear ValueError for a folder that is no
    run, an SDF run, or a run that names no zoo."""
    from ..space import Space
    from ..space.run import Run
    from ..zoo.format import Zoo

    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    run = Run.open(run_dir)
    if is_sdf_run(run):
        raise ValueError(f"run: {str(run_dir)!r} is an SDF run; {what} needs a Single- or Multi-Architecture "
                         f"classification run")
    if not run.command.startswith("train ") or run.command.split()[1] not in ("single", "multi"):
        raise ValueError(f"run: {str(run_dir)!r} is a {run.command!r} run, not a NetSpace training run")
    if run.config.get("zoo") is None:
        raise ValueError(f"run: {str(run_dir)!r} names no zoo (import it with --zoo ZOO); {what} needs the zoo's "
                         f"networks")
    space = Space.load(run_dir, device=device)
    zoo = Zoo.open(run.config["zoo"])
    cfg = zoo.config
    seed = int(cfg.get("seed", 0)) if isinstance(cfg, dict) else 0  # as load_space_data
    return Explorer(space, zoo, seed)


@torch.no_grad()
def decode_batches(ex: Explorer, z: torch.Tensor, chunk: int = 16, progress: bool = False,
                   desc: str = "decoding") -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded PReps (B, H, W) and predicted ClassIds (B,) (zeros in Single) of embeddings (B, E), in
    decoder calls of ``chunk`` embeddings."""
    if z.dim() != 2:
        raise ValueError(f"z: expected embeddings (B, E), got shape {tuple(z.shape)}")
    preps, ids = [], []
    b = bar(progress, z.shape[0], desc, "network")
    for s in range(0, z.shape[0], chunk):
        zz = z[s:s + chunk].to(ex.device)
        preps.append(ex.space.decoder(zz))
        ids.append(ex.class_ids(zz))
        if b is not None:
            b.update(zz.shape[0])
    if b is not None:
        b.close()
    return torch.cat(preps), torch.cat(ids)


@torch.no_grad()
def accuracies(specs: Sequence[ArchSpec] | ArchSpec, preps: torch.Tensor, class_ids: torch.Tensor | None,
               images: torch.Tensor, labels: torch.Tensor, *, chunk: int = 32, batch: int = 512) -> torch.Tensor:
    """(B,) accuracy of every PRep's network on ``images``: PRep b is read as ``specs[class_ids[b]]``
    (or as the one ``specs``). Batched: one ``batched_forward`` call per architecture, chunk of
    ``chunk`` networks and batch of ``batch`` images."""
    if isinstance(specs, ArchSpec):
        specs, class_ids = [specs], torch.zeros(preps.shape[0], dtype=torch.long)
    if class_ids is None or class_ids.shape != preps.shape[:1]:
        raise ValueError(f"class_ids: expected one ClassId per PRep ({preps.shape[0]},), got "
                         f"{None if class_ids is None else tuple(class_ids.shape)}")
    class_ids = class_ids.cpu()
    correct = torch.zeros(preps.shape[0])
    for c in class_ids.unique().tolist():
        idx = (class_ids == c).nonzero().flatten()
        for s in range(0, idx.numel(), chunk):
            part = idx[s:s + chunk]
            p = preps[part.to(preps.device)]
            n = images_per_call(p.shape[0], batch, p.device)  # CPU: networks x images capped (engine.calls)
            for t in range(0, images.shape[0], n):
                out = batched_forward(specs[c], p, images[t:t + n])
                correct[part] += (out.argmax(-1) == labels[t:t + n]).sum(1).float().cpu()
    return correct / max(images.shape[0], 1)


def bar(progress: bool, total: int, desc: str, unit: str = "it"):
    """A tqdm bar on stderr when ``progress`` and stderr is a terminal; None otherwise."""
    if not progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def check_out_dir(out) -> Path:
    """``out`` as a folder, created if missing (a ValueError if it is a file, or if it is a run or a zoo
    folder, or a part of one that they own: :func:`netspace_fast.outputs.check_output`)."""
    from ..outputs import check_output

    if out is None:
        raise ValueError("out: expected a folder to write into, got None")
    out = check_output(out, folder=True)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(round(v, 6))
    return str(v)


def write_csv(path, fields: Sequence[str], rows: Sequence[dict]) -> Path:
    """Rows as CSV (header ``fields``), written atomically; None and NaN cells as '' and 'nan'."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in rows:
        w.writerow([_cell(r.get(k)) for k in fields])
    atomic_write_bytes(path, buf.getvalue().encode())
    return Path(path)


def save_figure(fig, path) -> Path:
    """A matplotlib figure as PNG, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
