"""The measured choice of convolution layouts (netspace_fast/engine/layout.py): the tuner times both
layouts once per layer shape, interleaved, judges the timing (measured, close, noisy, loaded),
caches the verdict per device model and torch version in a JSON file, and keeps the choice fixed
for the process; ``NETSPACE_CONV_LAYOUT`` overrides it.

Every test but the real-timer ones injects a fake timer (deterministic, counts its calls; a quiet
machine unless told otherwise). The engine's results are the same (float32 reference tolerance,
tests/conftest.py) whichever layout the tuner picks.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from netspace_fast import archs, storage
from netspace_fast.engine import layout
from netspace_fast.engine.layout import ConvShape, LayoutTuner, Timing
from conftest import requires_cuda
from test_batched_forward import check_network, make_preps, native

# B=2 networks, N=2 images, 3 -> 4 channels, 8x8: the tiny conv of the real-timer tests
TINY = dict(cin=3, cout=4, k=3, stride=1, padding=1, hw=(8, 8), B=2, n=2)


def shape(**kw) -> ConvShape:
    return ConvShape.make(**{**TINY, "threads": 1, **kw})


BIG = shape(cin=16, cout=16, hw=(32, 32), n=128)  # the static rule: split (TINY: grouped)


def quiet(grouped_ms: float, split_ms: float, reps: int = layout.MIN_REPS, **load) -> Timing:
    """A clean timing on an idle 2-core machine: every round the same times."""
    return Timing({"grouped": [grouped_ms] * reps, "split": [split_ms] * reps},
                  **{"load": 0.0, "loadavg": 0.1, "cpus": 2, **load})


class FakeTimer:
    """A quiet timing where ``pick(shape)`` ("grouped" or "split") takes 1 ms and the other 2 ms;
    counts calls."""

    def __init__(self, pick="split"):
        self.pick = pick if callable(pick) else (lambda s: pick)
        self.calls: list[str] = []

    def __call__(self, s: ConvShape) -> Timing:
        self.calls.append(s.key())
        return quiet(2.0, 1.0) if self.pick(s) == "split" else quiet(1.0, 2.0)


def make_tuner(tmp_path, timer, name="Test CPU 9000", version="2.99.0") -> LayoutTuner:
    return LayoutTuner(name, torch_version=version, directory=tmp_path / "cache", timer=timer)


@pytest.fixture
def fresh_tuners():
    """No tuner of an earlier test (the process's default tuners), none left for later tests."""
    layout.reset_tuners()
    yield
    layout.reset_tuners()


# ---------------------------------------------------------------------------------------------
# the choice and its cache file


@pytest.mark.parametrize("pick", ["grouped", "split"])
def test_the_faster_layout_is_chosen(tmp_path, pick):
    timer = FakeTimer(pick)
    t = make_tuner(tmp_path, timer)
    assert t.layout(shape()) == pick and t.split(shape()) == (pick == "split")
    assert timer.calls == [shape().key()]  # once: memoized


def test_a_tie_takes_the_static_rule(tmp_path):
    t = make_tuner(tmp_path, lambda s: quiet(1.5, 1.5))
    assert t.layout(shape()) == "grouped"  # the rule: grouped for a small conv ...
    assert t.layout(BIG) == "split"  # ... split for a large one
    assert {e["decision"] for e in t.entries().values()} == {"close"}


def test_the_key_names_the_shape():
    assert shape().key() == "cin=3 cout=4 k=3 stride=1 padding=1 in=8x8 B=2 N=2 dtype=float32 device=cpu threads=1"
    assert shape(shared=True, dtype=torch.float64).key().endswith("dtype=float64 device=cpu threads=1 shared")
    assert ConvShape.make(**TINY, device="cuda").key().endswith("device=cuda")  # no threads off the CPU
    assert ConvShape.make(**TINY).threads == torch.get_num_threads()
    keys = {shape(**{f: v}).key() for f, v in [("cin", 5), ("cout", 5), ("k", 1), ("stride", 2), ("padding", 0),
                                                ("hw", (8, 9)), ("B", 3), ("n", 3), ("threads", 2)]}
    assert len(keys) == 9 and shape().key() not in keys  # every field is part of the key


def test_cache_file_written_and_read_back_without_measuring(tmp_path, monkeypatch):
    writes = []
    real_write = storage.atomic_write_bytes
    monkeypatch.setattr(storage, "atomic_write_bytes", lambda p, d: (writes.append(p), real_write(p, d)))
    timer = FakeTimer(lambda s: "split" if s.cout >= 8 else "grouped")
    t = make_tuner(tmp_path, timer)
    shapes = [shape(), shape(cout=8), shape(n=4, shared=True)]
    choices = [t.layout(s) for s in shapes]
    assert choices == ["grouped", "split", "grouped"] and len(timer.calls) == 3
    assert t.path == tmp_path / "cache" / "conv_layout-test-cpu-9000-torch2.99.0.json"
    assert writes and set(writes) == {t.path}  # through the atomic writer
    assert [p.name for p in t.path.parent.iterdir()] == [t.path.name]  # no temporary file left
    data = json.loads(t.path.read_text())
    assert data["format"] == layout.CACHE_FORMAT and data["device"] == "Test CPU 9000" and data["torch"] == "2.99.0"
    assert set(data["entries"]) == {s.key() for s in shapes}
    for s, c in zip(shapes, choices):
        e = data["entries"][s.key()]
        assert e["layout"] == c
        assert (e["grouped_ms"], e["split_ms"]) == ((2.0, 1.0) if c == "split" else (1.0, 2.0))

    # a second process: a new tuner, empty memo, a timer that would choose the other way
    other = FakeTimer(lambda s: "grouped" if s.cout >= 8 else "split")
    t2 = make_tuner(tmp_path, other)
    assert [t2.layout(s) for s in shapes] == choices
    assert other.calls == []
    # a new shape is measured and added; the file keeps the first measurements (the first on disk wins)
    assert t2.layout(shape(cin=7)) == "split" and len(other.calls) == 1
    assert set(json.loads(t2.path.read_text())["entries"]) == {s.key() for s in shapes} | {shape(cin=7).key()}


def test_choices_stay_fixed_for_the_process_when_the_file_goes(tmp_path):
    timer = FakeTimer("split")
    t = make_tuner(tmp_path, timer)
    assert t.layout(shape()) == "split"
    t.path.unlink()
    timer.pick = lambda s: "grouped"
    assert t.layout(shape()) == "split" and len(timer.calls) == 1  # memoized: never re-decided
    assert t.layout(shape(n=3)) == "grouped"  # a new shape: measured
    assert list(json.loads(t.path.read_text())["entries"]) == [shape(n=3).key()]


def test_other_device_model_or_torch_version_other_file(tmp_path):
    paths = set()
    for name, version in [("Test CPU 9000", "2.99.0"), ("Other CPU (R) 7", "2.99.0"), ("Test CPU 9000", "3.0.0+cu1")]:
        timer = FakeTimer("split")
        t = make_tuner(tmp_path, timer, name, version)
        assert t.layout(shape()) == "split" and len(timer.calls) == 1  # nothing shared between the files
        paths.add(t.path)
    assert sorted(p.name for p in paths) == ["conv_layout-other-cpu-r-7-torch2.99.0.json",
                                             "conv_layout-test-cpu-9000-torch2.99.0.json",
                                             "conv_layout-test-cpu-9000-torch3.0.0-cu1.json"]
    assert all(p.exists() for p in paths)
    assert layout.cache_file_name("Intel(R) Xeon(R) Platinum 8480+", "2.14.1+cu130") == \
        "conv_layout-intel-r-xeon-r-platinum-8480-torch2.14.1-cu130.json"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[]", b'{"format": 1}',
                                     b'{"format": 1, "entries": {"k": {"layout": "sideways"}}}',
                                     b'{"format": 1, "entries": {"k": {"layout": "split", "grouped_ms": -1, '
                                     b'"split_ms": 1}}}'])
