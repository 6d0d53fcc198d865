"""Names and PRep order of the original NetSpace code.

The original code builds its ResNets from torchvision's ``BasicBlock`` (keys ``conv1``, ``bn1``,
``layer{s}.{i}.conv1/bn1/conv2/bn2/downsample.0/downsample.1``, ``fc``), its VanillaCNN as an
``nn.ModuleList`` (``layers.0`` .. ``layers.5``), and makes a PRep by flattening the BN-fused
network's parameters in module registration order (per block: conv1, conv2, downsample). Here
independent "original-style" modules are built the same way; their state dicts must load strictly
into ours and our ``pack_preps`` must equal their PRep.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.engine import batched_forward
from netspace_fast.prep import PRepLayout
from conftest import assert_fold_close, randomize_bn, rel_err

WIDTH = 1024


class OriginalResNet(nn.Module):
    """A CIFAR ResNet as the original code builds it: torchvision BasicBlocks (ReLU swapped for
    LeakyReLU(0.01)), stages 16/32/64, stem conv3x3 16 + BN, avgpool 8, fc."""

    def __init__(self, depth: int, classes: int = 10, out_mul: int = 1) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = nn.LeakyReLU(0.01)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64 * out_mul, classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        for block in layers:
            block.relu = nn.LeakyReLU(0.01)
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class OriginalVanillaCNN(nn.Module):
    """VanillaCNN as the original code builds it: an nn.ModuleList of five convs and the fc."""

    def __init__(self, dataset: str) -> None:
        super().__init__()
        if dataset == "tinyimagenet":
            config, size, classes = [(8, 2), (16, 2), (32, 2), (64, 2), (64, 2)], 64, 200
        else:
            config, size, classes = [(8, 2), (8, 1), (32, 2), (64, 1), (64, 2)], 32, 10
        self.layers = nn.ModuleList()
        cin, stride_total = 3, 1
        for out, s in config:
            self.layers.append(nn.Conv2d(cin, out, 3, stride=s, padding=1))
            cin, stride_total = out, stride_total * s
        final = size // stride_total
        self.layers.append(nn.Linear(final * final * cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.leaky_relu(layer(x), 0.01)
        return self.layers[-1](x.flatten(1))


def fused_params(model: nn.Module) -> list[torch.Tensor]:
    """The BN-fused network's parameters in registration order (the original's get_prep order):
    every Conv2d folded with the BatchNorm registered right after it, other parameters as they are."""
    mods = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.BatchNorm2d):
            continue
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            w, b = fuse_conv_bn_weights(m.weight, m.bias, nxt.running_mean, nxt.running_var, nxt.eps, nxt.weight,
                                        nxt.bias)
            out += [w.detach(), b.detach()]
        else:
            out += [m.weight.detach(), m.bias.detach()]
    return out


def original_prep(model: nn.Module, width: int = WIDTH) -> torch.Tensor:
    """The original's get_prep: flatten, concatenate, zero-pad to the PRep shape."""
    flat = torch.cat([p.reshape(-1) for p in fused_params(model)])
    H, W = nf.prep_shape(flat.numel(), width)
    return F.pad(flat, (0, H * W - flat.numel())).view(H, W)


RESNET_CASES = [("resnet8", "cifar10"), ("resnet8", "tinyimagenet"), ("resnet32", "cifar10")]


def _original_resnet(name: str, dataset: str) -> OriginalResNet:
    depth = int(name[len("resnet"):])
    return OriginalResNet(depth, *((200, 4) if dataset == "tinyimagenet" else (10, 1)))


@pytest.mark.parametrize("name,dataset", RESNET_CASES)
def test_resnet_state_dict_keys_and_order(name, dataset):
    orig = _original_resnet(name, dataset)
    ours = archs.build(name, dataset)
    got = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    assert got == [(k, tuple(v.shape)) for k, v in orig.state_dict().items()]
    assert any(".downsample.0." in k for k, _ in got) and not any("shortcut" in k for k, _ in got)


