"""Scenario 2: folding BatchNorm and packing in one go, B = 64 BN-trained ResNet56 (W = 10,000), CPU.

netspace_fast.pack_preps (folds on the fly) against (c): fuse_conv_bn_weights per (conv, bn) pair
and per network, the fc and convs without BN copied, cat + pad per network, then stack (see
pack_peers.py). Goal (issue): >= 6x. Printed by the summary of conftest.py, never asserted. The
floor (torch.zeros of the output's shape) is no peer: it shows how much of ours is output allocation.
"""

from __future__ import annotations

import pytest
import torch

import netspace_fast
from pack_peers import FLOOR, WIDTH, bench_pack_provider, foldpack_fuse_weights

ROUNDS = 5

PEERS = {
    "ours": (lambda ms: netspace_fast.pack_preps(ms, width=WIDTH), None),
    "(c) fuse_conv_bn_weights + cat/pad": (lambda ms: foldpack_fuse_weights(ms, WIDTH), 6.0),
}

# Folding is arithmetic (gamma * rsqrt(var + eps) vs gamma / sqrt(var + eps)): the providers may
# differ in the last bits, so this group compares with float32 tolerances, not bit equality.
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.benchmark(group="fold+pack resnet56 B=64")
@pytest.mark.parametrize("provider", [*PEERS, FLOOR])
def test_foldpack_resnet56_b64(measure, resnet56_bn_64, packed, provider):
    bench_pack_provider(measure, resnet56_bn_64, packed(resnet56_bn_64), provider, PEERS, ROUNDS,
                        lambda out, expected: torch.testing.assert_close(out, expected, **TOL))

