"""Batched zoo training core: B instances trained as one grouped network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netspace_fast import archs, data
from netspace_fast.zoo import BatchedZooNet, DataOrder, evaluate, random_crop_flip, train_epoch


def make(name: str, seeds: list[int]) -> list:
    out = []
    for s in seeds:
        torch.manual_seed(s)
        m = archs.build(name, "digits")
        with torch.no_grad():  # non-trivial BN statistics, so per-instance BN is really exercised
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.1)
                    mod.running_var.uniform_(0.5, 2.0)
        out.append(m)
    return out


@pytest.fixture(scope="module")
def digits():
    return data.tensors("digits", "train")


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name,opt", [("lenetlike", "sgd"), ("resnet8", "adam")])
def test_training_together_equals_training_alone(digits, name, opt):
    """B=3 instances trained as one job == each trained alone (same seed, same data order)."""
    x, y = digits[0][:192], digits[1][:192]
    seeds = [1, 2, 3]

    def optimizer(net):
        if opt == "sgd":
            return torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        return torch.optim.Adam(net.parameters(), lr=1e-4)

    together = BatchedZooNet(make(name, seeds))
    o = optimizer(together)
    train_epoch(together, o, x, y, DataOrder.from_seeds(seeds), 64, augment_pad=4)
    for i, s in enumerate(seeds):
        alone = BatchedZooNet(make(name, [s]))
        o1 = optimizer(alone)
        train_epoch(alone, o1, x, y, DataOrder.from_seeds([s]), 64, augment_pad=4)
        a, b = together.state_dicts()[i], alone.state_dicts()[0]
        assert a.keys() == b.keys()
        for k in a:
            # float32: grouped vs single convolutions round differently. rtol for the weights;
            # atol 1e-5 for values that start at 0 (BN bias) and moved by 3 Adam steps of ~1e-4,
            # where Adam's normalization turns a 1e-5 relative gradient difference into ~1e-7
            assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5), k
        # and the per-instance BatchNorm running statistics moved away from their start
    start = make(name, seeds)[0].state_dict()
    moved = together.state_dicts()[0]
    if name == "resnet8":
        assert not torch.allclose(moved["bn1.running_mean"], start["bn1.running_mean"])
        assert int(moved["bn1.num_batches_tracked"]) == 3


@pytest.mark.parametrize("name", ["lenetlike", "vanillacnn", "resnet8"])
def test_forward_equals_each_instance(digits, name):
    models = make(name, [4, 5])
    net = BatchedZooNet(models)
    x = digits[0][:10].view(2, 5, 3, 32, 32)
    for train in (False, True):
        net.train(train)
        out = net(x)
        for b, m in enumerate(make(name, [4, 5])):
            m.train(train)
            assert rel(out[b], m(x[b])) <= 1e-4
    # instances() gives back SpecNet modules with the stacked weights
    for b, m in enumerate(net.instances()):
        assert isinstance(m, archs.SpecNet)
        net.eval()
        assert rel(net(x)[b], m(x[b])) <= 1e-4


def test_evaluate_is_per_instance_accuracy(digits):
    net = BatchedZooNet(make("lenetlike", [0, 1]))
    x, y = digits[0][:50], digits[1][:50]
    acc = evaluate(net, x, y, batch_size=16)
    for b, m in enumerate(net.instances()):
        with torch.no_grad():
            expect = (m(x).argmax(-1) == y).float().mean()
        assert abs(acc[b].item() - expect.item()) < 1e-6


def test_random_crop_flip_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = random_crop_flip(x, 0, g)  # no padding: identity or a horizontal flip per sample
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    # every output pixel is a pixel of the sample or padding
    for i in range(2):
        vals = set(out[i].flatten().tolist())
        assert vals <= set(x[i].flatten().tolist()) | {0.0}
    # deterministic given the generator
    assert torch.equal(random_crop_flip(x, 2, torch.Generator().manual_seed(1)), out)


def test_bad_inputs():
    with pytest.raises(ValueError, match="models"):
        BatchedZooNet([])
    with pytest.raises(ValueError, match="models"):
        BatchedZooNet([archs.build("lenetlike", "digits"), archs.build("resnet8", "digits")])
    net = BatchedZooNet(make("lenetlike", [0, 1]))
    with pytest.raises(ValueError, match="x: expected"):
        net(torch.randn(3, 2, 3, 32, 32))


def test_loss_of_each_instance_is_its_own(digits):
    """The summed loss leaves every instance's gradient equal to its own loss's gradient."""
    net = BatchedZooNet(make("lenetlike", [7, 8]))
    x, y = digits[0][:8].view(2, 4, 3, 32, 32), digits[1][:8].view(2, 4)
    out = net(x)
    F.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="none").view(2, -1).mean(1).sum().backward()
    g_together = net.fc3__weight.grad[1].clone()
    m = net.instances()[1]
    m.train()
    F.cross_entropy(m(x[1]), y[1]).backward()
    assert rel(g_together, m.fc3.weight.grad) <= 1e-4


@pytest.mark.parametrize("flip", [False, True])
def test_one_instance_equals_a_plain_module_step_by_step(digits, flip):
    """B=1 through the whole pipeline (per-instance draws, fused gather + augmentation, grouped
    network) == the plain nn.Module trained the textbook way on the same draws. float64, so that
    any difference is semantic, not rounding (float32 rounding grows to ~1e-3 through BatchNorm)."""
    x, y = digits[0][:150].double(), digits[1][:150]
    seed, bs, pad = 5, 64, 3
    (model,) = make("resnet8", [seed])
    net = BatchedZooNet([model.double()])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    train_epoch(net, opt, x, y, DataOrder.from_seeds([seed]), bs, augment_pad=pad, flip=flip)

    (plain,) = make("resnet8", [seed])
    plain.double().train()
    popt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = DataOrder.from_seeds([seed]).gens[0]
    perm = torch.randperm(x.shape[0], generator=gen)
    for t in range(0, x.shape[0], bs):
        idx = perm[t:t + bs]
        xb = random_crop_flip(x[idx], pad, gen, flip)
        loss = F.cross_entropy(plain(xb), y[idx])
        popt.zero_grad(set_to_none=True)
        loss.backward()
        popt.step()
    ours = net.state_dicts()[0]
    for k, v in plain.state_dict().items():
        assert torch.allclose(ours[k].double(), v.double(), rtol=1e-9, atol=1e-12), k


@pytest.mark.parametrize("protocol", ["multi", "single"])
def test_make_optimizer_is_the_protocol_optimizer(digits, protocol):
    """The (fused where available) optimizer of train_zoo takes the same steps as the textbook one."""
    from netspace_fast.zoo import make_optimizer

    x, y = digits[0][:128], digits[1][:128]
    nets = [BatchedZooNet(make("lenetlike", [3, 4])) for _ in range(2)]
    opts = [make_optimizer(nets[0], protocol, 0.01),
            torch.optim.Adam(nets[1].parameters(), lr=0.01) if protocol == "single"
            else torch.optim.SGD(nets[1].parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)]
    for net, opt in zip(nets, opts):
        train_epoch(net, opt, x, y, DataOrder.from_seeds([3, 4]), 32)
    a, b = nets[0].state_dict(), nets[1].state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert not torch.allclose(a["fc3__weight"][0], make("lenetlike", [3])[0].fc3.weight, atol=1e-4)  # it trained


@pytest.mark.parametrize("name", ["lenetlike", "vanillacnn", "resnet8"])
@pytest.mark.parametrize("rule", ["all split", "all grouped", "mixed", "all nchw", "nchw and split"])
def test_split_and_grouped_layouts_agree(digits, monkeypatch, name, rule):
    """Every conv run per instance, all as one grouped call (channels-last, or NCHW), or a mix (the
    layout changes inside the network, residual branches included): same outputs, gradients and BN
    statistics (float64)."""
    from netspace_fast.engine import layout

    x = digits[0][:24].double().view(3, 8, 3, 32, 32)
    results = []
    for r in ("default", rule):
        monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")  # the thresholds decide, whatever the environment says
        if r == "all split":
            monkeypatch.setattr(layout, "SPLIT_MIN_PIXELS", 0)
            monkeypatch.setattr(layout, "SPLIT_MIN_CHANNELS", 0)
        elif r == "all grouped":
            monkeypatch.setattr(layout, "SPLIT_MIN_PIXELS", 10**12)
        elif r == "mixed":  # 32x32 and 16x16 outputs split, 8x8 grouped (N = 8)
            monkeypatch.setattr(layout, "SPLIT_MIN_PIXELS", 8 * 256)
            monkeypatch.setattr(layout, "SPLIT_MIN_CHANNELS", 1)
        elif r == "all nchw":
            monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "nchw")
        elif r == "nchw and split":  # 32x32 inputs split, smaller ones grouped in NCHW
            monkeypatch.setattr(layout, "conv_layout", lambda mode, n, cin, cout, k, stride, padding, hw, *a, **kw:
                                "split" if hw[0] * hw[1] >= 1024 else "nchw")
        net = BatchedZooNet([m.double() for m in make(name, [1, 2, 3])])
        net.train()
        out = net(x)
        out.square().sum().backward()
        results.append((out.detach(), {k: p.grad for k, p in net.named_parameters()},
                        {k: b.clone() for k, b in net.named_buffers()}))
        monkeypatch.undo()
    (o1, g1, b1), (o2, g2, b2) = results
    assert torch.allclose(o1, o2, rtol=1e-10, atol=1e-12)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-9, atol=1e-11), k
    for k in b1:
        assert torch.equal(b1[k], b2[k]) if k.endswith("tracked") else torch.allclose(b1[k], b2[k], rtol=1e-10), k


def test_layout_rule_examples():
    from netspace_fast.engine.layout import use_split

    assert use_split(128, 16, 32 * 32)       # ResNet stage 1, a training batch: per instance
    assert not use_split(128, 6, 14 * 14)    # LeNetLike conv1: grouped
    assert not use_split(64, 16, 5 * 5)      # LeNetLike conv2: grouped
    assert not use_split(32, 64, 8 * 8)      # small batch, small maps: grouped
    assert not use_split(128, 16, 32 * 32, "cuda")  # not measured on GPUs: grouped (launches independent of B)


def test_layout_override(monkeypatch):
    from netspace_fast.engine.layout import use_split

    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "split")
    assert use_split(1, 1, 1) and use_split(1, 1, 1, "cuda")
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "grouped")
    assert not use_split(128, 16, 32 * 32)
    for mode in ("rule", "auto", "tune"):  # use_split is the static rule itself (the tuner: test_layout_tuner.py)
        monkeypatch.setenv("NETSPACE_CONV_LAYOUT", mode)
        assert use_split(128, 16, 32 * 32) and not use_split(128, 6, 14 * 14)
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "fast")
    with pytest.raises(ValueError, match="NETSPACE_CONV_LAYOUT: expected one of"):
        use_split(1, 1, 1)


def test_flatten_of_the_grouped_layout():
    """(N, B*C, H, W) -> (B, N, C*H*W): each network's own (c, h, w) order; gradient channels-last (gradcheck)."""
    from netspace_fast.engine.layout import flatten

    v = torch.randn(3, 2 * 4, 2, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out = flatten(v, 2)
    assert torch.equal(out, torch.stack([v[:, :4].reshape(3, -1), v[:, 4:].reshape(3, -1)]))
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: flatten(t, 2), (v,))
    (g,) = torch.autograd.grad(flatten(v, 2).sum(), v)
    assert g.is_contiguous(memory_format=torch.channels_last)