def test_corrupt_cache_warns_once_and_is_measured_again(tmp_path, content):
    timer = FakeTimer("split")
    t = make_tuner(tmp_path, timer)
    t.path.parent.mkdir(parents=True)
    t.path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="is corrupt") as record:
        assert t.layout(shape()) == "split"
    assert len(record) == 1 and len(timer.calls) == 1
    assert list(json.loads(t.path.read_text())["entries"]) == [shape().key()]  # rewritten, valid
    t.path.write_bytes(content)
    assert t.layout(shape(n=5)) == "split"  # corrupt again: measured again, no second warning


def test_unwritable_cache_folder_warns_once_and_keeps_choices_in_memory(tmp_path, recwarn):
    (tmp_path / "file").write_text("a file where the cache folder's parent should be")
    timer = FakeTimer("split")
    t = LayoutTuner("Test CPU", directory=tmp_path / "file" / "cache", timer=timer)
    assert t.layout(shape()) == "split" and t.layout(shape(n=3)) == "split"
    warned = [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(warned) == 1 and "cannot write the conv layout cache" in str(warned[0].message)
    assert t.layout(shape()) == "split" and len(timer.calls) == 2  # in memory for the process


def test_a_failing_timer_falls_back_to_the_static_rule(tmp_path):
    def broken(s):
        raise RuntimeError("out of memory")

    t = make_tuner(tmp_path, broken)
    with pytest.warns(RuntimeWarning, match="timing the conv layouts of .* failed .*out of memory"):
        assert t.layout(BIG) == "split"
    assert t.layout(shape()) == "grouped"
    assert not t.path.exists()  # nothing measured: nothing cached
    bad = make_tuner(tmp_path, lambda s: quiet(float("nan"), 1.0))
    with pytest.warns(RuntimeWarning, match="grouped_ms: expected a positive finite number"):
        assert bad.layout(shape()) == "grouped"
    legacy = make_tuner(tmp_path, lambda s: (2.0, 1.0))  # a timer of the older interface
    with pytest.warns(RuntimeWarning, match=r"the timer returned \(2.0, 1.0\), expected a Timing"):
        assert legacy.layout(BIG) == "split"


def test_bad_arguments():
    with pytest.raises(ValueError, match="cout: expected a positive int, got 0"):
        ConvShape.make(**{**TINY, "cout": 0})
    with pytest.raises(TypeError, match="n: expected an int, got float"):
        ConvShape.make(**{**TINY, "n": 2.0})
    with pytest.raises(ValueError, match="hw: a 3x3 kernel with padding 0 needs an input of at least 3x3, got 2x2"):
        ConvShape.make(**{**TINY, "padding": 0, "hw": (2, 2)})
    with pytest.raises(ValueError, match="dtype: expected a torch dtype or its name, got 'float33'"):
        ConvShape.make(**TINY, dtype="float33")
    with pytest.raises(ValueError, match="device_name: expected a non-empty str, got ''"):
        LayoutTuner("")
    with pytest.raises(TypeError, match="timer: expected a callable"):
        LayoutTuner("x", timer=3)
    with pytest.raises(TypeError, match="shape: expected a ConvShape, got tuple"):
        LayoutTuner("x", timer=FakeTimer()).layout((3, 4))


# ---------------------------------------------------------------------------------------------
# NETSPACE_CONV_LAYOUT

# (kind, src, dst, cout, k, stride, padding): two convs and a pool, 8x8 input of 3 channels
LAYERS = [("conv", 0, 1, 4, 3, 1, 1), ("conv", 1, 2, 8, 3, 2, 1), ("avgpool", 2, 3, None, 2, 2, 0),
          ("flatten", 3, 4, None, 0, 1, 0)]


def short(blocks):
    """Blocks as (start, stop, split), with "nchw" appended where a grouped conv runs in NCHW."""
    assert all(isinstance(b, layout.Block) for b in blocks)
    return [(b.start, b.stop, b.split) + (("nchw",) if b.nchw else ()) for b in blocks]


def plan(device="cpu", B=2, shared=False):
    return short(layout.plan_blocks(LAYERS, 2, (8, 8), device, B, 3, torch.float32, shared))


@pytest.fixture
def fake_tuner(tmp_path, monkeypatch):
    """The process's tuner replaced by one with a fake timer: conv 1 split, conv 2 grouped."""
    t = make_tuner(tmp_path, FakeTimer(lambda s: "split" if s.cout == 4 else "grouped"))
    seen = []
    monkeypatch.setattr(layout, "tuner", lambda device: (seen.append(str(device)), t)[1])
    t.seen = seen
    return t


def test_override_grouped_and_split(monkeypatch, fake_tuner):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "grouped")
    assert plan() == plan("cuda") == [(0, 1, False), (1, 2, False), (2, 3, False), (3, 4, False)]
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "split")
    assert plan() == plan("cuda") == [(0, 3, True), (3, 4, False)]  # the pool joins the split block
    assert fake_tuner.timer.calls == []