@pytest.mark.parametrize("name,dataset", RESNET_CASES)
def test_resnet_original_state_dict_loads_and_packs_like_original(name, dataset):
    orig = randomize_bn(_original_resnet(name, dataset)).eval()
    ours = archs.build(name, dataset)
    ours.load_state_dict(orig.state_dict(), strict=True)
    ours.eval()
    with torch.no_grad():
        prep = nf.pack_preps(ours, WIDTH)[0]
        expected = original_prep(orig)
        assert prep.shape == expected.shape
        assert_fold_close(prep, expected)
        # the same function: forward of the BN form, and of the PRep through the batched engine
        x = torch.randn(2, *ours.spec.input_shape)
        ref = orig(x)
        assert rel_err(ours(x), ref) <= 1e-5
        assert rel_err(batched_forward(ours.spec, expected[None], x)[0], ref) <= 1e-4


def test_resnet_prep_order_is_conv1_conv2_downsample():
    spec = archs.spec("resnet8")
    lay = PRepLayout.for_spec(spec, WIDTH)
    offset = {e.name: e.offset for e in lay.entries}
    for p in ("layer2.0", "layer3.0"):
        assert offset[f"{p}.conv1.weight"] < offset[f"{p}.conv2.weight"] < offset[f"{p}.downsample.0.weight"]
    # ... while the downsample conv still runs before conv2 (conv2 adds it as its residual)
    run = [layer.name for layer in spec.layers if layer.kind == "conv"]
    assert run.index("layer2.0.downsample.0") < run.index("layer2.0.conv2")
    conv2 = next(layer for layer in spec.layers if layer.name == "layer2.0.conv2")
    down = next(layer for layer in spec.layers if layer.name == "layer2.0.downsample.0")
    assert conv2.residual == down.dst
    assert spec.pack_order == tuple(layer.name for layer in spec.pack_layers)
    assert [p.name for p in spec.params][-2:] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name", ["resnet8", "resnet56"])
def test_bn_free_named_parameters_are_spec_params(name):
    model = archs.build(name, batchnorm=False)
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [(p.name, p.shape) for p in
                                                                        model.spec.params]


def test_initialization_draws_in_execution_order():
    """Modules are created in execution order, so a seed gives the weights it always gave."""
    spec = archs.spec("resnet8")
    torch.manual_seed(7)
    model = archs.build("resnet8")
    torch.manual_seed(7)
    for layer in spec.layers:
        if layer.kind == "conv":
            ref = nn.Conv2d(layer.in_features, layer.out_features, layer.kernel, bias=False)
        elif layer.kind == "linear":
            ref = nn.Linear(layer.in_features, layer.out_features)
        else:
            continue
        assert torch.equal(model.get_submodule(layer.name).weight, ref.weight), layer.name


@pytest.mark.parametrize("dataset", ["cifar10", "tinyimagenet"])
def test_vanillacnn_original_names(dataset):
    orig = OriginalVanillaCNN(dataset).eval()
    ours = archs.build("vanillacnn", dataset)
    assert list(ours.state_dict()) == list(orig.state_dict()) == (
        [f"layers.{i}.{t}" for i in range(6) for t in ("weight", "bias")])
    ours.load_state_dict(orig.state_dict(), strict=True)
    with torch.no_grad():
        expected = original_prep(orig)
        assert torch.equal(nf.pack_preps(ours, WIDTH)[0], expected)  # no BN: copies, bit-exact
        x = torch.randn(2, *ours.spec.input_shape)
        assert rel_err(ours(x), orig(x)) <= 1e-6


@pytest.mark.parametrize("dataset", ["cifar10", "tinyimagenet"])
def test_lenetlike_names_unchanged(dataset):
    convs = 3 if dataset == "tinyimagenet" else 2
    names = [f"conv{i}" for i in range(1, convs + 1)] + ["fc1", "fc2", "fc3"]
    assert list(archs.build("lenetlike", dataset).state_dict()) == [f"{n}.{t}" for n in names
                                                                     for t in ("weight", "bias")]


