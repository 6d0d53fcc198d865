"""The third layout of a conv, grouped in NCHW (what ``torch.func.vmap`` gets from cuDNN), and how the
tuner times the layouts on CUDA (replayed from CUDA graphs): what a CPU can show.

* the engine runs a conv in NCHW correctly (forward, PRep and input gradients against the reference,
  float64 gradcheck), alone and mixed with grouped and split layers;
* the tuner times NCHW only where it is a candidate (CUDA), judges three layouts by the same rules
  (leaving the static rule must pay for the conversions), and caches and reads an NCHW choice;
* on CUDA every candidate is captured after an eager warm-up and timed by replay; a failed capture
  times every candidate eagerly (a fake CUDA graph API shows the order of the calls).
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

import netspace_fast as nf
from netspace_fast import archs
from netspace_fast.engine import batched_forward, batched_forward_reference, layout
from netspace_fast.engine.layout import FORCED, ConvShape, Timing, judge
from test_batched_forward import check_network, make_x, native, rel, tiny_spec
from test_layout_tuner import FakeTimer, LAYERS, make_tuner, short


def mixed(choice_of_hw):
    """A conv_layout that picks by the conv's input size (the rest of its arguments ignored)."""
    def pick(mode, n, cin, cout, k, stride, padding, hw, B, dtype, device, shared=False):
        return choice_of_hw(hw[0] * hw[1])
    return pick


# ---------------------------------------------------------------------------------------------
# the engine in NCHW