def test_override_rule_asks_use_split_and_never_times(monkeypatch, fake_tuner):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")
    asked = []
    def rule(n, cout, hw, device="cpu"):
        asked.append((n, cout, hw))
        return cout == 8

    monkeypatch.setattr(layout, "use_split", rule)
    assert plan() == [(0, 1, False), (1, 3, True), (3, 4, False)]
    assert asked == [(2, 4, 64), (2, 8, 16)]  # (n, cout, output pixels), the old signature
    monkeypatch.undo()
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")
    monkeypatch.setattr(layout, "SPLIT_MIN_PIXELS", 2 * 64)
    monkeypatch.setattr(layout, "SPLIT_MIN_CHANNELS", 4)
    assert plan() == [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, False)]
    assert plan("cuda") == [(i, i + 1, False) for i in range(4)]  # the rule keeps GPUs grouped
    assert fake_tuner.timer.calls == []


def test_auto_times_on_every_device(monkeypatch, fake_tuner):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    assert plan() == [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, False)]
    threads = torch.get_num_threads()
    assert fake_tuner.timer.calls == [
        f"cin=3 cout=4 k=3 stride=1 padding=1 in=8x8 B=2 N=2 dtype=float32 device=cpu threads={threads}",
        f"cin=4 cout=8 k=3 stride=2 padding=1 in=8x8 B=2 N=2 dtype=float32 device=cpu threads={threads}"]
    assert plan() == [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, False)]
    assert len(fake_tuner.timer.calls) == 2  # memoized
    assert plan(shared=True)[0] == (0, 1, True) and fake_tuner.timer.calls[-1].endswith(" shared")
    n = len(fake_tuner.timer.calls)
    # a GPU's choice is measured on the GPU too (its own keys: device=cuda), once per shape
    assert plan("cuda") == [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, False)]
    assert [k.split(" device=")[1] for k in fake_tuner.timer.calls[n:]] == ["cuda", "cuda"]
    monkeypatch.delenv("NETSPACE_CONV_LAYOUT")  # auto is the default
    assert plan() == [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, False)]