def test_stacked_linear_gradients():
    from netspace_fast.zoo.model import StackedLinear as _StackedLinear

    h = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(_StackedLinear.apply(h, w, b), torch.einsum("bni,boi->bno", h, w) + b[:, None])
    assert torch.autograd.gradcheck(_StackedLinear.apply, (h, w, b))


def test_preps_of_the_trained_instances(digits):
    """After training: folded PReps straight from the job, equal to packing each instance's folded module."""
    from netspace_fast import load_prep

    net = BatchedZooNet(make("resnet8", [1, 2]))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    train_epoch(net, opt, digits[0][:64], digits[1][:64], DataOrder.from_seeds([1, 2]), 32)
    preps = net.preps(width=504)
    assert preps.shape[0] == 2 and preps.shape[2] == 504
    x = digits[0][:5]
    for b, m in enumerate(net.instances()):  # eval-mode BN networks
        loaded = load_prep(archs.build("resnet8", "digits", batchnorm=False), preps[b]).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(x), m(x), rtol=1e-4, atol=1e-4)


def test_crops_pad_with_normalized_black_like_torchvision(digits):
    """train_zoo's crops pad with the normalized black: the same image torchvision's RandomCrop
    (padding before normalization) gives for the same offset."""
    import torchvision.transforms.functional as TF

    from netspace_fast.data import MEAN, STD
    from netspace_fast.zoo import NORMALIZED_BLACK

    raw = torch.rand(2, 3, 8, 8)
    normalized = TF.normalize(raw, MEAN, STD)
    off, flips = torch.tensor([[0, 3], [4, 1]]), torch.tensor([False, True])
    from netspace_fast.ops.gather_grouped import gather_grouped_ref

    got = gather_grouped_ref(normalized, torch.arange(2)[None], off[None], flips[None], 2, list(NORMALIZED_BLACK))
    for i in range(2):
        padded = TF.pad(raw[i], [2, 2, 2, 2], fill=0.0)
        crop = padded[:, off[i, 0]:off[i, 0] + 8, off[i, 1]:off[i, 1] + 8]
        want = TF.normalize(crop.flip(-1) if flips[i] else crop, MEAN, STD)
        assert torch.allclose(got[i], want, atol=1e-6)
