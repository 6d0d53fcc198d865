"""Scenario 1: packing BN-free networks into PReps (W = 10,000) on CPU.

netspace_fast.pack_preps against (a) the original NetSpace code's row-by-row packing and (b)
torch.cat + F.pad per network then torch.stack; see pack_peers.py. Goals (issue): >= 10x (a),
>= 2x (b). Printed by the summary of conftest.py, never asserted. A third entry, the floor
(torch.zeros of the output's shape), is no peer: it shows how much of ours is output allocation.

The reusable plan (``netspace_fast.PRepPacker``, built once before the timing) has groups of its
own ("packer ..."): there "ours" is ``packer()``, against the one-shot ``pack_preps`` and against
``packer(out=buf)`` (no output allocation), reported without goals.
"""

from __future__ import annotations

import pytest
import torch

import netspace_fast
from pack_peers import FLOOR, WIDTH, bench_pack_provider, pack_cat_pad, pack_original

ROUNDS = 7

PEERS = {
    "ours": (lambda ms: netspace_fast.pack_preps(ms, width=WIDTH), None),
    "(a) original row-by-row": (lambda ms: pack_original(ms, WIDTH), 10.0),
    "(b) cat + pad + stack": (lambda ms: pack_cat_pad(ms, WIDTH), 2.0),
}


def _equal(out, expected):
    assert torch.equal(out, expected), "output differs from pack_preps'"


def _bench(measure, models, packed, provider):
    bench_pack_provider(measure, models, packed(models), provider, PEERS, ROUNDS, _equal)


@pytest.mark.benchmark(group="pack resnet32 B=64")
@pytest.mark.parametrize("provider", [*PEERS, FLOOR])
def test_pack_resnet32_b64(measure, resnet32_bnfree_64, packed, provider):
    _bench(measure, resnet32_bnfree_64, packed, provider)


@pytest.mark.benchmark(group="pack lenetlike B=256")
@pytest.mark.parametrize("provider", [*PEERS, FLOOR])
def test_pack_lenetlike_b256(measure, lenetlike_256, packed, provider):
    _bench(measure, lenetlike_256, packed, provider)


# ---------------------------------------------------------------------------------------------
# the reusable plan: PRepPacker, built once per zoo (outside the timing), vs the one-shot call

_PACKERS: dict[int, tuple] = {}


def _packer(models):
    """(packer, preallocated output) of ``models``, built once per zoo."""
    if id(models) not in _PACKERS:
        packer = netspace_fast.PRepPacker(models, width=WIDTH)
        _PACKERS[id(models)] = (packer, torch.empty(packer.shape))
    return _PACKERS[id(models)]


PACKER_PEERS = {
    "ours": (lambda ms: _packer(ms)[0](), None),
    "pack_preps (one call, gathers)": (lambda ms: netspace_fast.pack_preps(ms, width=WIDTH), None),
    "PRepPacker(out=buf)": (lambda ms: _packer(ms)[0](out=_packer(ms)[1]), None),
}


def _bench_packer(measure, models, packed, provider):
    _packer(models)
    bench_pack_provider(measure, models, packed(models), provider, PACKER_PEERS, ROUNDS, _equal)


@pytest.mark.benchmark(group="packer resnet32 B=64")
@pytest.mark.parametrize("provider", [*PACKER_PEERS, FLOOR])
def test_packer_resnet32_b64(measure, resnet32_bnfree_64, packed, provider):
    _bench_packer(measure, resnet32_bnfree_64, packed, provider)


@pytest.mark.benchmark(group="packer lenetlike B=256")
@pytest.mark.parametrize("provider", [*PACKER_PEERS, FLOOR])
def test_packer_lenetlike_b256(measure, lenetlike_256, packed, provider):
    _bench_packer(measure, lenetlike_256, packed, provider)