def test_tune_times_on_any_device(monkeypatch, fake_tuner):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "tune")
    assert plan("cuda") == [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, False)]
    assert [k.split(" device=")[1] for k in fake_tuner.timer.calls] == ["cuda", "cuda"]
    assert fake_tuner.seen == ["cuda", "cuda"]
    assert plan() == [(0, 1, True), (1, 2, False), (2, 3, False), (3, 4, False)]  # and on CPUs


def test_tuning_needs_the_networks_and_channels(monkeypatch, fake_tuner):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    with pytest.raises(ValueError, match="B and the input's channels are needed to time layouts"):
        layout.plan_blocks(LAYERS, 2, (8, 8), "cpu")
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "rule")
    assert layout.plan_blocks(LAYERS, 2, (8, 8), "cpu")  # the old call: fine without timing


def test_bad_layout_value(monkeypatch):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "fastest")
    with pytest.raises(ValueError) as e:
        plan()
    msg = str(e.value)
    assert "NETSPACE_CONV_LAYOUT" in msg and "'fastest'" in msg
    assert all(repr(v) in msg for v in ("auto", "grouped", "split", "rule", "tune"))


def test_default_tuner_uses_the_cache_folder_setting(tmp_path, monkeypatch, fresh_tuners):
    monkeypatch.setenv("NETSPACE_CACHE_DIR", str(tmp_path / "nscache"))
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    timer = FakeTimer("split")
    monkeypatch.setattr(layout, "_time_layouts", timer)  # looked up at each use
    assert plan()[0] == (0, 3, True)
    t = layout.tuner("cpu")
    assert t is layout.tuner(torch.device("cpu")) and t.device_name == layout.device_name("cpu")
    assert t.path == tmp_path / "nscache" / layout.cache_file_name(layout.device_name("cpu"), torch.__version__)
    assert len(json.loads(t.path.read_text())["entries"]) == 2 and len(timer.calls) == 2
    monkeypatch.setenv("NETSPACE_CACHE_DIR", str(tmp_path / "elsewhere"))  # fixed once the tuner exists
    assert plan(B=3)[0] == (0, 3, True) and len(json.loads(t.path.read_text())["entries"]) == 4


