"""Batched SIREN fitting.

K SIREN MLPs (3 -> 256 -> 256 -> 1, sin(30 x), :func:`netspace_fast.archs.build` ``("siren")``)
are fitted at once, each to its own shape's signed distances, each step with its own points. The K
networks' parameters are ONE trainable PRep batch (K, H, 64) (width 64: 0.4% padding); the forward
and backward of all K networks are one autograd node writing one (K, P) gradient, and one Adam
(elementwise, so per-network state) updates the batch. The loss is the sum over networks of each
network's MSE, so every network gets exactly the gradient it would get alone.

Two kernels compute the K networks (``kernel=``):

- ``"op"``: :func:`netspace_fast.batched_forward`, i.e. the batched linear op with the fused
  bias + sin(30 z) epilogue (C++ on CPU, Triton on CUDA). The default on every device: on CPU its
  epilogue's sin(30 z) and 30 cos(30 z) are vectorized (csrc/sincos_f32.h, ~0.4 ns a value), and
  with malloc tuned as the CLI does (:func:`netspace_fast.tune_malloc`) it measured 1.2x faster
  than ``"fused"`` and 1.3x than the 4-at-a-time bmm way, one thread. With glibc's default malloc
  and activations of 32 MiB or more (K x points x 1 KiB), every step pays page faults for fresh
  mmaps instead, and the 4-at-a-time way (4x smaller buffers) is faster (BENCHMARKS.md, "SIREN
  fitting").
- ``"fused"``: :class:`SirenStack`, the SIREN-specific path in PyTorch: batched GEMMs with the
  factor 30 folded into them (``baddbmm(.., beta=30, alpha=30)``), ATen's vectorized sin/cos, the
  activation gradient as one in-place multiply, weight and bias gradients straight into the (K, P)
  gradient. Kept as a peer and as a second implementation to test against.

Both compute in float32 on every backend: the fit turns TF32 off for its duration (sin(30 x)
multiplies rounding error by 30).

:func:`fit_sdf_zoo` is the resumable job behind ``netspace zoo fit-sdf``: shapes in groups of
``preset.group`` networks, a checkpoint (weights, Adam state, step, every network's sampling
generator; safetensors + JSON, atomic) every ``checkpoint_every`` steps, instances written into
the zoo format with per-shape ``sdf_mse`` and ``sdf_within_0.01`` on held-out points.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save

from .. import archs
from ..engine.batched import batched_forward
from ..killpoint import after_checkpoint
from ..monitor import log, progress_bar
from ..prep import pack_preps
from ..prep.layout import PRepLayout, unpack_prep
from ..storage import atomic_write_bytes
from ..zoo import format as zoo_format
from .presets import INITS, SDF_PRESETS, SdfPreset
from .shapes import ShapeSet, open_shapes

__all__ = ["INITS", "KERNELS", "PREP_WIDTH", "WITHIN", "SirenFitter", "SirenStack", "fit_sdf_zoo", "network_seed",
           "shared_init_seed", "siren_forward"]

SIREN = archs.spec("siren")
PREP_WIDTH = 64
WITHIN = 0.01  # the paper's tolerance: |prediction - sdf| <= 0.01
KERNELS = ("op", "fused")
W0 = archs.SIREN_W0
_LAYOUT = PRepLayout.for_spec(SIREN, PREP_WIDTH)
_OFF = {e.name: e.offset for e in _LAYOUT.entries}
_CKPT_FORMAT = "netspace-sdf-fit-1"


# ---------------------------------------------------------------------------------------------
# the fused SIREN path


def _views(p: torch.Tensor):
    """(w1, b1, w2, b2, w3, b3) views of a (K, P) PRep batch."""
    K = p.shape[0]
    out = []
    for name in ("fc1", "fc2", "fc3"):
        layer = next(lay for lay in SIREN.layers if lay.name == name)
        o, i = layer.out_features, layer.in_features
        w = p[:, _OFF[f"{name}.weight"]:_OFF[f"{name}.weight"] + o * i].view(K, o, i)
        b = p[:, _OFF[f"{name}.bias"]:_OFF[f"{name}.bias"] + o]
        out += [w, b]
    return out


class SirenStack(torch.autograd.Function):
    """K SIREN MLPs on per-network points: ``apply(preps2d (K, P), x (K, N, 3)) -> (K, N, 1)``.

    Forward per hidden layer: ``s = baddbmm(b, h, W^T, beta=30, alpha=30)`` (s = 30 z), ``h' = sin(s)``.
    Backward: ``g_z/30 = g_h * cos(s)``, the 30 folded into the GEMMs that read it. Weight and bias
    gradients land in one (K, P) gradient (zero padding). Equal to the reference
    (:func:`netspace_fast.engine.batched.batched_forward_reference`) up to float rounding (tested)."""

    @staticmethod
    def forward(ctx, p, x):
        w1, b1, w2, b2, w3, b3 = _views(p)
        s1 = torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2), beta=W0, alpha=W0)
        h1 = torch.sin(s1)
        s2 = torch.baddbmm(b2.unsqueeze(1), h1, w2.transpose(1, 2), beta=W0, alpha=W0)
        h2 = torch.sin(s2)
        out = torch.baddbmm(b3.unsqueeze(1), h2, w3.transpose(1, 2))
        ctx.save_for_backward(p, x, s1, h1, s2, h2)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        p, x, s1, h1, s2, h2 = ctx.saved_tensors
        w1, b1, w2, b2, w3, b3 = _views(p)
        grad = torch.zeros_like(p)
        gw1, gb1, gw2, gb2, gw3, gb3 = _views(grad)
        g = g.contiguous()
        gw3.copy_(torch.bmm(g.transpose(1, 2), h2))
        gb3.copy_(g.sum(1))
        gz = g * w3  # (K, N, 1) * (K, 1, 256): the gradient of h2
        gz.mul_(torch.cos(s2))  # = g_z2 / 30
        gw2.copy_(torch.baddbmm(gw2, gz.transpose(1, 2), h1, beta=0, alpha=W0))
        gb2.copy_(gz.sum(1).mul_(W0))
        gz1 = torch.baddbmm(h1, gz, w2, beta=0, alpha=W0)  # the gradient of h1 (h1's buffer is not written)
        gz1.mul_(torch.cos(s1))  # = g_z1 / 30
        gw1.copy_(torch.baddbmm(gw1, gz1.transpose(1, 2), x, beta=0, alpha=W0))
        gb1.copy_(gz1.sum(1).mul_(W0))
        gx = None
        if ctx.needs_input_grad[1]:
            gx = torch.baddbmm(x, gz1, w1, beta=0, alpha=W0)
        return grad, gx


def siren_forward(preps: torch.Tensor, x: torch.Tensor, kernel: str | None = None) -> torch.Tensor:
    """Outputs (K, N) of the K SIRENs in ``preps`` (K, H, 64) on per-network points ``x`` (K, N, 3)."""
    kernel = default_kernel(preps.device) if kernel is None else kernel
    if kernel == "op":
        return batched_forward(SIREN, preps, x)[..., 0]
    if kernel == "fused":
        return SirenStack.apply(preps.reshape(preps.shape[0], -1), x)[..., 0]
    raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")


def default_kernel(device) -> str:
    """``"op"`` on every device (the CPU choice measured: BENCHMARKS.md, "SIREN fitting")."""
    return "op"


@contextlib.contextmanager
def full_fp32():
    """TF32 off (torch matmuls, cuDNN and the Triton kernels) for the duration of a SIREN fit."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, os.environ.get("NETSPACE_TF32"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.environ["NETSPACE_TF32"] = "0"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[0], old[1]
        if old[2] is None:
            os.environ.pop("NETSPACE_TF32", None)
        else:
            os.environ["NETSPACE_TF32"] = old[2]


