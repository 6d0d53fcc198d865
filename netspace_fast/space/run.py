"""A NetSpace run folder: everything a training run writes, readable without pickle (safetensors + JSON),
every file written atomically (:mod:`netspace_fast.storage`), resumable after a kill.

- ``run.json``: the command and its configuration (a rerun with another one is refused);
- ``state.json``: the last completed epoch, the checkpoint file that holds its weights and optimizer
  state, the best validation score so far, the metrics history;
- ``ckpt-<epoch>.safetensors``: encoder (``encoder.*``), decoder (``decoder.*``) and Adam state
  (``opt.<i>.step|exp_avg|exp_avg_sq``, i the parameter's index); written BEFORE ``state.json``
  names it, the previous one removed only after, so a valid checkpoint exists at every moment
  (the original deletes its old checkpoint before writing the new one);
- ``best.safetensors`` + ``best.json``: the weights with the best validation score.

A new run writes nothing until its first weights: :meth:`Run.create_or_resume` checks the folder and
the configuration, and the folder and ``run.json`` are made with the first checkpoint (or best
weights), so a start that fails on its inputs (no teacher in the zoo, an empty split, no GPU) leaves
nothing behind to block a retry. JSON files are strict JSON: a NaN or infinite number (a metric of
a diverged epoch) is written as null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load, save as st_save
from torch import nn

from ..storage import atomic_write_bytes, config_differences, strict_json

__all__ = ["Run", "RUN_SCHEMA"]

RUN_SCHEMA = 1


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(strict_json(obj), indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def _compared(config: Any) -> Any:
    """What must match for a run to resume: its configuration but the recipe's description (prose that a
    newer release may word differently; the run keeps the one it was started with)."""
    if isinstance(config, dict) and isinstance(config.get("recipe"), dict):
        return {**config, "recipe": {k: v for k, v in config["recipe"].items() if k != "description"}}
    return config


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: {str(path)!r} is not readable JSON: {e}") from None


class Run:
    """A run folder (see the module doc)."""

    def __init__(self, path: Path, meta: dict, pending: bool = False) -> None:
        self.path, self.meta = path, meta
        self._pending = pending  # a new run: the folder and run.json are written with its first weights

    @property
    def command(self) -> str:
        return self.meta["command"]

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @classmethod
    def create_or_resume(cls, path, command: str, config: dict) -> "Run":
        """Open ``path`` for ``command`` with ``config``: a new folder is created, an existing run of
        the same command and configuration is resumed, anything else refused."""
        path = Path(path)
        meta = {"schema": RUN_SCHEMA, "command": command, "config": json.loads(json.dumps(config))}
        if (path / "run.json").exists():
            old = _read_json(path / "run.json", "run")
            if old.get("command") != command:
                raise ValueError(f"run {str(path)!r} belongs to another command ({old.get('command')!r}, not "
                                 f"{command!r}); use a new folder")
            before, now = _compared(old.get("config")), _compared(meta["config"])
            if before != now:
                diff = config_differences(before, now, "the run's")
                shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                raise ValueError(f"run {str(path)!r} was started with another configuration, so it is not resumed "
                                 f"({shown}); use a new --out, or the run's own settings")
            return cls(path, old)
        if path.exists() and not path.is_dir():
            raise ValueError(f"out: {str(path)!r} exists and is not a folder")
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"out: {str(path)!r} exists and is not a run folder; use a new or empty folder")
        return cls(path, meta, pending=True)

    def _materialize(self) -> None:
        """The folder and ``run.json`` of a new run, before its first weights are written."""
        if self._pending:
            self.path.mkdir(parents=True, exist_ok=True)
            if not (self.path / "run.json").exists():
                atomic_write_bytes(self.path / "run.json", _json_bytes(self.meta))
            self._pending = False

    @classmethod
    def open(cls, path) -> "Run":
        path = Path(path)
        if not (path / "run.json").is_file():
            raise ValueError(f"run: {str(path)!r} is not a run folder (no run.json)")
        run = cls(path, _read_json(path / "run.json", "run"))
        cfg = run.config
        if isinstance(cfg, dict) and cfg.get("user_archs"):  # the zoo's user architectures, by name again
            from ..zoo.format import register_user_archs

            recipe = cfg.get("recipe")
            register_user_archs(cfg, path, recipe.get("dataset") if isinstance(recipe, dict) else None)
        return run

    # --- state and checkpoints -----------------------------------------------------------------

    def state(self) -> dict | None:
        p = self.path / "state.json"
        return _read_json(p, "run state") if p.exists() else None

    def save_checkpoint(self, encoder: nn.Module, decoder: nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict) -> None:
        """Weights + optimizer state of the epoch ``state["epoch"]``, then ``state.json`` naming them."""
        name = f"ckpt-{state['epoch']:05d}.safetensors"
        self._materialize()
        atomic_write_bytes(self.path / name, st_save(_weights(encoder, decoder) | _opt_tensors(optimizer)))
        old = self.state()
        atomic_write_bytes(self.path / "state.json", _json_bytes(state | {"checkpoint": name}))
        if old and old.get("checkpoint") not in (None, name):
            (self.path / old["checkpoint"]).unlink(missing_ok=True)

    def load_checkpoint(self, encoder: nn.Module, decoder: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        state = self.state()
        tensors = self._load(state["checkpoint"])
        _load_weights(encoder, decoder, tensors)
        _load_opt(optimizer, tensors)
        return state

    def save_best(self, encoder: nn.Module, decoder: nn.Module, info: dict) -> None:
        self._materialize()
        atomic_write_bytes(self.path / "best.safetensors", st_save(_weights(encoder, decoder)))
        atomic_write_bytes(self.path / "best.json", _json_bytes(info))

    def load_weights(self, encoder: nn.Module, decoder: nn.Module, which: str = "best") -> dict:
        """The best weights (``which="best"``, falling back to the last checkpoint) or the last."""
        if which == "best" and (self.path / "best.safetensors").is_file():
            _load_weights(encoder, decoder, self._load("best.safetensors"))
            return _read_json(self.path / "best.json", "best")
        state = self.state()
        if state is None:
            raise ValueError(f"run {str(self.path)!r} has no checkpoint yet")
        _load_weights(encoder, decoder, self._load(state["checkpoint"]))
        return {"epoch": state["epoch"]}

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return st_load((self.path / name).read_bytes())
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"run {str(self.path)!r}: {name} is not a readable safetensors file: {e}") from None


def _weights(encoder: nn.Module, decoder: nn.Module) -> dict[str, torch.Tensor]:
    out = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    out.update({f"decoder.{k}": v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()})
    return out


def _load_weights(encoder: nn.Module, decoder: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    for prefix, module in (("encoder.", encoder), ("decoder.", decoder)):
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            why = " ".join(str(e).split())  # torch's message, on one line
            raise ValueError(f"checkpoint: the {prefix[:-1]}'s weights do not fit this configuration "
                             f"(PRep size or network sizes differ): {why[:400]}") from None


def _opt_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for k, v in optimizer.state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                out[f"opt.{i}.{k}"] = v.detach().cpu().contiguous()
    return out


def _load_opt(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = {k.split(".", 2)[2]: v.to(p.device if v.dim() else v.device)
              for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if st:
            optimizer.state[p] = st