def test_cache_folder_setting(tmp_path, monkeypatch):
    from netspace_fast import settings

    monkeypatch.setenv("NETSPACE_CACHE_DIR", str(tmp_path / "a"))
    assert settings.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NETSPACE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert settings.cache_dir() == tmp_path / "xdg" / "netspace_fast"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings.cache_dir() == tmp_path / "home" / ".cache" / "netspace_fast"


def test_describe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETSPACE_CACHE_DIR", str(tmp_path))
    text = layout.describe_cache()
    assert str(tmp_path) in text and "no choices measured yet" in text
    t = LayoutTuner(layout.device_name("cpu"), directory=tmp_path, timer=FakeTimer("split"))
    t.layout(shape())
    LayoutTuner("Test CPU 9000", torch_version="2.99.0", directory=tmp_path, timer=FakeTimer()).layout(shape())
    lines = layout.describe_cache().splitlines()
    assert lines[0].startswith(str(t.path))
    # layout, verdict, grouped ms, split ms, switch ms (none timed), rounds, the larger spread, load / cores, key
    assert lines[2].split() == ["split", "measured", "2", "1", "-", "5", "0.0%", "0.00/2", *shape().key().split()]
    assert lines[3] == f"other conv layout caches in {tmp_path}: conv_layout-test-cpu-9000-torch2.99.0.json"


# ---------------------------------------------------------------------------------------------
# the real timer


def _check_times(timing):
    assert isinstance(timing, Timing) and set(timing.samples) == {"grouped", "split", "switch"}, timing
    reps = len(timing.samples["grouped"])
    assert layout.MIN_REPS <= reps <= layout.MAX_REPS
    assert len(timing.samples["split"]) == len(timing.samples["switch"]) == reps
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in sum(timing.samples.values(), [])), timing
    assert timing.cpus >= 1 and (timing.load is None or timing.load >= 0)


@pytest.mark.parametrize("shared", [False, True], ids=["per_network", "shared"])
def test_real_timer_on_a_tiny_conv(shared):
    """Two positive finite times; the global RNG, grad mode and the caller's graph untouched, also
    inside no_grad and inference_mode."""
    s = ConvShape.make(**TINY, shared=shared)
    x = torch.randn(3, requires_grad=True)
    y = (x * 2).sum()
    rng = torch.get_rng_state()
    _check_times(layout._time_layouts(s))
    with torch.no_grad():
        _check_times(layout._time_layouts(s))
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        _check_times(layout._time_layouts(s))
    assert torch.equal(rng, torch.get_rng_state())
    y.backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_real_timer_through_a_tuner(tmp_path):
    t = LayoutTuner("Test CPU", directory=tmp_path)
    assert t.layout(ConvShape.make(**TINY)) in ("grouped", "split")
    e = json.loads(t.path.read_text())["entries"][ConvShape.make(**TINY).key()]
    assert e["decision"] in layout.DECISIONS and layout.MIN_REPS <= e["reps"] <= layout.MAX_REPS
    assert all(isinstance(e[f], float) and e[f] > 0 for f in ("grouped_ms", "split_ms"))


