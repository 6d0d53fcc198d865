"""Decoded networks as plain PyTorch state dicts (``netspace export``).

An exported file is a safetensors state dict of the BN-free network, loadable by
``archs.build(arch, dataset, batchnorm=False).load_state_dict(...)``; its header's metadata names
``arch``, ``dataset`` and ``format`` (``netspace_fast.export/1``) plus where it came from.
:func:`load_network` does the loading. An embedding file is a safetensors file with one tensor,
``"embedding"``, of shape (E,) or (1, E)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load, save as st_save
from torch import nn

from .. import archs
from ..archs import ArchSpec
from ..prep import PRepLayout, unpack_prep
from ..storage import atomic_write_bytes
from .common import decode_batches, open_explorer, trim

__all__ = ["EXPORT_FORMAT", "export_network", "load_embedding", "load_network", "network_state_dict",
           "read_metadata", "save_embedding", "save_network"]

EXPORT_FORMAT = "netspace_fast.export/1"


def network_state_dict(prep: torch.Tensor, spec: ArchSpec) -> dict[str, torch.Tensor]:
    """The state dict (parameter name -> contiguous CPU tensor) of the BN-free ``spec`` network held in
    one PRep (H, W) (a taller PRep is trimmed)."""
    if not isinstance(prep, torch.Tensor) or prep.dim() != 2:
        raise ValueError(f"prep: expected one PRep (H, W), got "
                         f"{tuple(prep.shape) if isinstance(prep, torch.Tensor) else type(prep).__name__}")
    p = trim(prep.detach().float().cpu(), spec)
    layout = PRepLayout.for_spec(spec, p.shape[1])
    return {k: v.clone().contiguous() for k, v in unpack_prep(p, layout).items()}


def save_network(path, prep: torch.Tensor, spec: ArchSpec, metadata: dict | None = None) -> Path:
    """Write the network of ``prep`` as a plain safetensors state dict (atomically); returns the path."""
    meta = {"format": EXPORT_FORMAT, "arch": spec.name, "dataset": str(spec.dataset)}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    from ..outputs import check_output

    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"out: {str(path)!r} is a folder; expected a .safetensors file path")
    check_output(path, folder=False, sub="exports")  # never a run's or a zoo's own file
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, st_save(network_state_dict(prep, spec), metadata=meta))
    return path


def read_metadata(path) -> dict[str, str]:
    """The header metadata of an exported network."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"network: {str(path)!r} is not a readable safetensors file: {e}") from None
    if meta.get("format") != EXPORT_FORMAT or "arch" not in meta or "dataset" not in meta:
        raise ValueError(f"network: {str(path)!r} is not a network exported by netspace (no {EXPORT_FORMAT!r} "
                         f"metadata with arch and dataset)")
    return dict(meta)


def load_network(path, device: str = "cpu") -> nn.Module:
    """An exported network as an eval-mode ``archs.build(arch, dataset, batchnorm=False)`` module."""
    meta = read_metadata(path)
    module = archs.build(meta["arch"], meta["dataset"], batchnorm=False)
    module.load_state_dict(st_load(Path(path).read_bytes()), strict=True)
    return module.to(device).eval()


def save_embedding(path, z: torch.Tensor) -> Path:
    """An embedding (E,) or (1, E) as a safetensors file with key ``"embedding"`` (atomically)."""
    if not isinstance(z, torch.Tensor) or z.dim() not in (1, 2) or (z.dim() == 2 and z.shape[0] != 1):
        raise ValueError(f"z: expected one embedding (E,) or (1, E), got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    atomic_write_bytes(path, st_save({"embedding": z.detach().float().cpu().reshape(-1).contiguous()}))
    return Path(path)


def load_embedding(path, embed: int | None = None) -> torch.Tensor:
    """The embedding (1, E) of an embedding file (safetensors, key ``"embedding"``, (E,) or (1, E))."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"embedding: {str(path)!r} is not a file")
    try:
        tensors = st_load(path.read_bytes())
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"embedding: {str(path)!r} is not a readable safetensors file: {e}") from None
    if "embedding" not in tensors:
        raise ValueError(f"embedding: {str(path)!r} has no tensor 'embedding' (it has {sorted(tensors)})")
    z = tensors["embedding"].float()
    if z.dim() == 1:
        z = z[None]
    if z.dim() != 2 or z.shape[0] != 1 or (embed is not None and z.shape[1] != embed):
        raise ValueError(f"embedding: expected shape ({embed or 'E'},) or (1, {embed or 'E'}), got {tuple(z.shape)} "
                         f"in {str(path)!r}")
    if not torch.isfinite(z).all():
        raise ValueError(f"embedding: {str(path)!r} holds NaN or Inf")
    return z


def export_network(run_dir, out, *, id: str | None = None, embedding=None, device: str = "cpu") -> dict:
    """Decode a zoo instance's embedding (``id``) or an embedding file (``embedding``: a path, or a
    tensor (E,) / (1, E)) and write the decoded network to ``out`` (a .safetensors file). Multi: the
    architecture is the one the predicted ClassId names. Returns ``{"path", "arch", "dataset",
    "class_id"}``."""
    if (id is None) == (embedding is None):
        raise ValueError("export: expected exactly one of id (a zoo instance) and embedding (a file), got "
                         + ("both" if id is not None else "neither"))
    from ..outputs import check_output

    check_output(out, folder=False, sub="exports")  # before any work: never a run's or a zoo's own file
    ex = open_explorer(run_dir, device, what="export")
    if id is not None:
        z = ex.space.encode(ex.preps([id]))
        source = f"zoo instance {id}"
    elif isinstance(embedding, torch.Tensor):
        z = embedding.detach().float().reshape(1, -1)
        if z.shape[1] != ex.space.decoder.config.embed:
            raise ValueError(f"embedding: expected {ex.space.decoder.config.embed} values, got {z.shape[1]}")
        source = "embedding tensor"
    else:
        z = load_embedding(embedding, ex.space.decoder.config.embed)
        source = f"embedding file {Path(embedding).name}"
    preps, cids = decode_batches(ex, z)
    spec = ex.spec_of(int(cids[0]))
    path = save_network(out, preps[0], spec, {"run": str(Path(run_dir).resolve()), "source": source,
                                              "class_id": int(cids[0]) if ex.protocol == "multi" else ""})
    return {"path": path, "arch": spec.name, "dataset": spec.dataset,
            "class_id": int(cids[0]) if ex.protocol == "multi" else None}