def test_pack_order_must_be_a_permutation():
    spec = archs.spec("resnet8")
    with pytest.raises(ValueError, match="pack_order"):
        archs.ArchSpec(spec.name, spec.dataset, spec.input_shape, spec.num_outputs, spec.layers, spec.class_id,
                       spec.pack_order[:-1])
    with pytest.raises(ValueError, match="pack_order"):
        archs.ArchSpec(spec.name, spec.dataset, spec.input_shape, spec.num_outputs, spec.layers, spec.class_id,
                       spec.pack_order + ("fc",))
    # an explicit order equal to the default is the same spec
    lenet = archs.spec("lenetlike")
    assert archs.ArchSpec(lenet.name, lenet.dataset, lenet.input_shape, lenet.num_outputs, lenet.layers,
                          lenet.class_id, lenet.pack_order) == lenet


# ---------------------------------------------------------------------------------------------
# zoos written with the old names (schema version 1) stay readable


def _old_name(arch: str, key: str) -> str:
    """The schema-1 name of today's key (written independently of zoo.format.s mapping)."""
    if arch.startswith("resnet"):
        return key.replace(".downsample.", ".shortcut.")
    if arch == "vanillacnn":
        i, rest = int(key.split(".")[1]), key.split(".", 2)[2]
        return f"conv{i + 1}.{rest}" if i < 5 else f"fc.{rest}"
    return key


def _write_schema1_zoo(path):
    """A zoo as netspace_fast wrote it before the renaming: old keys in the files, schema_version 1."""
    import hashlib
    import json

    from safetensors.torch import save_file

    from netspace_fast.zoo.format import init_zoo, write_instance

    init_zoo(path, {"job": "schema1"})
    models = {}
    for k, (arch, split) in enumerate([("resnet8", "train"), ("vanillacnn", "val"), ("lenetlike", "test")]):
        m = randomize_bn(archs.build(arch, "cifar10")).eval()
        models[f"{arch}-0"] = m
        write_instance(path, m, id=f"{arch}-0", arch=arch, dataset="cifar10", protocol="multi", seed=k, epoch=1,
                       acc={"test": 0.5}, split=split)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["schema_version"] = 1
    for entry in manifest["instances"]:
        arch = entry["architecture"]
        state = {_old_name(arch, k): v.contiguous() for k, v in models[entry["id"]].state_dict().items()}
        save_file(state, path / entry["file"])
        entry["sha256"] = hashlib.sha256((path / entry["file"]).read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    return models


def test_schema1_zoo_is_read_with_todays_names(tmp_path):
    from safetensors.torch import load_file

    from netspace_fast.zoo.format import SCHEMA_VERSION, Zoo, init_zoo, write_instance

    z = tmp_path / "old"
    models = _write_schema1_zoo(z)
    # the files really hold the old names
    assert "layer2.0.shortcut.0.weight" in load_file(z / "resnet8-0.safetensors")
    assert "conv5.weight" in load_file(z / "vanillacnn-0.safetensors")
    zoo = Zoo.open(z)
    assert zoo.schema_version == 1 and SCHEMA_VERSION == 2
    assert zoo.verify() == []
    for id, m in models.items():
        sd = zoo.state_dict(id)
        assert set(sd) == set(m.state_dict())
        for k, v in m.state_dict().items():
            assert torch.equal(sd[k], v), (id, k)
        loaded = zoo.model(id)
        assert torch.equal(nf.pack_preps(loaded, WIDTH), nf.pack_preps(m, WIDTH))
    assert torch.equal(zoo.preps("train", "resnet8", WIDTH), nf.pack_preps(models["resnet8-0"], WIDTH))
    # writing would mix the two namings: refused, naming the version
    with pytest.raises(ValueError, match="schema version 1"):
        write_instance(z, archs.build("lenetlike"), id="new", arch="lenetlike", dataset="cifar10", protocol="p",
                       seed=0, epoch=0, acc={}, split="train")
    with pytest.raises(ValueError, match="schema version 1"):
        init_zoo(z, {"job": "schema1"})
    assert len(Zoo.open(z)) == 3