@pytest.mark.gpu
@requires_cuda
def test_real_timer_and_tune_on_cuda(tmp_path, monkeypatch, fresh_tuners):
    _check_times(layout._time_layouts(ConvShape.make(**TINY, device="cuda")))
    monkeypatch.setenv("NETSPACE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "tune")
    plan("cuda")
    t = layout.tuner("cuda")
    assert t.device_name == torch.cuda.get_device_name() and t.path.exists()
    assert all(k.endswith("device=cuda") for k in json.loads(t.path.read_text())["entries"])


# ---------------------------------------------------------------------------------------------
# the engine gives the same results whichever layout the tuner picks

PICKS = {
    "grouped": lambda s: "grouped",
    "split": lambda s: "split",
    "split large maps": lambda s: "split" if s.h >= 16 else "grouped",  # layouts change inside the network
    "grouped large maps": lambda s: "grouped" if s.h >= 16 else "split",
}


@native
@pytest.mark.parametrize("name,pick", [("resnet8", p) for p in PICKS] + [("lenetlike", "split large maps")])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_engine_results_whatever_the_tuner_picks(tmp_path, monkeypatch, name, pick, shared):
    timer = FakeTimer(PICKS[pick])
    t = make_tuner(tmp_path, timer)
    monkeypatch.setattr(layout, "tuner", lambda device: t)
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    check_network(archs.spec(name, "cifar10"), 3, 4, shared)  # outputs and gradients against the reference
    assert timer.calls and set(t.choices.values()) == ({"grouped", "split"} if "maps" in pick else {pick})


@native
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_the_choice_is_a_constant_under_torch_compile(tmp_path, monkeypatch):
    """Tuned while tracing (no graph break: fullgraph), then a constant of the graph."""
    from netspace_fast.engine import batched_forward

    timer = FakeTimer("grouped")
    t = make_tuner(tmp_path, timer)
    monkeypatch.setattr(layout, "tuner", lambda device: t)
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    spec = archs.spec("lenetlike", "cifar10")
    preps, x = make_preps(spec, 2).requires_grad_(), torch.randn(2, 3, 32, 32)

    def f(p, xx):
        return batched_forward(spec, p, xx)

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(preps, x)
    assert len(timer.calls) == 2  # LeNetLike's two convs, measured while tracing
    assert torch.equal(got, f(preps, x)) and len(timer.calls) == 2


def test_cpu_model_tells_generations_apart(monkeypatch, tmp_path):
    """Two CPUs reported under one model name (as virtual machines do) but with other feature flags
    get different cache files; without a flags line the model name alone names the file."""
    import builtins

    def cpuinfo(flags):
        text = f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n{flags}\n"
        real_open = builtins.open
        return lambda path, *a, **k: (__import__("io").StringIO(text) if path == "/proc/cpuinfo"
                                      else real_open(path, *a, **k))

    names = []
    for flags in ("flags\t: fpu avx2 avx512f", "flags\t: fpu avx2 avx512f amx_tile", "flags\t: avx512f fpu avx2", ""):
        monkeypatch.setattr(builtins, "open", cpuinfo(flags))
        names.append(layout._cpu_model())
    assert names[0] != names[1] and names[0] == names[2]  # flags' order does not matter
    assert names[3] == "Intel(R) Xeon(R) Processor"
    assert all(n.startswith("Intel(R) Xeon(R) Processor") for n in names)
    assert layout.cache_file_name(names[0], "2.14.1") != layout.cache_file_name(names[1], "2.14.1")
