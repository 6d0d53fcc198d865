"""Batched functional evaluation on the CPU: whole networks through batched_forward against
the per-network reference loop, gradients, layouts, launch counts and bad input (the layer ops
themselves: tests/ops/test_batched_layers.py).

Tolerances: float32 relative error <= 1e-4 against the reference (whole networks: the random-walk
estimate of L sqrt(K) u, stated in tests/conftest.py, with margin; the single layers have
elementwise bounds in tests/ops), PRep gradients also per layer slice (``assert_prep_grad_close``: each weight and bias relative to its own
largest value); float64 gradcheck with torch's defaults.
"""

from __future__ import annotations

import pytest
import torch

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.archs import ArchSpec, LayerSpec
from netspace_fast.engine import batched_forward, batched_forward_reference
from conftest import assert_matches_reference, assert_prep_grad_close

native = pytest.mark.skipif(not nf.backends()["cpu"]["compiled"], reason="native CPU kernels not built")

ARCHS = [(n, d) for d in ("cifar10", "tinyimagenet") for n in ("lenetlike", "vanillacnn", "resnet8", "resnet32")]
ARCHS += [("resnet56", "cifar10"), ("siren", "cifar10")]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def make_preps(spec: ArchSpec, B: int, width: int = 1024, extra_rows: int = 0, dtype=torch.float32, seed: int = 0):
    """PReps of real (default-initialized) BN-free networks, so activations stay in a sane range."""
    torch.manual_seed(seed)
    name = spec.name
    models = [archs.build(name, spec.dataset or "cifar10", batchnorm=False) for _ in range(B)]
    H, _ = nf.prep_shape(spec.num_params, width)
    preps = nf.pack_preps(models, width, H + extra_rows).detach()
    return preps.to(dtype)


def make_x(spec: ArchSpec, B: int, N: int, shared: bool, dtype=torch.float32):
    shape = (N, *spec.input_shape) if shared else (B, N, *spec.input_shape)
    return torch.randn(shape, dtype=dtype)


def check_network(spec: ArchSpec, B: int, N: int, shared: bool) -> None:
    """batched_forward (native) against the per-network loop; the PRep padding gets exactly zero gradient."""
    preps = make_preps(spec, B, extra_rows=4).requires_grad_()  # taller than needed, as multi-arch PReps
    x = make_x(spec, B, N, shared).requires_grad_()
    y = batched_forward(spec, preps, x, backend="cpp")
    assert y.shape == (B, N, spec.num_outputs)
    gp, _ = assert_matches_reference(y, batched_forward_reference(spec, preps, x), (preps, x), prep_layout=spec)
    assert torch.all(gp.reshape(B, -1)[:, spec.num_params:] == 0)


