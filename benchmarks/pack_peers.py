"""Model zoos and the peer implementations the packing/folding benchmarks compare against.

Shared by the CPU benchmarks (``test_bench_*.py``, pytest-benchmark) and the GPU script
(``gpu_bench_pack.py``). Every peer works on any device and returns the same thing as the
netspace_fast call it is measured against, so a correctness check can compare them directly.

Peers (named as in the issue):
  (a) ``pack_original``   the original NetSpace code's way: per network, flatten and cat the
                          parameters, cut the vector into rows of W one row at a time (padding
                          each row to W), stack the rows, pad the row count, then stack networks.
  (b) ``pack_cat_pad``    per network ``torch.cat`` of the flattened parameters and one ``F.pad``,
                          then ``torch.stack``.
  (c) ``foldpack_fuse_weights``  per network and per (conv, bn) pair
                          ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (convs without BN and the
                          fc copied), then cat + pad per network, then stack.
  (c1) ``fold_fuse_eval_convs``  ``fuse_conv_bn_eval`` per (conv, bn) pair: the fused conv modules
                          only, one list per network.
  (c2) ``fold_fuse_eval_models`` the common way to get a complete BN-free model: ``copy.deepcopy``
                          the network, replace each conv by ``fuse_conv_bn_eval(conv, bn)`` and
                          each BatchNorm by ``nn.Identity()``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from netspace_fast import archs, prep_shape

WIDTH = 10_000


def make_models(name: str, batch: int, *, batchnorm: bool, dataset: str = "cifar10", seed: int = 0,
                device: str | torch.device = "cpu") -> list[nn.Module]:
    """``batch`` networks as a user has them: built by ``archs.build``, eval mode, requires_grad as built.

    BN networks get random affine parameters and running statistics (as after training), so
    folding is not the identity on gamma=1, beta=0, mean=0, var=1.
    """
    torch.manual_seed(seed)
    models = []
    for _ in range(batch):
        m = archs.build(name, dataset, batchnorm=batchnorm)
        if batchnorm:
            with torch.no_grad():
                for mod in m.modules():
                    if isinstance(mod, nn.BatchNorm2d):
                        mod.weight.uniform_(0.5, 1.5)
                        mod.bias.normal_(0.0, 0.1)
                        mod.running_mean.normal_(0.0, 0.2)
                        mod.running_var.uniform_(0.5, 2.0)
        models.append(m.to(device).eval())
    return models


def rows_for(models: list[nn.Module], width: int) -> int:
    """H of the PRep of these (same-architecture, BN-free-equivalent) networks."""
    m = models[0]
    num = m.spec.num_params if isinstance(m, archs.SpecNet) else sum(p.numel() for p in m.parameters())
    return prep_shape(num, width)[0]


# ---------------------------------------------------------------------------------------------
# (a), (b): packing BN-free networks


def pack_original(models: list[nn.Module], width: int = WIDTH) -> torch.Tensor:
    """(a) the original NetSpace code's way, a row at a time."""
    height = rows_for(models, width)
    preps = []
    for m in models:
        flat = torch.cat([p.view(-1) for p in m.parameters()], dim=0)
        rows = []
        start = 0
        while start < flat.numel():
            row = flat[start:start + width]
            rows.append(F.pad(row, [0, width - row.numel()], "constant", 0))
            start += width
        prep = torch.stack(rows, dim=0)
        prep = F.pad(prep, [0, 0, 0, height - prep.shape[0]], "constant", 0)
        preps.append(prep)
    return torch.stack(preps, dim=0)


def pack_cat_pad(models: list[nn.Module], width: int = WIDTH) -> torch.Tensor:
    """(b) cat + one pad per network, then stack."""
    height = rows_for(models, width)
    total = height * width
    out = []
    for m in models:
        flat = torch.cat([p.reshape(-1) for p in m.parameters()])
        out.append(F.pad(flat, (0, total - flat.numel())).view(height, width))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# (c): folding BN networks (the spec says which conv each BatchNorm follows)


def foldpack_fuse_weights(models: list[nn.Module], width: int = WIDTH) -> torch.Tensor:
    """(c) fuse_conv_bn_weights per (conv, bn), copy the rest, cat + pad per network, stack."""
    height = rows_for(models, width)
    total = height * width
    out = []
    for m in models:
        parts = []
        for layer in m.spec.pack_layers:  # packing order (downsample after conv2), not execution order
            mod = m.get_submodule(layer.name)
            if layer.bn:
                bn = m.get_submodule(layer.bn)
                w, b = fuse_conv_bn_weights(mod.weight, mod.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
            else:
                w, b = mod.weight, mod.bias
            parts.append(w.reshape(-1))
            parts.append(b.reshape(-1))
        flat = torch.cat(parts)
        out.append(F.pad(flat, (0, total - flat.numel())).view(height, width))
    return torch.stack(out)


def fold_fuse_eval_convs(models: list[nn.Module]) -> list[list[nn.Conv2d]]:
    """(c1) the fused conv modules only (fuse_conv_bn_eval), one list per network."""
    out = []
    for m in models:
        fused = []
        for layer in m.spec.layers:
            if layer.bn:
                fused.append(fuse_conv_bn_eval(m.get_submodule(layer.name), m.get_submodule(layer.bn)))
        out.append(fused)
    return out


def fold_fuse_eval_models(models: list[nn.Module]) -> list[nn.Module]:
    """(c2) complete BN-free models: deepcopy, conv -> fuse_conv_bn_eval(conv, bn), bn -> Identity."""
    out = []
    for m in models:
        new = copy.deepcopy(m)
        for layer in new.spec.layers:
            if layer.bn:
                conv, bn = new.get_submodule(layer.name), new.get_submodule(layer.bn)
                new.set_submodule(layer.name, fuse_conv_bn_eval(conv, bn))
                new.set_submodule(layer.bn, nn.Identity())
        # SpecNet forwards through path -> module tables built at construction; refresh them so the
        # copy really computes with the fused convs (two dict rebuilds, negligible next to the rest)
        new._layer_modules = {name: new.get_submodule(name) for name in new._layer_modules}
        new._bn_modules = {name: new.get_submodule(name) for name in new._bn_modules}
        out.append(new)
    return out


def fused_conv_names(model: nn.Module) -> list[str]:
    """Paths of the convs that a BatchNorm follows, in the order (c1) returns their fused modules."""
    return [layer.name for layer in model.spec.layers if layer.bn]


# ---------------------------------------------------------------------------------------------
# the measuring body shared by the pack benchmarks (test_bench_pack.py, test_bench_foldpack.py)

FLOOR = "floor: torch.zeros(B, H, W)"


def bench_pack_provider(measure, models, expected, provider, peers, rounds, compare) -> None:
    """Time ``peers[provider]`` (or the zeros floor) on ``models`` and check its output: ours
    against the pure-PyTorch oracle (so it is checked independently), the peers against
    ``expected`` (pack_preps' output), with ``compare(out, expected)``."""
    if provider == FLOOR:
        shape = expected.shape
        out = measure(lambda: torch.zeros(shape), rounds=rounds, provider=provider, role="bound")
        assert out.shape == shape
        return
    fn, goal = peers[provider]
    out = measure(lambda: fn(models), rounds=rounds, provider=provider, goal=goal)
    if provider == "ours":
        import netspace_fast

        with torch.no_grad():
            expected = netspace_fast.pack_preps(models, width=WIDTH, backend="torch")
    assert out.shape == expected.shape
    compare(out, expected)
