"""Scenario 3: fold_bn on 64 BN-trained ResNet56 modules (CPU), returning BN-free modules.

netspace_fast.fold_bn against looping torch.nn.utils.fusion.fuse_conv_bn_eval over layers and
models: (c1) the fused conv modules only, a list per network; (c2) complete BN-free models made
the common way (deepcopy, conv -> fused conv, bn -> Identity). See pack_peers.py. Goal (issue):
>= 3x against (c1); (c2) is reported without a goal. Never asserted.
"""

from __future__ import annotations

import pytest
import torch

import netspace_fast
from pack_peers import fold_fuse_eval_convs, fold_fuse_eval_models, fused_conv_names

ROUNDS = 4
TOL = dict(rtol=1e-5, atol=1e-6)

PEERS = {
    "ours": (netspace_fast.fold_bn, None),
    "(c1) fuse_conv_bn_eval, convs only": (fold_fuse_eval_convs, 3.0),
    "(c2) deepcopy + fuse_conv_bn_eval": (fold_fuse_eval_models, None),
}


@pytest.mark.benchmark(group="fold_bn resnet56 B=64")
@pytest.mark.parametrize("provider", list(PEERS))
def test_fold_bn_resnet56_b64(measure, resnet56_bn_64, packed, provider):
    models = resnet56_bn_64
    fn, goal = PEERS[provider]
    out = measure(lambda: fn(models), rounds=ROUNDS, provider=provider, goal=goal)
    assert len(out) == len(models)
    expected = packed(models)  # the folded values, in packing (= BN-free parameter) order
    if provider == "ours":
        for i, m in enumerate(out):
            assert not m.batchnorm
            flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
            torch.testing.assert_close(flat, expected[i].reshape(-1)[:flat.numel()], **TOL)
            assert not expected[i].reshape(-1)[flat.numel():].any()
        return
    with torch.no_grad():
        ours = netspace_fast.fold_bn(models)
    names = fused_conv_names(models[0])
    for i in range(len(models)):
        ref = dict(ours[i].named_parameters())
        if provider.startswith("(c1)"):
            assert len(out[i]) == len(names)
            for name, conv in zip(names, out[i]):
                torch.testing.assert_close(conv.weight.detach(), ref[f"{name}.weight"].detach(), **TOL)
                torch.testing.assert_close(conv.bias.detach(), ref[f"{name}.bias"].detach(), **TOL)
        else:
            got = dict(out[i].named_parameters())
            assert got.keys() == ref.keys()
            for k in ref:
                torch.testing.assert_close(got[k].detach(), ref[k].detach(), **TOL)