@native
@pytest.mark.parametrize("name,dataset", ARCHS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_outputs_and_gradients_match_reference(name, dataset, shared):
    B, N = (2, 2) if name in ("resnet32", "resnet56") else (3, 4)
    check_network(archs.spec(name, dataset), B, N, shared)


@native
def test_each_network_equals_its_module():
    spec = archs.spec("resnet8", "cifar10")
    models = [archs.build("resnet8", batchnorm=False) for _ in range(3)]
    preps = nf.pack_preps(models, 10_000)
    x = torch.randn(5, 3, 32, 32)
    y = batched_forward(spec, preps, x)
    for b, m in enumerate(models):
        assert rel(y[b], m(x)) <= 1e-4
    xs = torch.randn(3, 2, 3, 32, 32)
    y = batched_forward(spec, preps, xs)
    for b, m in enumerate(models):
        assert rel(y[b], m(xs[b])) <= 1e-4


def tiny_spec() -> ArchSpec:
    """A tiny graph with every layer kind (strided conv, residual, shortcut conv, pool, sin, linear)."""
    layers = (
        LayerSpec("conv", 0, 1, name="c1", in_features=2, out_features=3, kernel=3, stride=1, padding=1,
                  act="leaky_relu"),
        LayerSpec("conv", 1, 2, name="c2", in_features=3, out_features=3, kernel=3, stride=2, padding=1,
                  act="leaky_relu"),
        LayerSpec("conv", 1, 3, name="sc", in_features=3, out_features=3, kernel=1, stride=2, padding=0),
        LayerSpec("conv", 2, 4, name="c3", in_features=3, out_features=3, kernel=3, stride=1, padding=1,
                  act="leaky_relu", residual=3),
        LayerSpec("avgpool", 4, 5, kernel=2, stride=2),
        LayerSpec("flatten", 5, 6),
        LayerSpec("linear", 6, 7, name="f1", in_features=3, out_features=4, act="sin"),
        LayerSpec("linear", 7, 8, name="f2", in_features=4, out_features=2),
    )
    return ArchSpec("tiny", None, (2, 4, 4), 2, layers)


def _conv3x3(src: int, dst: int, name: str, cin: int, cout: int = 3, stride: int = 1, act: str = "leaky_relu",
             **kw) -> LayerSpec:
    """A 3x3 conv, padding 1, of the small test graphs below."""
    return LayerSpec("conv", src, dst, name=name, in_features=cin, out_features=cout, kernel=3, stride=stride,
                     padding=1, act=act, **kw)


def dead_branch_spec() -> ArchSpec:
    """A graph whose layers ``dead`` (conv) and ``deadfc`` (linear, after it) do not reach the output:
    their PRep slices receive no gradient at all (their backward never runs)."""
    layers = (
        _conv3x3(0, 1, "c1", 2),
        _conv3x3(1, 2, "dead", 3),
        _conv3x3(1, 3, "c2", 3, stride=2),
        LayerSpec("flatten", 2, 4),
        LayerSpec("linear", 4, 5, name="deadfc", in_features=3 * 4 * 4, out_features=5),
        LayerSpec("avgpool", 3, 6, kernel=2, stride=2),
        LayerSpec("flatten", 6, 7),
        LayerSpec("linear", 7, 8, name="fc", in_features=3, out_features=2),
    )
    return ArchSpec("deadbranch", None, (2, 4, 4), 2, layers)


def leaky_output_spec() -> ArchSpec:
    """A network whose output layer has an activation (LeakyReLU): its backward reads the output
    itself, so an in-place change of the output after the forward must be an autograd error."""
    layers = (
        _conv3x3(0, 1, "c1", 2),
        LayerSpec("flatten", 1, 2),
        LayerSpec("linear", 2, 3, name="fc", in_features=3 * 4 * 4, out_features=2, act="leaky_relu"),
    )
    return ArchSpec("leakyout", None, (2, 4, 4), 2, layers)


def residual_output_spec(last: str) -> ArchSpec:
    """The output layer (no activation) adds a residual whose value also feeds an earlier layer: the
    output's gradient reaches the residual as it is, and the other branch's gradient is summed into
    it afterwards. ``last``: "linear" (the output layer is linear) or "conv" (a conv, then flatten)."""
    if last == "linear":
        layers = (
            LayerSpec("linear", 0, 1, name="f1", in_features=3, out_features=4, act="leaky_relu"),
            LayerSpec("linear", 1, 2, name="f2", in_features=4, out_features=4, act="leaky_relu"),
            LayerSpec("linear", 2, 3, name="f3", in_features=4, out_features=4, residual=1),
        )
        return ArchSpec("resout_linear", None, (3,), 4, layers)
    layers = (
        _conv3x3(0, 1, "c1", 2),
        _conv3x3(1, 2, "c2", 3),
        _conv3x3(2, 3, "c3", 3, act="none", residual=1),
        LayerSpec("flatten", 3, 4),
    )
    return ArchSpec("resout_conv", None, (2, 4, 4), 3 * 4 * 4, layers)


def check_inplace_changes_are_errors(backend: str, shared: bool, device="cpu") -> None:
    """Tensors the backward reads (the input x, the output when its activation needs it) are saved
    with save_for_backward: changing one in place after the forward is autograd's error, not a
    silently wrong PRep gradient."""
    spec = tiny_spec()
    H, W = nf.prep_shape(spec.num_params, 8)
    preps = (torch.randn(2, H, W, device=device) * 0.3).requires_grad_()
    x = make_x(spec, 2, 2, shared).to(device)  # no gradient: x may be changed in place
    y = batched_forward(spec, preps, x, backend=backend)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), preps)

    spec = leaky_output_spec()
    H, W = nf.prep_shape(spec.num_params, 8)
    preps = (torch.randn(2, H, W, device=device) * 0.3).requires_grad_()
    y = batched_forward(spec, preps, make_x(spec, 2, 2, shared).to(device), backend=backend)
    y.mul_(-1.0)  # flips the sign LeakyReLU's backward reads
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), preps)


