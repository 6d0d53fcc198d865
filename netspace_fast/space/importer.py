"""Import of a checkpoint of the original NetSpace code into a run of ours.

The original's checkpoint is a ``torch.save`` dict with keys ``epoch``, ``best_score``, ``"0"`` (the
encoder's state dict), ``"1"`` (the decoder's, with the ClassId head in Multi runs) and ``"2"`` (the
Adam state). It is read with ``torch.load(..., weights_only=True)`` (no code runs), checked
against the paper configuration that its decoder's ``scalelayer`` shape names ((H, W) PReps, E =
4096; refused, not loaded, when anything differs) and written as the ``best`` weights of a new run
folder (safetensors + JSON; ``netspace eval`` reads it when a zoo is given). The checkpoint does not
name its architectures: ``archs`` (ClassId order in Multi) and ``dataset`` say them. The Adam state
is not imported (a run resumed from an import starts a fresh optimizer).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .. import archs as archs_mod
from ..storage import load_error_reason
from .nets import Decoder, Encoder, SpaceConfig
from .presets import SPACE_PRESETS
from .run import Run

__all__ = ["import_original_checkpoint"]


def _check_torch_save_file(path: Path) -> None:
    """A ValueError of one line unless ``path`` starts as a ``torch.save`` file does: a zip archive
    (``PK\\x03\\x04``, torch >= 1.6) or a pickle (protocol byte ``\\x80``, the legacy format). A text,
    JSON or empty file is named as such, not met as an unpickler's KeyError."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return
    if not head:
        what = "an empty file"
    elif head.lstrip()[:1] in (b"{", b"["):
        what = "a JSON file"
    elif all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        what = "a text file"
    else:
        what = f"a file starting with bytes {head[:8].hex(' ')}"
    raise ValueError(f"checkpoint: {str(path)!r} is {what}, not a torch.save file (expected the original code's "
                     f"checkpoint: a zip archive or a pickle)")


def import_original_checkpoint(path, out, archs: list[str], dataset: str, *, zoo=None) -> Run:
    """Read the original code's checkpoint ``path`` into a new run folder ``out``; returns the run."""
    path = Path(path)
    if not archs:
        raise ValueError("arch: name the checkpoint's architecture(s) (ClassId order for Multi)")
    for a in archs:
        archs_mod.spec(a, dataset)  # a clear error for an unknown architecture or dataset
    if not path.is_file():
        raise ValueError(f"checkpoint: {str(path)!r} is not a file")
    _check_torch_save_file(path)
    try:
        with warnings.catch_warnings():  # torch's warnings would print before our one error line
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or a broken file: one clear message
        raise ValueError(f"checkpoint: {str(path)!r} is not a readable checkpoint of the original code "
                         f"(torch.load with weights_only=True failed: {load_error_reason(e)})") from None
    if not isinstance(ckpt, dict) or not {"0", "1"} <= set(ckpt):
        got = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint: expected the original's dict with keys 'epoch', 'best_score', '0' (encoder), "
                         f"'1' (decoder), '2' (optimizer); got {got}")
    enc_sd, dec_sd = ckpt["0"], ckpt["1"]
    scale = dec_sd.get("scalelayer.scale") if isinstance(dec_sd, dict) else None
    if scale is None or scale.dim() != 2:
        raise ValueError("checkpoint: the decoder ('1') has no scalelayer.scale (H, W): not a NetSpace checkpoint")
    H, W = scale.shape
    head = "arch_classifier.weight" in dec_sd
    num_archs = dec_sd["arch_classifier.weight"].shape[0] if head else 0
    protocol = "multi" if head else "single"
    if head and num_archs != len(archs):
        raise ValueError(f"arch: the checkpoint's ClassId head has {num_archs} architectures, got {len(archs)} "
                         f"({','.join(archs)})")
    if not head and len(archs) != 1:
        raise ValueError(f"arch: a Single-Architecture checkpoint (no ClassId head) has one architecture, got "
                         f"{len(archs)}")
    from ..prep import PRepLayout

    for a in archs:
        need = PRepLayout.for_spec(archs_mod.spec(a, dataset), W).height
        if need > H:
            raise ValueError(f"arch: {a} ({dataset}) needs PReps of at least {need} rows at width {W}; the "
                             f"checkpoint's decoder makes ({H}, {W})")
    cfg = SpaceConfig.paper(H, W, num_archs=num_archs)
    enc, dec = Encoder(cfg), Decoder(cfg)
    for name, module, sd in (("encoder ('0')", enc, enc_sd), ("decoder ('1')", dec, dec_sd)):
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"checkpoint: the {name} does not fit the paper configuration for ({H}, {W}) PReps "
                             f"(refused, not loaded): {str(e).splitlines()[0]}") from None
    preset = SPACE_PRESETS[f"cifar10-{protocol}"]
    recipe = {**preset.to_json(), "dataset": dataset, "width": int(W), "archs": list(archs) if head else []}
    config = {"zoo": None if zoo is None else str(Path(zoo).resolve()), "preset": f"import:{path.name}",
              "recipe": recipe, "seed": 0, "epochs": 0, "root": None, "source": str(path.resolve()),
              "archs": list(archs), "dataset": dataset}
    run = Run.create_or_resume(out, f"train {protocol}", config)
    epoch = ckpt.get("epoch")
    best = ckpt.get("best_score")
    run.save_best(enc, dec, {"epoch": int(epoch) if isinstance(epoch, (int, float)) else None,
                             "score": float(best) if isinstance(best, (int, float)) else None,
                             "imported_from": str(path.resolve())})
    return run
