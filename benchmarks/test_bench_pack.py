"""Scenario 1: packing BN-free networks into PReps (W = 10,000) on CPU.

netspace_fast.pack_preps against (a) the original NetSpace code's row-by-row packing and (b)
torch.cat + F.pad per network then torch.stack; see pack_peers.py. Goals (issue): >= 10x (a),
>= 2x (b). Printed by the summary of conftest.py, never asserted. A third entry, the floor
(torch.zeros of the output's shape), is no peer: it shows how much of ours is output allocation.
"""

from __future__ import annotations

import pytest
import torch

import netspace_fast
from pack_peers import WIDTH, pack_cat_pad, pack_original

ROUNDS = 7
FLOOR = "floor: torch.zeros(B, H, W)"

PEERS = {
    "ours": (lambda ms: netspace_fast.pack_preps(ms, width=WIDTH), None),
    "(a) original row-by-row": (lambda ms: pack_original(ms, WIDTH), 10.0),
    "(b) cat + pad + stack": (lambda ms: pack_cat_pad(ms, WIDTH), 2.0),
}


def _bench(measure, models, packed, provider):
    expected = packed(models)
    if provider == FLOOR:
        shape = expected.shape
        out = measure(lambda: torch.zeros(shape), rounds=ROUNDS, provider=provider, role="bound")
        assert out.shape == shape
        return
    fn, goal = PEERS[provider]
    out = measure(lambda: fn(models), rounds=ROUNDS, provider=provider, goal=goal)
    if provider == "ours":  # against the pure-PyTorch oracle, so ours is checked independently too
        with torch.no_grad():
            expected = netspace_fast.pack_preps(models, width=WIDTH, backend="torch")
    assert out.shape == expected.shape
    assert torch.equal(out, expected), f"{provider}: output differs from pack_preps'"


@pytest.mark.benchmark(group="pack resnet32 B=64")
@pytest.mark.parametrize("provider", [*PEERS, FLOOR])
def test_pack_resnet32_b64(measure, resnet32_bnfree_64, packed, provider):
    _bench(measure, resnet32_bnfree_64, packed, provider)


@pytest.mark.benchmark(group="pack lenetlike B=256")
@pytest.mark.parametrize("provider", [*PEERS, FLOOR])
def test_pack_lenetlike_b256(measure, lenetlike_256, packed, provider):
    _bench(measure, lenetlike_256, packed, provider)