def check_callers_gradient_unchanged(backend: str, last: str, shared: bool, device="cpu") -> None:
    """The gradient the caller passes to backward is read, never written, even where the engine would
    hand it on as it is (the residual's gradient of an output layer without activation) and then
    accumulate the other path's gradient into it; the gradients still match the reference."""
    spec = residual_output_spec(last)
    torch.manual_seed(0)
    H, W = nf.prep_shape(spec.num_params, 8)
    preps = (torch.randn(2, H, W, device=device) * 0.3).requires_grad_()
    x = make_x(spec, 2, 3, shared).to(device).requires_grad_()
    y = batched_forward(spec, preps, x, backend=backend)
    y_ref = batched_forward_reference(spec, preps, x)
    g = torch.randn_like(y)
    keep = g.clone()
    grads = torch.autograd.grad(y, (preps, x), g)
    assert torch.equal(g, keep), "backward wrote into the caller's gradient"
    for a, b in zip(grads, torch.autograd.grad(y_ref, (preps, x), g)):
        assert rel(a, b) <= 1e-4


def poison_uninitialized(monkeypatch) -> None:
    """``torch.empty`` and ``Tensor.new_empty`` return NaN-filled floating-point tensors for the rest of
    the test, so a result that includes memory nobody wrote shows up as NaN (fresh pages from the
    allocator are often zero, which would hide it)."""
    real_empty, real_new_empty = torch.empty, torch.Tensor.new_empty

    def nan(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            with torch.no_grad():
                t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *args, **kw: nan(real_empty(*args, **kw)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *args, **kw: nan(real_new_empty(self, *args, **kw)))


def check_prep_grad_zero_without_gradient(backend: str, shared: bool, device="cpu") -> None:
    """The PRep gradient of :func:`dead_branch_spec` is exactly zero in the slices of the layers that
    get no gradient and in the padding (PReps taller than needed), and the reference's elsewhere."""
    spec = dead_branch_spec()
    B, N = 3, 2
    H, W = nf.prep_shape(spec.num_params, 8)
    preps = (torch.randn(B, H + 4, W, device=device) * 0.3).requires_grad_()
    x = make_x(spec, B, N, shared).to(device)
    y = batched_forward(spec, preps, x, backend=backend)
    y_ref = batched_forward_reference(spec, preps, x)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, preps, g)
    (grad_ref,) = torch.autograd.grad(y_ref, preps, g)
    lay = nf.PRepLayout.for_spec(spec, W)
    dead = torch.zeros(preps[0].numel(), dtype=torch.bool)
    for e in lay.entries:
        if e.name.split(".")[0] in ("dead", "deadfc"):
            dead[e.offset:e.offset + e.numel] = True
    dead[spec.num_params:] = True  # the padding
    flat = grad.reshape(B, -1).cpu()
    assert not grad_ref.reshape(B, -1).cpu()[:, dead].any()  # the reference: no gradient, zero
    wrong = int((flat[:, dead] != 0).sum())  # NaN != 0 too
    assert wrong == 0, f"{wrong} of {B * int(dead.sum())} PRep gradient values nonzero or NaN where no gradient flows"
    assert rel(grad, grad_ref) <= 1e-4
    if grad.device.type == "cpu":  # float32 on the CPU (and the Triton interpreter): every layer's slice on its own
        assert_prep_grad_close(grad, grad_ref, lay, 1e-4)