# ---------------------------------------------------------------------------------------------
# the fitter


def network_seed(seed: int, index: int) -> int:
    """The seed of shape ``index``'s network: its initialization (unless the zoo shares one, see
    :func:`shared_init_seed`) and, + 1, its sampling generator."""
    return int(seed) * 1_000_003 + int(index)


def shared_init_seed(seed: int) -> int:
    """The initialization seed of every network of a zoo fitted with ``init="shared"``."""
    return int(seed) * 1_000_003 - 1


def _init_preps(seeds: list[int]) -> torch.Tensor:
    models = []
    with torch.random.fork_rng(devices=[]):
        for s in seeds:
            torch.manual_seed(s)
            models.append(archs.build("siren"))
    with torch.no_grad():
        return pack_preps(models, width=PREP_WIDTH)


def _adam(param: torch.Tensor, lr: float) -> torch.optim.Adam:
    try:
        return torch.optim.Adam([param], lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a torch or device without the fused kernel
        return torch.optim.Adam([param], lr=lr)


class SirenFitter:
    """K SIRENs, one per shape ``indices[k]`` of ``shapes``, fitted together.

    Network k is initialized from :func:`network_seed` ``(seed, indices[k])`` (``init="per-shape"``,
    each its own random SIREN) or from :func:`shared_init_seed` ``(seed)`` (``init="shared"``: every
    network starts from the same random SIREN), and draws its points with its own generator, so a
    network's trajectory does not depend on which others share its group (batched == one at a time,
    tested). ``lr_at(t)`` = lr * lr_decay ** (t // decay_every)."""

    def __init__(self, shapes: ShapeSet, indices, *, seed: int = 0, lr: float = 1e-4, lr_decay: float = 0.9,
                 decay_every: int = 1_000, points: int = 20_000, device="cpu", kernel: str | None = None,
                 init: str = "per-shape") -> None:
        if not isinstance(shapes, ShapeSet):
            raise TypeError(f"shapes: expected a ShapeSet (netspace_fast.sdf.shapes), got {type(shapes).__name__}")
        self.indices = [shapes._check_index(i) for i in indices]
        if not self.indices:
            raise ValueError("indices: expected at least one shape index")
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise ValueError(f"points: expected a positive int, got {points!r}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        self.device = torch.device(device)
        self.kernel = default_kernel(self.device) if kernel is None else kernel
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {self.kernel!r}")
        self.shapes, self.seed = shapes, int(seed)
        self.lr, self.lr_decay, self.decay_every, self.points = float(lr), float(lr_decay), int(decay_every), points
        self.seeds = [network_seed(seed, i) for i in self.indices]
        self.init = init
        self.init_seeds = self.seeds if init == "per-shape" else [shared_init_seed(seed)] * len(self.seeds)
        self.preps = _init_preps(self.init_seeds).to(self.device).requires_grad_()
        self.opt = _adam(self.preps, self.lr)
        self.gens = [torch.Generator().manual_seed(s + 1) for s in self.seeds]
        self.step = 0

    @property
    def K(self) -> int:
        return len(self.indices)

    def lr_at(self, t: int) -> float:
        return self.lr * self.lr_decay ** (t // self.decay_every)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's points (K, N, 3) and distances (K, N), each network from its own generator.

        Drawn on the CPU (each network's generator) straight into one host buffer each, sent in one
        copy each; on CUDA the buffers are pinned and the copies non-blocking, so a step never waits
        for the device (a pageable ``.to('cuda')`` synchronizes the stream)."""
        cuda = self.device.type == "cuda"
        xs = ys = None
        for k, (i, g) in enumerate(zip(self.indices, self.gens)):
            pts, sdf = self.shapes.sample(i, self.points, g)
            if xs is None:
                xs = torch.empty((self.K, *pts.shape), dtype=pts.dtype, pin_memory=cuda)
                ys = torch.empty((self.K, *sdf.shape), dtype=sdf.dtype, pin_memory=cuda)
            xs[k].copy_(pts)
            ys[k].copy_(sdf)
        return xs.to(self.device, non_blocking=cuda), ys.to(self.device, non_blocking=cuda)

    def train_step(self) -> torch.Tensor:
        """One Adam step of all K networks; returns each network's MSE (K,) before the step."""
        x, y = self.batch()
        with full_fp32():
            per = (siren_forward(self.preps, x, self.kernel) - y).square().mean(1)
            self.opt.zero_grad(set_to_none=True)
            per.sum().backward()
            for group in self.opt.param_groups:
                group["lr"] = self.lr_at(self.step)
            self.opt.step()
        self.step += 1
        return per.detach()

    @torch.no_grad()
    def evaluate(self, chunk: int = 16_384) -> tuple[list[float], list[float]]:
        """Per network: (MSE, fraction with |prediction - sdf| <= 0.01) on its shape's held-out points."""
        mses, within = [], []
        with full_fp32():
            for k, i in enumerate(self.indices):
                pts, sdf = self.shapes.heldout(i)
                se, ok = 0.0, 0
                for s in range(0, pts.shape[0], chunk):
                    x = pts[s:s + chunk].to(self.device)[None]
                    err = siren_forward(self.preps[k:k + 1].detach(), x, self.kernel)[0] - sdf[s:s + chunk].to(self.device)
                    se += float(err.double().square().sum())
                    ok += int((err.abs() <= WITHIN).sum())
                mses.append(se / pts.shape[0])
                within.append(ok / pts.shape[0])
        return mses, within

    def models(self) -> list[archs.SpecNet]:
        """The K networks as ordinary SIREN modules (CPU, eval mode)."""
        out = []
        prep = self.preps.detach().cpu()
        for k in range(self.K):
            m = archs.build("siren")
            m.load_state_dict({n: v.clone() for n, v in unpack_prep(prep[k], _LAYOUT).items()})
            out.append(m.eval())
        return out

    # checkpoints: safetensors (weights, Adam moments, generator states) + JSON (step, Adam step)
    def state_bytes(self, meta: dict | None = None) -> bytes:
        st = self.opt.state.get(self.preps, {})
        tensors = {"preps": self.preps.detach().cpu().contiguous(),
                   "gens": torch.stack([g.get_state() for g in self.gens])}
        if st:
            tensors["exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
            tensors["exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
        info = {"format": _CKPT_FORMAT, "step": self.step, "adam_step": float(st["step"]) if st else 0.0,
                "indices": self.indices, "seeds": self.seeds, "meta": meta or {}}
        if self.init != "per-shape":
            info["init_seeds"] = self.init_seeds
        return st_save(tensors, metadata={"netspace_sdf_fit": json.dumps(info, sort_keys=True)})

    def load_state_bytes(self, data: bytes, path: str = "checkpoint") -> dict:
        """Restore what :meth:`state_bytes` wrote; returns its ``meta``. A file of other networks
        (indices or seeds) is refused with ValueError naming ``path``."""
        try:
            tensors = st_load(data)
            header_len = int.from_bytes(data[:8], "little")
            info = json.loads(json.loads(data[8:8 + header_len])["__metadata__"]["netspace_sdf_fit"])
        except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"{path}: not a SIREN fit checkpoint ({type(e).__name__}: {e}); delete it to "
                             f"restart this group") from None
        if (info.get("format") != _CKPT_FORMAT or info.get("indices") != self.indices or info.get("seeds") != self.seeds
                or info.get("init_seeds", self.seeds) != self.init_seeds):
            raise ValueError(f"{path}: checkpoint of other networks (indices {info.get('indices')}, expected "
                             f"{self.indices}); delete it to restart this group")
        if tuple(tensors["preps"].shape) != tuple(self.preps.shape):
            raise ValueError(f"{path}: preps of shape {tuple(tensors['preps'].shape)}, expected "
                             f"{tuple(self.preps.shape)}")
        with torch.no_grad():
            self.preps.copy_(tensors["preps"].to(self.device))
        for g, s in zip(self.gens, tensors["gens"]):
            g.set_state(s.clone())
        self.opt = _adam(self.preps, self.lr)
        if "exp_avg" in tensors:
            template = self.opt.state_dict()
            template["state"] = {0: {"step": torch.tensor(info["adam_step"], dtype=torch.float32),
                                     "exp_avg": tensors["exp_avg"].to(self.device),
                                     "exp_avg_sq": tensors["exp_avg_sq"].to(self.device)}}
            self.opt.load_state_dict(template)
        self.step = int(info["step"])
        return info.get("meta", {})


# ---------------------------------------------------------------------------------------------
# the zoo job


def _splits(n: int, p: SdfPreset, seed: int) -> list[str]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7)).tolist()
    n_val, n_test = round(n * p.split[0]), round(n * p.split[1])
    where = ["train"] * n
    for pos, i in enumerate(perm):
        where[i] = "val" if pos < n_val else "test" if pos < n_val + n_test else "train"
    return where


def fit_sdf_zoo(out_dir, shapes="procedural", preset: str | SdfPreset = "small", *, seed: int = 0, device="cpu",
                progress: bool = True, kernel: str | None = None) -> Path:
    """Fit one SIREN per shape of ``shapes`` (``"procedural"``, a folder of meshes or of DeepSDF .npz
    files, or a :class:`ShapeSet`) with ``preset``, into the zoo at ``out_dir``.

    Resumable: rerun the same command after a kill; instances already in the manifest are never
    refit, a group resumes from its last checkpoint (``out_dir/.checkpoints``), and a different
    configuration in the same folder is refused. Returns the zoo path."""
    if isinstance(preset, str):
        if preset not in SDF_PRESETS:
            raise ValueError(f"preset: unknown {preset!r}; valid SDF presets: {', '.join(SDF_PRESETS)}")
        p = SDF_PRESETS[preset]
    elif isinstance(preset, SdfPreset):
        p = preset
    else:
        raise TypeError(f"preset: expected a preset name or an SdfPreset, got {type(preset).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    from ..settings import check_device

    device = check_device(device)  # before any work
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out: {str(out)!r} is not a folder")
    shapeset = open_shapes(shapes, n=p.n_shapes, seed=seed, pool_size=p.pool_size, heldout_size=p.heldout_size,
                           cache_dir=out / ".sdf_cache")
    config = {"kind": "sdf", "preset": p.config(), "seed": seed, "shapes": shapeset.describe()}
    zoo_format.init_zoo(out, config)
    (out / ".checkpoints").mkdir(exist_ok=True)
    where = _splits(len(shapeset), p, seed)
    n = len(shapeset)
    groups = [list(range(s, min(s + p.group, n))) for s in range(0, n, p.group)]
    for gi, idx in enumerate(groups):
        done = {e["id"] for e in zoo_format.Zoo.open(out).instances()}
        if all(shapeset.ids[i] in done for i in idx):
            log(progress, f"group {gi + 1}/{len(groups)}: all {len(idx)} networks already in the zoo")
            continue
        fitter = SirenFitter(shapeset, idx, seed=seed, lr=p.lr, lr_decay=p.lr_decay, decay_every=p.decay_every,
                             points=p.points, device=device, kernel=kernel, init=p.init)
        ckpt = out / ".checkpoints" / f"sdf-{gi:04d}.safetensors"
        if ckpt.exists():
            fitter.load_state_bytes(ckpt.read_bytes(), str(ckpt))
            log(progress, f"group {gi + 1}/{len(groups)}: resuming after step {fitter.step}")
        bar = progress_bar(progress, f"sdf group {gi + 1}/{len(groups)} ({len(idx)} networks)", fitter.step, p.steps)
        loss = None
        while fitter.step < p.steps:
            loss = fitter.train_step()
            if bar is not None:
                bar.update(1)
            if fitter.step % p.checkpoint_every == 0 or fitter.step == p.steps:
                atomic_write_bytes(ckpt, fitter.state_bytes())
                if bar is not None:
                    bar.set_postfix({"mse": f"{float(loss.mean()):.2e}"}, refresh=False)
                else:
                    log(progress, f"group {gi + 1}/{len(groups)}: step {fitter.step}/{p.steps} "
                                   f"mean mse {float(loss.mean()):.3e}")
                after_checkpoint(fitter.step)
        if bar is not None:
            bar.close()
        mses, within = fitter.evaluate()
        for k, (i, m) in enumerate(zip(idx, fitter.models())):
            if shapeset.ids[i] in done:
                continue
            zoo_format.write_instance(out, m, id=shapeset.ids[i], arch="siren", dataset=None, protocol="sdf",
                                      seed=fitter.seeds[k], epoch=p.steps, acc={}, split=where[i],
                                      sdf={"shape": shapeset.names[i], "sdf_mse": mses[k],
                                           "sdf_within_0.01": within[k]})
        log(progress, f"group {gi + 1}/{len(groups)}: {len(idx)} networks written; held-out within 0.01: "
                       f"median {sorted(within)[len(within) // 2]:.3f}, min {min(within):.3f}")
        ckpt.unlink(missing_ok=True)  # the group's instances are final
        shapeset.release(idx)
    return out
