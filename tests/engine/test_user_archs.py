"""User architectures on the general batched engine: property tests over random small CNNs and MLPs
of the supported operations (tests/engine/random_nets.py), each an ordinary ``nn.Module``.

For every drawn network: the traced spec's ``SpecNet`` takes the module's state dict strictly;
``batched_forward`` of the packed (BatchNorm-folded) PReps equals each network's own module forward
in eval mode, outputs and gradients (of the input and of the PReps, against the per-network
reference loop), in both input modes; PRep pack/unpack round-trips; folding equals BatchNorm in eval
mode; the zoo trainer's batched module equals each instance's module in training mode (outputs,
parameter gradients, running statistics); chunks of networks give the chunkless result.

Tolerances. float64: relative 1e-10 (a few hundred float64 roundings at most: u = 1.1e-16 times
the sums' term counts, far below; a wrong layer is off by O(1)). float32: outputs (and, for
networks whose gradient is continuous in the inputs, gradients) against the float64 truth must be
at worst 4x as far from it as the module's own float32 forward is (``assert_as_accurate``: the same
products summed in another order have errors of the same size, Higham's gamma_k bound, whatever
the machine's summation order) or within 1e-5 relative. ReLU, LeakyReLU and max pooling make the
gradient jump where a pre-activation crosses 0 or two pooled values tie; a float32 rounding can put
the engine and the module on different sides, so those networks' float32 gradients are not
compared (their float64 ones are, tightly).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.engine import batched_forward, batched_forward_reference
from netspace_fast.engine import general
from netspace_fast.prep import PRepLayout, unpack_prep
from netspace_fast.zoo.model import BatchedZooNet
from conftest import assert_as_accurate, pack_float64, rel_err
from random_nets import build, is_smooth, recipes

B = 3
N = 4
TIGHT = 1e-10


def pack64(nets, spec, width: int = 64) -> torch.Tensor:
    """PReps folded in float64 (the pack op's math, conftest.pack_float64; the op itself packs float32)."""
    from netspace_fast.prep.pack import gather_pack_args

    _, tensors, plan, eps, num_values = gather_pack_args(nets)
    rows = PRepLayout.for_spec(spec, width).height
    return pack_float64(tensors, plan, eps, len(nets), rows, width).detach()


def traced(recipe, seeds=range(B)):
    """(spec, [module], [SpecNet BN form loaded strictly from each module])."""
    mods = [build(recipe, seed)[0] for seed in seeds]
    in_shape = build(recipe, 0)[1]
    spec = archs.spec_from_module(mods[0], torch.randn(2, *in_shape), name="drawn")
    nets = []
    for m in mods:
        net = archs.SpecNet(spec, batchnorm=True)
        net.load_state_dict(m.state_dict(), strict=True)
        nets.append(net.eval())
    return spec, mods, nets


@given(recipes(), st.booleans())
def test_batched_forward_equals_each_module_float64(recipe, shared):
    spec, mods, nets = traced(recipe)
    preps = pack64([n.double() for n in nets], spec).requires_grad_()
    x = (torch.randn(N, *spec.input_shape) if shared else torch.randn(B, N, *spec.input_shape)).double()
    x.requires_grad_()
    y = batched_forward(spec, preps, x)
    with torch.no_grad():
        for b, m in enumerate(mods):
            want = m.double()(x if shared else x[b])
            assert rel_err(y[b], want) <= TIGHT
    ref = batched_forward_reference(spec, preps, x)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (preps, x), g)
    exp = torch.autograd.grad(ref, (preps, x), g)
    for a, b_ in zip(got, exp):
        assert rel_err(a, b_) <= TIGHT
    # the input gradient also equals the user's own module's (BatchNorm unfolded, eval mode)
    xs = x.detach().requires_grad_()
    own = torch.stack([m(xs if shared else xs[b]) for b, m in enumerate(mods)])
    (gx_own,) = torch.autograd.grad(own, xs, g)
    assert rel_err(got[1], gx_own) <= TIGHT
    # the PRep padding gets exactly zero gradient
    assert torch.all(got[0].reshape(B, -1)[:, spec.num_params:] == 0)


@given(recipes())
def test_float32_within_the_modules_own_error(recipe):
    spec, mods, nets = traced(recipe)
    preps = nf.pack_preps(nets, 64).detach()
    x = torch.randn(N, *spec.input_shape)
    p32 = preps.clone().requires_grad_()
    x32 = x.clone().requires_grad_()
    y32 = batched_forward(spec, p32, x32)
    p64 = preps.double().requires_grad_()
    x64 = x.double().requires_grad_()
    y64 = batched_forward_reference(spec, p64, x64)
    yref = batched_forward_reference(spec, preps.clone().requires_grad_(), x.clone().requires_grad_())
    assert_as_accurate(y32, yref, y64)
    if is_smooth(recipe):
        g = torch.randn_like(y64)
        got = torch.autograd.grad(y32, (p32, x32), g.float())
        truth = torch.autograd.grad(y64, (p64, x64), g)
        pr, xr = preps.clone().requires_grad_(), x.clone().requires_grad_()
        ref = torch.autograd.grad(batched_forward_reference(spec, pr, xr), (pr, xr), g.float())
        for a, r, t in zip(got, ref, truth):
            assert_as_accurate(a, r, t)