@native
@pytest.mark.parametrize("how", ["nchw", "nchw small, split large", "split small, nchw large"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_gradcheck_float64_tiny(monkeypatch, how, shared):
    """gradcheck of the CPU path on the tiny graph (every layer kind) with its convs in NCHW, alone or
    next to split blocks (the conversions between the three layouts, both ways)."""
    if how == "nchw":
        monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "nchw")
    else:
        small, large = ("nchw", "split") if how.startswith("nchw") else ("split", "nchw")
        monkeypatch.setattr(layout, "conv_layout", mixed(lambda px: small if px < 16 else large))
    spec = tiny_spec()
    H, W = nf.prep_shape(spec.num_params, 8)
    torch.manual_seed(1)
    preps = (torch.randn(3, H, W, dtype=torch.float64) * 0.3).requires_grad_()
    x = make_x(spec, 3, 2, shared, torch.float64).requires_grad_()
    from netspace_fast.engine import executor

    planned = []
    real = executor.plan_blocks
    monkeypatch.setattr(executor, "plan_blocks", lambda *a, **k: planned.append(real(*a, **k)) or planned[-1])
    batched_forward(spec, preps, x, backend="cpp")
    kinds = {("nchw" if b.nchw else "split" if b.split else "grouped") for b in planned[0]}
    assert "nchw" in kinds and (how == "nchw") != ("split" in kinds), planned[0]
    assert torch.autograd.gradcheck(lambda p, xx: batched_forward(spec, p, xx, backend="cpp"), (preps, x))
    assert rel(batched_forward(spec, preps, x, backend="cpp"), batched_forward_reference(spec, preps, x)) <= 1e-8


@native
@pytest.mark.parametrize("name", ["lenetlike", "resnet8"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_network"])
def test_networks_in_nchw_match_the_reference(monkeypatch, name, shared):
    """Whole networks with every conv grouped in NCHW: outputs and gradients as the reference (float32,
    the tolerances of the other layouts' tests)."""
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "nchw")
    check_network(archs.spec(name, "cifar10"), 3, 4, shared)


def test_forced_nchw_plans_grouped_nchw_blocks(monkeypatch):
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "nchw")
    blocks = layout.plan_blocks(LAYERS, 2, (8, 8), "cpu", 2, 3)
    assert short(blocks) == [(0, 1, False, "nchw"), (1, 2, False, "nchw"), (2, 3, False), (3, 4, False)]
    assert layout.use_split(128, 64, 1024) is False  # the static rule's callers: NCHW is not split


# ---------------------------------------------------------------------------------------------
# the tuner's candidates and verdicts

def test_candidates_by_device():
    assert layout.candidates("cpu") == ("grouped", "split")
    assert layout.candidates("cuda") == layout.candidates("cuda:1") == FORCED == ("grouped", "split", "nchw")


def three(g, s, c, sw=None, reps=7):
    """A quiet timing of the three layouts (and the switch, where given), replayed."""
    samples = {"grouped": [g] * reps, "split": [s] * reps, "nchw": [c] * reps}
    if sw is not None:
        samples["switch"] = [sw] * reps
    return Timing(samples, load=0.0, loadavg=0.1, cpus=2, replayed=True)


class Timer3:
    """A tuner's timer: the same three-layout timing for every shape; counts calls."""

    def __init__(self, *times):
        self.times, self.calls = times, []

    def __call__(self, s):
        self.calls.append(s.key())
        return three(*self.times)


GPU_SMALL = ConvShape.make(16, 16, 3, 1, 1, (8, 8), 8, 32, device="cuda")  # the rule: grouped on a GPU


def test_judge_three_layouts():
    e = judge(GPU_SMALL, three(10.0, 11.0, 6.0))
    assert (e["layout"], e["decision"]) == ("nchw", "measured")
    assert (e["grouped_ms"], e["split_ms"], e["nchw_ms"], e["won"], e["replayed"]) == (10.0, 11.0, 6.0, 7, True)
    # NCHW among grouped neighbours: its conversions are in its timing, no switch cost on top
    assert judge(GPU_SMALL, three(10.0, 11.0, 7.9, sw=5.0))["layout"] == "nchw"
    # ahead of the rule by less than DEVIATE_MARGIN: the rule (close)
    e = judge(GPU_SMALL, three(10.0, 11.0, 8.5))
    assert (e["layout"], e["decision"]) == ("grouped", "close")
    # ahead of the other two by less than CLEAR_MARGIN: close, whichever layout it is
    e = judge(GPU_SMALL, three(10.0, 6.2, 6.0))
    assert (e["layout"], e["decision"]) == ("grouped", "close")
    # split clearly fastest of three on a GPU: measured, when it pays for the switch
    assert judge(GPU_SMALL, three(10.0, 5.0, 9.0, sw=1.0))["layout"] == "split"
    assert judge(GPU_SMALL, three(10.0, 5.0, 9.0, sw=6.0))["decision"] == "close"


def test_judge_nchw_against_a_split_rule_pays_the_switch():
    """Where the static rule says split (a CPU's large conv), an NCHW layer among split ones also pays
    the split <-> grouped conversions."""
    big = ConvShape.make(16, 16, 3, 1, 1, (32, 32), 8, 128, threads=1)
    assert layout._rule_layout(big) == "split"
    assert judge(big, three(30.0, 20.0, 10.0, sw=2.0))["layout"] == "nchw"
    assert judge(big, three(30.0, 20.0, 10.0, sw=12.0))["layout"] == "split"


def test_judge_counts_rounds_won_against_every_other():
    t = Timing({"grouped": [10.0, 10, 10, 10, 10, 10], "split": [12.0, 12, 12, 12, 12, 12],
                "nchw": [9.0, 9, 9, 9, 11, 9]}, load=0.0, loadavg=0.1, cpus=2)
    e = judge(GPU_SMALL, t)
    # nchw won 5 of 6 rounds, clearly ahead, but not DEVIATE_MARGIN ahead of the rule's grouped: close
    assert e["won"] == 5 and e["split_won"] == 0 and (e["layout"], e["decision"]) == ("grouped", "close")
    assert "replayed" not in e  # not said: not known


def test_judge_refuses_uneven_nchw_rounds():
    with pytest.raises(ValueError, match="7 grouped and 7 split and 6 nchw"):
        judge(GPU_SMALL, Timing({"grouped": [1.0] * 7, "split": [1.0] * 7, "nchw": [1.0] * 6}))
    with pytest.raises(ValueError, match="nchw_ms: expected a positive finite number"):
        judge(GPU_SMALL, Timing({"grouped": [1.0] * 7, "split": [1.0] * 7, "nchw": [float("nan")] * 7}))


def test_an_nchw_choice_is_cached_and_read(tmp_path, monkeypatch):
    t = make_tuner(tmp_path, Timer3(10.0, 11.0, 5.0))
    assert t.layout(GPU_SMALL) == "nchw"
    data = json.loads(t.path.read_text())
    (entry,) = data["entries"].values()
    assert entry["layout"] == "nchw" and entry["nchw_ms"] == 5.0 and entry["replayed"] is True
    later = Timer3(1.0, 2.0, 3.0)
    assert make_tuner(tmp_path, later).layout(GPU_SMALL) == "nchw" and later.calls == []  # final: read
    # `netspace layout show`: an NCHW column where NCHW was timed
    monkeypatch.setenv("NETSPACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(layout, "device_name", lambda device="cpu": t.device_name)
    monkeypatch.setattr(layout.torch, "__version__", t.torch_version)
    shown = layout.describe_cache("cuda")
    assert "nchw ms" in shown and "nchw     measured" in shown, shown
    # an NCHW entry without its time is corrupt: measured again
    entry.pop("nchw_ms")
    t.path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="nchw_ms"):
        assert make_tuner(tmp_path, FakeTimer("split")).entries() == {}


def test_nchw_is_a_choice_of_plan_blocks(tmp_path, monkeypatch):
    """A tuner's NCHW choice (on a GPU) makes a grouped NCHW block; B = 1 is never timed."""
    t = make_tuner(tmp_path, Timer3(10.0, 11.0, 5.0))
    monkeypatch.setattr(layout, "tuner", lambda device: t)
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    assert short(layout.plan_blocks(LAYERS, 2, (8, 8), "cuda", 2, 3))[:2] == [(0, 1, False, "nchw"),
                                                                            (1, 2, False, "nchw")]
    assert short(layout.plan_blocks(LAYERS, 2, (8, 8), "cuda", 1, 3))[:2] == [(0, 1, False), (1, 2, False)]


def test_real_timing_of_three_layouts_on_cpu():
    """The timer runs the NCHW candidate where asked (a CPU here: every candidate eager), the same
    rounds as the others; its forward + backward is the grouped conv's (same weights, same data)."""
    shape = ConvShape.make(3, 4, 3, 1, 1, (6, 6), 2, 2, threads=1)
    timing = layout._time_layouts(shape, FORCED)
    assert set(timing.samples) == {"grouped", "split", "nchw", "switch"} and timing.replayed is None
    assert len({len(v) for v in timing.samples.values()}) == 1
    e = judge(shape, timing)
    assert e["nchw_ms"] > 0 and e["layout"] in FORCED
    with pytest.raises(ValueError, match="layouts: expected 'grouped', 'split' and optionally 'nchw'"):
        layout._time_layouts(shape, ("grouped", "nchw"))


# ---------------------------------------------------------------------------------------------
# CUDA timing by replay, with a fake graph API

class FakeGraphs:
    """The parts of torch.cuda that replay_candidates uses, logging every call."""

    def __init__(self, fail_on=None):
        self.log, self.fail_on, self.capturing = [], fail_on, False
        outer = self

        class Stream:
            def wait_stream(self, other):
                outer.log.append("wait")

        class CUDAGraph:
            def __init__(self):
                self.name = None

            def replay(self):
                outer.log.append(f"replay {self.name}")

        self.Stream, self.CUDAGraph = Stream, CUDAGraph
        self._side = Stream()

    def current_stream(self):
        return self._side

    @contextlib.contextmanager
    def stream(self, s):
        self.log.append("side")
        yield

    @contextlib.contextmanager
    def graph(self, g):
        self.capturing, self.graph_now = True, g
        try:
            yield
        finally:
            self.capturing = False


def logged(api, name):
    def fn():
        if api.capturing:
            api.graph_now.name = name
            if name == api.fail_on:
                raise RuntimeError("operation not permitted when stream is capturing")
        api.log.append(f"{'capture' if api.capturing else 'eager'} {name}")
    return fn


def test_replay_candidates_warm_up_then_capture_then_replay():
    api = FakeGraphs()
    fns = {name: logged(api, name) for name in ("grouped", "split", "switch")}
    replays, replayed = layout.replay_candidates(fns, torch.device("cpu"), api)
    assert replayed and set(replays) == set(fns)
    for name in fns:  # each: one eager call on the side stream (never captured), then the capture
        i = api.log.index(f"eager {name}")
        assert api.log[i - 1] == "side" and api.log[i + 2] == f"capture {name}"
    api.log.clear()
    layout.interleave(replays)
    assert api.log and all(line.startswith("replay ") for line in api.log)  # timing replays, nothing eager
    assert {line.split()[1] for line in api.log} == {"grouped", "split", "switch"}


def test_a_failed_capture_times_every_candidate_eagerly():
    api = FakeGraphs(fail_on="split")
    fns = {name: logged(api, name) for name in ("grouped", "split", "nchw")}
    got, replayed = layout.replay_candidates(fns, torch.device("cpu"), api)
    assert not replayed and got is fns


def test_timer_uses_the_replays(monkeypatch):
    """_time_layouts times what replay_candidates gives it (here: a fake API on CPU tensors)."""
    api = FakeGraphs()
    shape = ConvShape.make(3, 4, 3, 1, 1, (6, 6), 2, 2, threads=1)
    timing = layout._time_layouts(shape, graphs=api)
    assert any(line.startswith("replay ") for line in api.log)
    assert set(timing.samples) == {"grouped", "split", "switch"}


def test_no_replay_on_cpu_without_an_api():
    fns = {"grouped": lambda: None, "split": lambda: None}
    assert layout.replay_candidates(fns, torch.device("cpu")) == (fns, False)


@native
@pytest.mark.parametrize("forced", ["nchw", "grouped"])
def test_the_layout_reaches_the_convolutions(monkeypatch, forced):
    """Under ``nchw`` every conv gets its input and filters in NCHW (so oneDNN / cuDNN run their NCHW
    kernels) and hands its output on in channels-last; under ``grouped``, channels-last throughout."""
    import torch.nn.functional as F

    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", forced)
    seen = []
    real = F.conv2d

    def spy(x, w, *args, **kwargs):
        seen.append((x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last), w.is_contiguous(),
                     w.is_contiguous(memory_format=torch.channels_last)))
        return real(x, w, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    spec = archs.spec("resnet8", "cifar10")
    H, W = nf.prep_shape(spec.num_params, 1024)
    y = batched_forward(spec, 0.1 * torch.randn(2, H, W, requires_grad=True), torch.randn(2, 2, 3, 32, 32),
                        backend="cpp")
    y.sum().backward()
    assert len(seen) == sum(L.kind == "conv" for L in spec.layers)
    if forced == "nchw":  # (a 1x1 filter bank is both)
        assert all(nchw and not cl and w_nchw for nchw, cl, w_nchw, w_cl in seen), seen
    else:
        assert all(cl and w_cl for nchw, cl, w_nchw, w_cl in seen), seen