@native
@pytest.mark.parametrize("rule", ["grouped", "split"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_prep_grad_zero_where_no_gradient_flows(monkeypatch, rule, shared):
    """Layers whose output does not reach the network's output (their backward is skipped) and the
    padding get exactly zero PRep gradient, never leftover memory; grouped and per-network convs."""
    from netspace_fast.engine import layout

    monkeypatch.setattr(layout, "use_split", RULES[rule])
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")  # the patched rule decides, whatever the environment says
    poison_uninitialized(monkeypatch)
    check_prep_grad_zero_without_gradient("cpp", shared)


@native
def test_empty_batches_and_nan():
    spec = archs.spec("lenetlike")
    H, W = nf.prep_shape(spec.num_params, 1024)
    assert batched_forward(spec, torch.zeros(0, H, W), torch.randn(3, 3, 32, 32)).shape == (0, 3, 10)
    preps = make_preps(spec, 2)
    assert batched_forward(spec, preps, torch.randn(0, 3, 32, 32)).shape == (2, 0, 10)
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    y = batched_forward(spec, preps, x)
    assert torch.isnan(y[:, 0]).all() and torch.isfinite(y[:, 1]).all()


@native
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_launches_do_not_grow_with_b(shared):
    """The native path makes the same operator calls for B = 2 and B = 5 (no per-network loop; B = 1
    differs only in which tensors already happen to be channels-last contiguous) while every conv is
    grouped, as it is at these sizes. (Large per-network convs run per network instead, by the
    measured rule of netspace_fast/layout.py: see test_per_network_regime_counts below.)"""
    spec = archs.spec("resnet8")
    counts = []
    for B in (2, 5):
        preps = make_preps(spec, B).requires_grad_()
        x = make_x(spec, B, 2, shared)
        with torch.profiler.profile() as prof:
            batched_forward(spec, preps, x, backend="cpp").sum().backward()
        ops = {e.key: e.count for e in prof.key_averages() if e.key.startswith(("aten::", "netspace_fast::"))}
        counts.append(ops)
    # a per-network loop would add dozens of calls per extra network; allow only the odd
    # algorithm-dependent fill (oneDNN picks kernels by shape)
    assert abs(sum(counts[0].values()) - sum(counts[1].values())) <= 2
    convs = sum(1 for layer in spec.layers if layer.kind == "conv")
    assert counts[0]["aten::convolution_backward"] == convs  # one call per layer, all networks at once


def test_bad_inputs():
    spec = archs.spec("resnet8")
    H, W = nf.prep_shape(spec.num_params, 1024)
    preps = torch.zeros(2, H, W)
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(ValueError, match="preps.*needs at least"):
        batched_forward(spec, torch.zeros(2, H - 4, W), x)
    with pytest.raises(ValueError, match="preps.*multiple of 8"):
        batched_forward(spec, torch.zeros(2, H, 1020), x)
    with pytest.raises(ValueError, match=r"x: expected \(N, 3, 32, 32\)"):
        batched_forward(spec, preps, torch.randn(4, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected \(N, 3, 32, 32\)"):
        batched_forward(spec, preps, torch.randn(4, 3, 64, 64))
    with pytest.raises(ValueError, match="leading dim 3, expected B = 2"):
        batched_forward(spec, preps, torch.randn(3, 4, 3, 32, 32))
    with pytest.raises(TypeError, match="x: expected the dtype"):
        batched_forward(spec, preps, x.double())
    with pytest.raises(TypeError, match="preps: expected float32"):
        batched_forward(spec, preps.half(), x.half())
    with pytest.raises(ValueError, match="x: expected the device"):
        batched_forward(spec, preps, x.to("meta"))
    with pytest.raises(TypeError, match="spec"):
        batched_forward("resnet8", preps, x)


def test_tune_malloc_is_safe_to_call():
    """tune_malloc changes the allocator policy only: results stay the same after it."""
    import subprocess
    import sys

    code = ("import torch, netspace_fast as nf; ok = nf.tune_malloc(); "
            "a = torch.randn(64, 2**20); b = a.clone(); del a; c = torch.ones(64, 2**20); "
            "print(isinstance(ok, bool), bool(torch.isfinite(b).all()), float(c.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", str(float(64 * 2**20))]


_MALLINFO = """
import ctypes, sys
import torch, netspace_fast as nf

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
tuned = nf.tune_malloc() if sys.argv[1] == "tuned" else None
size = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB)
before = libc.mallinfo2()
a = torch.ones(size // 4)
mmapped = libc.mallinfo2().hblkhd - before.hblkhd
del a
p = libc.malloc(size)  # nothing allocated after it: at the top of the heap unless mmapped
libc.free(p)
print(tuned, mmapped, libc.mallinfo2().fordblks)
"""


def test_tune_malloc_keeps_large_blocks_in_the_heap():
    """The effect of tune_malloc, seen through glibc's mallinfo2 in fresh processes: by default a 64 MiB
    tensor is its own mmap, and a 64 MiB block freed at the top of the heap goes back to the kernel;
    after tune_malloc() the tensor comes from the heap (M_MMAP_MAX 0) and the freed block stays in
    the heap for reuse (M_TRIM_THRESHOLD)."""
    import ctypes
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}

    def run(mode: str) -> tuple[str, int, int]:
        out = subprocess.run([sys.executable, "-c", _MALLINFO, mode], capture_output=True, text=True, timeout=120,
                             env=env)
        assert out.returncode == 0, out.stderr
        tuned, mmapped, free_in_heap = out.stdout.split()
        return tuned, int(mmapped), int(free_in_heap)

    size = 64 * 2**20
    tuned, mmapped, free_in_heap = run("default")
    assert mmapped >= size and free_in_heap < size  # the premise: glibc's defaults mmap and trim
    tuned, mmapped, free_in_heap = run("tuned")
    assert tuned == "True"
    assert mmapped < size, f"a 64 MiB tensor was mmapped ({mmapped} bytes mapped) after tune_malloc()"
    assert free_in_heap >= size, f"a freed 64 MiB block was trimmed from the heap ({free_in_heap} bytes kept)"


# ---------------------------------------------------------------------------------------------
# per-layer layouts of the CPU path (netspace_fast/layout.py): every conv grouped, every conv per
# network, and mixes in both directions must all give the reference's outputs and gradients

RULES = {
    "split": lambda n, cout, hw, device="cpu": True,
    "grouped": lambda n, cout, hw, device="cpu": False,
    "split first": lambda n, cout, hw, device="cpu": hw >= 16,   # large maps per network, small ones grouped
    "grouped first": lambda n, cout, hw, device="cpu": hw < 16,  # the other way round
}


@native
@pytest.mark.parametrize("rule", ["default"] + list(RULES))
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_gradcheck_float64_tiny(monkeypatch, rule, shared):
    """gradcheck of the whole CPU path on a tiny graph with every layer kind, under the default
    layout rule and with every conv grouped, per network, or mixed either way."""
    from netspace_fast.engine import layout

    if rule != "default":
        monkeypatch.setattr(layout, "use_split", RULES[rule])
        monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")  # the patched rule decides, whatever the environment says
    spec = tiny_spec()
    H, W = nf.prep_shape(spec.num_params, 8)
    torch.manual_seed(1)
    preps = (torch.randn(3, H, W, dtype=torch.float64) * 0.3).requires_grad_()
    x = make_x(spec, 3, 2, shared, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, xx: batched_forward(spec, p, xx, backend="cpp"), (preps, x))
    # float64; sin(30 z) multiplies rounding differences by 30
    assert rel(batched_forward(spec, preps, x, backend="cpp"), batched_forward_reference(spec, preps, x)) <= 1e-8


@native
@pytest.mark.parametrize("name", ["lenetlike", "vanillacnn", "resnet8"])
@pytest.mark.parametrize("rule", ["split", "split first", "grouped first"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_layouts_match_reference(monkeypatch, name, rule, shared):
    from netspace_fast.engine import layout

    # the tiny spec's 16-pixel threshold, scaled to these networks (100 pixels: ResNet8's 32x32 and
    # 16x16 layers and LeNetLike's conv1 on one side, ResNet8's 8x8 and LeNetLike's conv2 on the other)
    monkeypatch.setattr(layout, "use_split", lambda n, cout, hw, device="cpu": RULES[rule](n, cout, hw * 16 // 100))
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")  # the patched rule decides, whatever the environment says
    check_network(archs.spec(name, "cifar10"), 3, 4, shared)


@native
@pytest.mark.parametrize("name", ["lenetlike", "resnet8"])
@pytest.mark.parametrize("rule", ["grouped", "split first"])
def test_second_backward_recomputes(monkeypatch, name, rule):
    """The CPU path frees activations during its backward; a second backward (retain_graph=True)
    recomputes them and gives the same gradients again."""
    from netspace_fast.engine import layout

    monkeypatch.setattr(layout, "use_split", lambda n, cout, hw, device="cpu": RULES[rule](n, cout, hw * 16 // 100))
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")  # the patched rule decides, whatever the environment says
    spec = archs.spec(name, "cifar10")
    preps = make_preps(spec, 2).requires_grad_()
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    y = batched_forward(spec, preps, x, backend="cpp")
    g = torch.randn_like(y)
    first = torch.autograd.grad(y, (preps, x), g, retain_graph=True)
    second = torch.autograd.grad(y, (preps, x), g)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@native
def test_per_network_regime_counts(monkeypatch):
    """Where layout.py sends a conv per network (large convs on CPU: the issue's own CPU example,
    per-network GEMMs), exactly one oneDNN convolution per network and layer runs each way; the
    grouped layers keep one call per layer. Documents what grows with B, and by how much."""
    from netspace_fast.engine import layout

    monkeypatch.setattr(layout, "use_split", lambda n, cout, hw, device="cpu": hw >= 16 * 16)  # ResNet8 stages 1-2
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")  # the patched rule decides, whatever the environment says
    spec = archs.spec("resnet8")
    split_convs = sum(1 for layer in spec.layers if layer.kind == "conv") - 3  # stage 3: 2 convs + downsample
    counts = {}
    for B in (2, 5):
        preps = make_preps(spec, B).requires_grad_()
        with torch.profiler.profile() as prof:
            batched_forward(spec, preps, make_x(spec, B, 2, True), backend="cpp").sum().backward()
        counts[B] = {e.key: e.count for e in prof.key_averages()}
    for op in ("aten::convolution", "aten::convolution_backward"):
        assert counts[5][op] - counts[2][op] == 3 * split_convs, op


@native
def test_callers_gradient_is_not_modified():
    """The conv backward works in place on gradients it owns, never on the one the caller passed."""
    spec = archs.spec("resnet8")
    preps = make_preps(spec, 2).requires_grad_()
    y = batched_forward(spec, preps, torch.randn(3, 3, 32, 32), backend="cpp")
    g = torch.randn_like(y)
    keep = g.clone()
    y.backward(g)
    assert torch.equal(g, keep)


@native
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_inplace_change_after_forward_is_an_error(shared):
    check_inplace_changes_are_errors("cpp", shared)


@native
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
@pytest.mark.parametrize("last", ["linear", "conv"])
def test_callers_gradient_is_not_modified_residual_output(last, shared):
    check_callers_gradient_unchanged("cpp", last, shared)