@given(recipes())
def test_pack_unpack_round_trip_and_fold_equals_bn_eval(recipe):
    spec, mods, nets = traced(recipe, seeds=[0])
    net = nets[0]
    prep = nf.pack_preps([net], 64).detach()
    folded = nf.fold_bn(net)
    x = torch.randn(N, *spec.input_shape, dtype=torch.float64)
    with torch.no_grad():  # fold == BN in eval mode: float64 folding, tight
        assert rel_err(batched_forward(spec, pack64([net.double()], spec), x)[0], mods[0].double()(x)) <= TIGHT
        net.float()
    views = unpack_prep(prep[0], PRepLayout.for_spec(spec, 64))
    assert list(views) == [p.name for p in spec.params]
    for name, p in folded.named_parameters():
        assert torch.equal(views[name], p.detach())  # pack then unpack gives the folded parameters
    repacked = nf.pack_preps([folded], 64)
    assert torch.equal(repacked, prep)


@settings(max_examples=15)
@given(recipes())
def test_zoo_module_equals_each_instance_in_training(recipe):
    spec, mods, nets = traced(recipe)
    for m in nets:
        m.double().train()
    refs = [archs.SpecNet(spec).double() for _ in nets]
    for r, m in zip(refs, nets):
        r.load_state_dict(m.state_dict())
        r.train()
    zoo = BatchedZooNet(nets).double().train()
    x = torch.randn(B, N + 1, *spec.input_shape, dtype=torch.float64)
    y = zoo(x)
    want = torch.stack([r(x[b]) for b, r in enumerate(refs)])
    assert rel_err(y, want) <= TIGHT
    g = torch.randn_like(y)
    y.backward(g)
    want.backward(g)
    states = zoo.state_dicts()
    for b, r in enumerate(refs):
        # relative to the network's largest gradient: a bias before a training-mode BatchNorm has a
        # gradient of 0 in exact arithmetic, rounding noise in both
        scale = max(p.grad.abs().max().item() for p in r.parameters())
        for name, p in r.named_parameters():
            got = getattr(zoo, name.replace(".", "__")).grad[b]
            assert (got - p.grad).abs().max().item() <= TIGHT * scale, name
        for name, t in r.state_dict().items():
            assert rel_err(states[b][name].double(), t.double()) <= TIGHT, name


@settings(max_examples=10)
@given(recipes(image=True), st.booleans())
def test_chunks_of_networks_give_the_chunkless_result(recipe, shared):
    spec, mods, nets = traced(recipe)
    preps = nf.pack_preps(nets, 64).detach().double()
    x = (torch.randn(N, *spec.input_shape) if shared else torch.randn(B, N, *spec.input_shape)).double()
    outs = []
    saved = general.CHUNK_BYTES
    try:
        for budget in (1 << 40, 1):  # one grouped call; one network a call
            general.CHUNK_BYTES = budget
            p = preps.clone().requires_grad_()
            y = batched_forward(spec, p, x)
            y.square().sum().backward()
            outs.append((y.detach(), p.grad))
        assert general.chunk_size(spec, B, N, 8) == 1
    finally:
        general.CHUNK_BYTES = saved
    for a, b in zip(*outs):
        assert rel_err(a, b) <= TIGHT


def test_built_in_specs_stay_on_the_fast_engine():
    for name in archs.ARCH_NAMES:
        assert archs.spec(name, "cifar10").fast
    leaky = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 2))
    assert not archs.spec_from_module(leaky, torch.zeros(1, 3, 32, 32)).fast  # ReLU: the general engine


def test_gradcheck_float64_tiny():
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, (2, 3), padding=(1, 0), groups=2, bias=False), nn.BatchNorm2d(4), nn.GELU(),
                      nn.MaxPool2d(2), nn.Conv2d(4, 4, 1), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 2 * 1, 3)).eval()
    spec = archs.spec_from_module(m, torch.randn(2, 2, 4, 4))
    net = archs.SpecNet(spec)
    net.load_state_dict(m.state_dict())
    preps = pack64([net.double().eval(), net.double().eval()], spec).requires_grad_()
    for x in (torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)):
        assert torch.autograd.gradcheck(lambda p, x: batched_forward(spec, p, x), (preps, x.requires_grad_()))


@given(recipes(), st.booleans())
def test_one_node_backward_equals_autograd_through_the_batched_calls(recipe, shared):
    """The general engine's hand-written backward (one autograd node, in-place activation gradients)
    against autograd through the same batched calls, float64; a second backward (retain_graph)
    recomputes what the first one freed and gives the same gradients."""
    spec, mods, nets = traced(recipe)
    preps = pack64([n.double() for n in nets], spec)
    x = (torch.randn(N, *spec.input_shape) if shared else torch.randn(B, N, *spec.input_shape)).double()
    p1, x1 = preps.clone().requires_grad_(), x.clone().requires_grad_()
    p2, x2 = preps.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = batched_forward(spec, p1, x1)
    y2 = general.prep_general_forward_autograd(spec, p2, x2, shared)
    assert rel_err(y1, y2) <= TIGHT
    g = torch.randn_like(y1)
    a = torch.autograd.grad(y1, (p1, x1), g, retain_graph=True)
    b = torch.autograd.grad(y2, (p2, x2), g)
    again = torch.autograd.grad(y1, (p1, x1), g)
    for u, v, w in zip(a, b, again):
        assert rel_err(u, v) <= TIGHT and torch.equal(u, w)


def test_negative_leaky_slope_and_preps_only_gradient():
    from torch import nn

    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(-0.5), nn.Flatten(), nn.Linear(2 * 4 * 4, 2), nn.LeakyReLU(-2.0),
                      nn.Linear(2, 2))
    spec = archs.spec_from_module(m, torch.randn(2, 1, 6, 6))
    net = archs.SpecNet(spec)
    net.load_state_dict(m.state_dict())
    preps = pack64([net.double(), net.double()], spec).requires_grad_()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)  # no gradient wanted for x
    assert torch.autograd.gradcheck(lambda p: batched_forward(spec, p, x), (preps,))
    with torch.no_grad():
        assert rel_err(batched_forward(spec, preps, x)[0], m.double()(x)) <= TIGHT
