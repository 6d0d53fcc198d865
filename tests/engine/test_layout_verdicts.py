"""The layout tuner's timing is judged before it is cached (netspace_fast/engine/layout.py): the
layouts are timed interleaved after an untimed warm-up, over at least MIN_REPS rounds; a timing
taken under load or with noisy rounds, or one where neither layout is clearly ahead, takes the
static rule; noisy and loaded entries (and the entries of older cache files) are timed again by
later processes, up to MAX_ATTEMPTS times, and by ``LayoutTuner.retune``.

Mocked timers and clocks throughout (deterministic); the real timer once, on a tiny conv.
"""

from __future__ import annotations

import itertools
import json
import types

import pytest
import torch

from netspace_fast.engine import layout
from netspace_fast.engine.layout import ConvShape, LayoutTuner, Timing
from test_layout_tuner import BIG, TINY, FakeTimer, make_tuner, quiet, shape

R = layout.MIN_REPS


class Scripted:
    """A timer replaying one Timing per call (the last one again once they run out); counts calls."""

    def __init__(self, *timings: Timing):
        self.timings = list(timings)
        self.calls: list[str] = []

    def __call__(self, s: ConvShape) -> Timing:
        self.calls.append(s.key())
        return self.timings[min(len(self.calls), len(self.timings)) - 1]


def loaded(grouped_ms: float, split_ms: float, reps: int = R) -> Timing:
    """What a 2-core machine with CPU hogs beside the run gives: clean rounds, but other processes
    held 1.9 cores (split's B small parallel calls wait at B times as many barriers: grouped wins)."""
    return quiet(grouped_ms, split_ms, reps, load=1.9, loadavg=3.9)


def noisy(grouped_ms: float, split_ms: float, reps: int = R) -> Timing:
    """Rounds that spread by +-40%: the median still says grouped, the spread says not to trust it."""
    jitter = [1.0, 1.4, 0.6, 1.4, 0.6, 1.0, 1.4][:reps]
    return Timing({"grouped": [grouped_ms * j for j in jitter], "split": [split_ms * j for j in reversed(jitter)]},
                  load=0.1, loadavg=0.5, cpus=2)


# ---------------------------------------------------------------------------------------------
# interleaved rounds after an untimed warm-up


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def candidates(clock: FakeClock, cost: dict[str, list[float]], log: list[str]) -> dict:
    """Callables that log their name and advance the clock by their next cost (seconds)."""
    it = {name: iter(c) for name, c in cost.items()}

    def make(name):
        def run():
            log.append(name)
            clock.now += next(it[name])
        return run

    return {name: make(name) for name in cost}


def test_interleave_alternates_and_never_times_the_warm_up(monkeypatch):
    monkeypatch.setattr(layout, "MIN_TIME_S", 0.0)
    clock, log = FakeClock(), []
    # the first call of each (warm-up: primitive creation) costs 9 s; every later one 10 or 20 ms
    fns = candidates(clock, {"grouped": itertools.chain([9.0], itertools.repeat(0.02)),
                             "split": itertools.chain([9.0], itertools.repeat(0.01))}, log)
    samples = layout.interleave(fns, clock=clock)
    assert log[:2] == ["grouped", "split"]  # the warm-up, once each
    rounds = [log[i:i + 2] for i in range(2, len(log), 2)]
    assert len(rounds) == R == len(samples["grouped"]) == len(samples["split"])
    assert rounds == [["grouped", "split"], ["split", "grouped"]] * (R // 2) + [["grouped", "split"]] * (R % 2)
    assert samples["grouped"] == pytest.approx([20.0] * R) and samples["split"] == pytest.approx([10.0] * R)


def test_interleave_rounds_min_time_and_cap(monkeypatch):
    clock, log = FakeClock(), []
    monkeypatch.setattr(layout, "MIN_TIME_S", 0.25)
    fns = candidates(clock, {"a": itertools.repeat(0.001), "b": itertools.repeat(0.002)}, log)
    samples = layout.interleave(fns, clock=clock)  # 3 ms a round: 50 rounds (the cap) before 0.25 s
    assert len(samples["a"]) == len(samples["b"]) == layout.MAX_REPS
    clock, log = FakeClock(), []
    fns = candidates(clock, {"a": itertools.repeat(0.01), "b": itertools.repeat(0.02)}, log)
    assert len(layout.interleave(fns, clock=clock)["a"]) == 9  # 30 ms a round: 0.25 s after 9 rounds
    clock, log = FakeClock(), []
    fns = candidates(clock, {"a": itertools.repeat(2.0), "b": itertools.repeat(2.0)}, log)
    assert len(layout.interleave(fns, clock=clock)["a"]) == R  # slow shapes: MIN_REPS rounds, never fewer


def test_the_real_timer_interleaves_and_measures_the_load(monkeypatch):
    seen = []
    real = layout.interleave

    def spy(fns, sync=lambda: None, **kw):
        seen.append(list(fns))
        return real(fns, sync, **kw)

    monkeypatch.setattr(layout, "interleave", spy)
    monkeypatch.setattr(layout, "MIN_TIME_S", 0.0)
    before = torch.get_num_threads()
    timing = layout._time_layouts(ConvShape.make(**TINY, threads=1))
    assert seen == [["grouped", "split", "switch"]]  # the conversions a layout change costs: timed alike
    assert len(timing.samples["grouped"]) == len(timing.samples["split"]) == len(timing.samples["switch"]) == R
    assert timing.cpus >= 1 and torch.get_num_threads() == before  # the key's threads while timing only


def test_interleave_gives_up_when_asked(monkeypatch):
    monkeypatch.setattr(layout, "MIN_TIME_S", 10.0)
    clock, log, asked = FakeClock(), [], []
    fns = candidates(clock, {"a": itertools.repeat(0.01), "b": itertools.repeat(0.01)}, log)
    samples = layout.interleave(fns, clock=clock, give_up=lambda rounds: (asked.append(rounds), rounds == 3)[1])
    assert asked == [1, 2, 3] and len(samples["a"]) == len(samples["b"]) == 3


def test_the_real_timer_stops_early_on_a_loaded_machine(monkeypatch):
    """Other processes busy on every core: LOADED_ROUNDS rounds, then the verdict "loaded"."""
    busy = itertools.count(0.0, 1000.0)  # each look at /proc/stat: 1000 more busy seconds
    monkeypatch.setattr(layout, "_busy_seconds", lambda cpus: next(busy))
    monkeypatch.setattr(layout, "MIN_PROBE_S", 0.0)
    s = ConvShape.make(**TINY, threads=1)
    timing = layout._time_layouts(s)
    assert len(timing.samples["grouped"]) == len(timing.samples["split"]) == layout.LOADED_ROUNDS
    assert timing.load > timing.cpus
    e = layout.judge(s, timing)
    assert (e["decision"], e["layout"], e["reps"]) == ("loaded", "grouped", layout.LOADED_ROUNDS)


# ---------------------------------------------------------------------------------------------
# the verdict


def test_a_clear_quiet_winner_is_measured():
    e = layout.judge(BIG, quiet(75.0, 55.0))
    assert (e["layout"], e["decision"]) == ("split", "measured")
    assert e["reps"] == R and e["split_won"] == R and e["grouped_spread"] == e["split_spread"] == 0
    assert (e["load"], e["loadavg"], e["cpus"], e["attempts"]) == (0.0, 0.1, 2, 1)
    e = layout.judge(BIG, quiet(40.0, 60.0))  # grouped far ahead on a shape the rule splits
    assert (e["layout"], e["decision"], e["switch_ms"]) == ("grouped", "measured", None)


def with_switch(t: Timing, switch_ms: float) -> Timing:
    return t._replace(samples={**t.samples, "switch": [switch_ms] * len(t.samples["grouped"])})


@pytest.mark.parametrize("grouped_ms,split_ms,switch_ms,want", [
    (100.0, 94.0, None, ("split", "measured")),  # the rule's layout, ahead by 6%
    (52.0, 60.0, None, ("split", "close")),  # not the rule's, ahead by 15% only: the rule
    (47.0, 60.0, None, ("grouped", "measured")),  # ahead by 28%
    (40.0, 60.0, 15.0, ("grouped", "measured")),  # ahead by 50%: saves 20 ms, the conversions cost 15
    (40.0, 60.0, 25.0, ("split", "close")),  # ... the conversions cost 25: the rule
])
def test_leaving_the_rule_takes_a_large_lead_that_pays_for_the_conversions(grouped_ms, split_ms, switch_ms, want):
    """BIG's rule: split. Agreeing with it takes CLEAR_MARGIN; leaving it DEVIATE_MARGIN and a
    saving larger than the time of the layout changes around the layer (switch_ms)."""
    t = quiet(grouped_ms, split_ms)
    if switch_ms is not None:
        t = with_switch(t, switch_ms)
    e = layout.judge(BIG, t)
    assert (e["layout"], e["decision"]) == want and e["switch_ms"] == switch_ms
    # the same the other way round: split leaving the rule of a small conv (grouped)
    mirrored = t._replace(samples={**t.samples, "grouped": t.samples["split"], "split": t.samples["grouped"]})
    e = layout.judge(shape(), mirrored)
    assert (e["layout"], e["decision"]) == ({"split": "grouped", "grouped": "split"}[want[0]], want[1])


@pytest.mark.parametrize("grouped_ms,split_ms", [(40.0, 39.0), (39.0, 40.0), (41.0, 39.5)])
def test_a_close_call_takes_the_rule(grouped_ms, split_ms):
    for s, rule in ((BIG, "split"), (shape(), "grouped")):
        e = layout.judge(s, quiet(grouped_ms, split_ms))
        assert (e["layout"], e["decision"]) == (rule, "close")


def test_a_median_lead_won_in_too_few_rounds_is_close():
    # split's median is 20% ahead, but grouped was faster in 2 of the 5 rounds
    t = Timing({"grouped": [60.0, 60.0, 60.0, 48.0, 48.0], "split": [50.0, 50.0, 50.0, 49.0, 49.0]}, 0.0, 0.1, 2)
    e = layout.judge(shape(), t)
    assert e["split_ms"] * 1.05 <= e["grouped_ms"] and e["split_won"] == 3  # 3 of 5 < CLEAR_ROUNDS
    assert (e["layout"], e["decision"]) == ("grouped", "close")


def test_noisy_rounds_take_the_rule():
    e = layout.judge(BIG, noisy(40.0, 70.0))  # grouped "wins" by the median
    assert (e["layout"], e["decision"]) == ("split", "noisy")
    assert max(e["grouped_spread"], e["split_spread"]) > layout.NOISE_LIMIT


@pytest.mark.parametrize("reps", [1, 2, R - 1])
def test_too_few_rounds_never_decide(reps):
    e = layout.judge(BIG, quiet(40.0, 70.0, reps))
    assert (e["layout"], e["decision"], e["reps"]) == ("split", "noisy", reps)


def test_a_loaded_timing_takes_the_rule_however_clean():
    e = layout.judge(BIG, loaded(400.0, 750.0))
    assert (e["layout"], e["decision"], e["load"]) == ("split", "loaded", 1.9)
    # without the measured load: the load average less this process's threads
    e = layout.judge(BIG, quiet(400.0, 750.0, load=None, loadavg=3.5))
    assert e["decision"] == "loaded"
    assert layout.judge(BIG, quiet(400.0, 750.0, load=None, loadavg=2.0))["decision"] == "measured"
    assert layout.judge(BIG, quiet(400.0, 750.0, load=None, loadavg=None))["decision"] == "measured"


def test_is_loaded():
    assert not layout.is_loaded(0.4, None, 2, 2) and layout.is_loaded(0.6, None, 2, 2)
    assert not layout.is_loaded(5.0, None, 16, 8)  # 11 cores left for 8 threads
    assert layout.is_loaded(9.0, None, 16, 8)
    assert layout.is_loaded(0.6, None, 1, 4)  # more threads than cores: any other work competes
    assert not layout.is_loaded(14.0, None, 16, 0)  # a GPU: one launching thread
    assert layout.is_loaded(None, 4.0, 2, 2) and not layout.is_loaded(None, 2.4, 2, 2)
    assert not layout.is_loaded(None, None, 2, 2)


def test_bad_timings_are_refused():
    with pytest.raises(ValueError, match="expected one time per round of each layout, got 5 grouped and 4 split"):
        layout.judge(shape(), Timing({"grouped": [1.0] * 5, "split": [1.0] * 4}))
    with pytest.raises(ValueError, match="expected one time per round of each layout, got 0 grouped"):
        layout.judge(shape(), Timing({"grouped": [], "split": []}))
    with pytest.raises(ValueError, match="got 5 grouped and 5 split and 4 switch"):
        layout.judge(shape(), Timing({"grouped": [1.0] * 5, "split": [1.0] * 5, "switch": [1.0] * 4}))
    with pytest.raises(ValueError, match="switch_ms: expected a positive finite number"):
        layout.judge(shape(), Timing({"grouped": [1.0], "split": [1.0], "switch": [float("inf")]}))
    with pytest.raises(ValueError, match="samples: expected"):
        layout.judge(shape(), Timing({"grouped": [1.0]}))
    with pytest.raises(ValueError, match="split_ms: expected a positive finite number of milliseconds, got 0"):
        layout.judge(shape(), Timing({"grouped": [1.0], "split": [0]}))


# ---------------------------------------------------------------------------------------------
# the tuner: no loaded or noisy timing becomes a cached decision


@pytest.mark.parametrize("bad", [loaded, noisy], ids=["loaded", "noisy"])
def test_a_bad_timing_is_not_cached_as_a_decision_the_quiet_one_contradicts(tmp_path, bad):
    """The issue's case: under load grouped looks faster; on the idle machine split is."""
    first = Scripted(bad(400.0, 750.0))
    t1 = make_tuner(tmp_path, first)
    assert t1.layout(BIG) == "split"  # the rule, not the loaded timing's grouped
    e = t1.entries()[BIG.key()]
    assert (e["layout"], e["decision"], e["attempts"]) == ("split", bad.__name__, 1)
    assert t1.layout(shape()) == "grouped"  # (the rule of a small conv: grouped)

    # the next process, on the idle machine: times the shape again, and split is measured
    second = Scripted(quiet(75.0, 55.0))
    t2 = make_tuner(tmp_path, second)
    assert t2.layout(BIG) == "split" and second.calls == [BIG.key()]
    e = t2.entries()[BIG.key()]
    assert (e["decision"], e["grouped_ms"], e["split_ms"]) == ("measured", 75.0, 55.0)
    third = Scripted(quiet(40.0, 80.0))
    assert make_tuner(tmp_path, third).layout(BIG) == "split" and third.calls == []  # final: read, not timed


def test_a_quiet_grouped_win_replaces_the_rule_of_a_loaded_timing(tmp_path):
    make_tuner(tmp_path, Scripted(loaded(60.0, 40.0))).layout(BIG)
    t = make_tuner(tmp_path, Scripted(quiet(40.0, 60.0)))
    assert t.layout(BIG) == "grouped" and t.entries()[BIG.key()]["decision"] == "measured"


def test_a_close_call_is_final_and_takes_the_rule(tmp_path):
    t = make_tuner(tmp_path, Scripted(quiet(40.0, 39.0)))
    assert t.layout(BIG) == "split" and t.layout(shape()) == "grouped"
    assert {e["decision"] for e in t.entries().values()} == {"close"}
    again = Scripted(quiet(10.0, 90.0))
    assert make_tuner(tmp_path, again).layout(BIG) == "split" and again.calls == []


def test_noisy_shapes_are_timed_again_up_to_max_attempts(tmp_path):
    for attempt in range(1, layout.MAX_ATTEMPTS + 1):
        timer = Scripted(loaded(40.0, 80.0))
        t = make_tuner(tmp_path, timer)
        assert t.layout(BIG) == "split" and len(timer.calls) == 1
        e = t.entries()[BIG.key()]
        assert (e["decision"], e["attempts"]) == ("loaded", attempt)
        assert layout.status(e) == f"loaded {attempt}/{layout.MAX_ATTEMPTS}"
    timer = Scripted(quiet(40.0, 80.0))
    t = make_tuner(tmp_path, timer)
    assert t.layout(BIG) == "split" and timer.calls == []  # settled on the rule ...
    assert layout.settled(t.entries()[BIG.key()])
    # ... until a retune, which starts the count again
    assert t.retune()[BIG.key()]["decision"] == "measured"
    e = t.entries()[BIG.key()]
    assert (e["layout"], e["attempts"]) == ("grouped", 1) and timer.calls == [BIG.key()]
    assert t.layout(BIG) == "split"  # this process's choice was made: it stays


def test_choices_stay_fixed_within_the_process(tmp_path):
    """A noisy shape takes the rule for the whole process, even once another process has measured it."""
    t = make_tuner(tmp_path, Scripted(noisy(40.0, 70.0)))
    assert t.layout(BIG) == "split"
    other = make_tuner(tmp_path, Scripted(quiet(40.0, 70.0)))
    assert other.layout(BIG) == "grouped"  # another process measures it: grouped
    assert t.layout(BIG) == "split" and len(t.timer.calls) == 1  # this one keeps its choice, not timed again
    assert make_tuner(tmp_path, Scripted()).layout(BIG) == "grouped"  # a new process reads the final entry


def test_one_network_is_never_timed(tmp_path, monkeypatch):
    timer = FakeTimer("split")
    t = make_tuner(tmp_path, timer)
    assert t.layout(shape(B=1)) == "grouped" and t.layout(BIG._replace(B=1)) == "grouped"
    assert timer.calls == [] and not t.path.exists()
    monkeypatch.setattr(layout, "tuner", lambda device: t)
    monkeypatch.setenv("NETSPACE_CONV_LAYOUT", "auto")
    layers = [("conv", 0, 1, 16, 3, 1, 1), ("conv", 1, 2, 16, 3, 1, 1)]
    assert layout.plan_blocks(layers, 128, (32, 32), "cpu", 1, 3) == [(0, 1, False, False), (1, 2, False, False)]
    assert timer.calls == []
    assert layout.plan_blocks(layers, 128, (32, 32), "cpu", 2, 3) == [(0, 2, True, False)] and len(timer.calls) == 2


def test_a_failed_or_malformed_timing_takes_the_rule_without_caching(tmp_path):
    t = make_tuner(tmp_path, lambda s: Timing({"grouped": [1.0] * 5, "split": [2.0] * 4}))
    with pytest.warns(RuntimeWarning, match="expected one time per round"):
        assert t.layout(BIG) == "split"
    assert not t.path.exists()
    t = make_tuner(tmp_path, lambda s: {"grouped": [1.0] * R, "split": [3.0] * R})  # a plain mapping: no load known
    assert t.layout(BIG) == "grouped" and t.entries()[BIG.key()]["load"] is None


# ---------------------------------------------------------------------------------------------
# older cache files


OLD_FILE = {"format": 1, "device": "Test CPU 9000", "torch": "2.99.0", "key": "...",
            "entries": {BIG.key(): {"layout": "grouped", "grouped_ms": 360.0, "split_ms": 410.0},
                        shape().key(): {"layout": "split", "grouped_ms": 2.0, "split_ms": 1.0}}}


def write_old(t: LayoutTuner, data=OLD_FILE) -> None:
    t.path.parent.mkdir(parents=True, exist_ok=True)
    t.path.write_text(json.dumps(data))


def test_an_older_cache_file_is_read_and_its_entries_timed_again(tmp_path, recwarn):
    timer = Scripted(quiet(75.0, 55.0), loaded(2.0, 1.0))
    t = make_tuner(tmp_path, timer)
    write_old(t)
    assert layout.status(OLD_FILE["entries"][BIG.key()]) == "unjudged"
    assert not layout.settled(OLD_FILE["entries"][BIG.key()])
    assert t.layout(BIG) == "split"  # the old entry said grouped (timed under load): timed again, quiet
    assert t.layout(shape()) == "grouped"  # the old entry said split; timed again under load: the rule
    assert timer.calls == [BIG.key(), shape().key()]
    entries = json.loads(t.path.read_text())["entries"]
    assert entries[BIG.key()]["decision"] == "measured" and entries[shape().key()]["decision"] == "loaded"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # read, not "corrupt"


@pytest.mark.parametrize("meta", [{"decision": 3}, {"decision": "measured"}, {"decision": "measured", "reps": 1},
                                  {"decision": "measured", "reps": "7"}, {"decision": "loaded", "attempts": "x"},
                                  {"decision": "sure", "attempts": 99}, {"reps": None, "load": "high"}])
def test_odd_metadata_is_timed_again_never_a_crash(tmp_path, meta):
    data = json.loads(json.dumps(OLD_FILE))
    data["entries"][BIG.key()].update(meta)
    timer = Scripted(quiet(75.0, 55.0))
    t = make_tuner(tmp_path, timer)
    write_old(t, data)
    assert t.layout(BIG) == "split" and timer.calls == [BIG.key()]
    assert isinstance(layout.status(data["entries"][BIG.key()]), str)


# ---------------------------------------------------------------------------------------------
# retune and clear


def test_retune_times_the_unsettled_entries_or_everything(tmp_path):
    t = make_tuner(tmp_path, Scripted(quiet(75.0, 55.0)))
    t.layout(shape(n=3))  # final: measured
    write = json.loads(t.path.read_text())
    write["entries"].update(OLD_FILE["entries"])
    write["entries"]["not a key"] = {"layout": "split", "grouped_ms": 1.0, "split_ms": 1.0}
    t.path.write_text(json.dumps(write))
    timer = Scripted(quiet(40.0, 60.0))
    t2 = make_tuner(tmp_path, timer)
    seen = []
    results = t2.retune(report=lambda key, old, new: seen.append((key, old["layout"], new)))
    assert sorted(timer.calls) == sorted([BIG.key(), shape().key()])  # not the final one
    assert results["not a key"].startswith("ValueError: not a conv layout key: 'not a key'")
    assert [k for k, _, _ in seen] == list(results) and len(results) == 3
    entries = t2.entries()
    assert entries[BIG.key()]["layout"] == "grouped" and entries[BIG.key()]["decision"] == "measured"
    assert entries[shape(n=3).key()]["layout"] == "split"  # untouched
    assert t2.choices == {}  # retune decides nothing for this process
    t2.retune(everything=True)
    assert t2.entries()[shape(n=3).key()]["layout"] == "grouped" and len(timer.calls) == 5


def test_retune_times_at_the_keys_threads(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(layout, "MIN_TIME_S", 0.0)
    real = layout.interleave
    monkeypatch.setattr(layout, "interleave",
                        lambda fns, sync, **kw: (seen.append(torch.get_num_threads()), real(fns, sync, **kw))[1])
    t = LayoutTuner("Test CPU", directory=tmp_path)
    write_old(t, {**OLD_FILE, "entries": {ConvShape.make(**TINY, threads=1).key(): OLD_FILE["entries"][shape().key()]}})
    before = torch.get_num_threads()
    assert t.retune()[ConvShape.make(**TINY, threads=1).key()]["reps"] == R
    assert seen == [1] and torch.get_num_threads() == before


def test_retune_of_a_corrupt_file_raises(tmp_path):
    t = make_tuner(tmp_path, FakeTimer())
    write_old(t, {"format": 1})
    with pytest.raises(ValueError, match="the conv layout cache .* is corrupt .*expected an object 'entries'"):
        t.retune()


def test_clear(tmp_path):
    t = make_tuner(tmp_path, FakeTimer())
    assert t.clear() is False
    t.layout(BIG)
    assert t.clear() is True and not t.path.exists()
    assert t.layout(BIG) == "split" and len(t.timer.calls) == 1  # memoized for the process
    other = make_tuner(tmp_path, FakeTimer(), name="Other CPU")
    other.layout(BIG)
    t.layout(shape(n=7))
    assert [p.name for p in layout.clear_caches(t.directory)] == [other.path.name, t.path.name]
    assert layout.cache_files(t.directory) == [] and layout.clear_caches(tmp_path / "none") == []


@pytest.mark.parametrize("s", [shape(), BIG, shape(shared=True, dtype=torch.float64),
                               ConvShape.make(**TINY, device="cuda"),
                               ConvShape.make(**TINY, device="cuda", shared=True)])
def test_keys_name_their_shapes(s):
    assert ConvShape.from_key(s.key()) == s._replace(device=str(torch.device(s.device)))


@pytest.mark.parametrize("key", ["", "cin=3", shape().key() + " extra", shape().key().replace(" threads=1", ""),
                                 ConvShape.make(**TINY, device="cuda").key() + " threads=2",
                                 shape().key().replace("float32", "float33")])
def test_strings_that_are_no_keys(key):
    with pytest.raises(ValueError):
        ConvShape.from_key(key)


# ---------------------------------------------------------------------------------------------
# the load probe


def test_load_probe_counts_the_other_processes_cpu_time(monkeypatch):
    clock = {"wall": 100.0, "cpu": 5.0}
    busy = iter([1000.0, 1001.7])  # 1.7 s of busy CPU time on the usable cores during the block ...
    monkeypatch.setattr(layout, "time", types.SimpleNamespace(perf_counter=lambda: clock["wall"],
                                                              process_time=lambda: clock["cpu"]))
    monkeypatch.setattr(layout, "_busy_seconds", lambda cpus: next(busy))
    with layout.LoadProbe() as p:
        clock["wall"] += 1.0
        clock["cpu"] += 0.5  # ... 0.5 s of it this process's
    assert p.others == pytest.approx(1.2) and p.cpus >= 1
    busy = iter([1000.0, 1000.01])
    with layout.LoadProbe() as p:
        clock["wall"] += layout.MIN_PROBE_S / 2  # too short to tell (10 ms ticks)
    assert p.others is None
    busy = iter([None, None])  # no /proc/stat
    with layout.LoadProbe() as p:
        clock["wall"] += 1.0
    assert p.others is None


def test_busy_seconds_reads_proc_stat(monkeypatch):
    import builtins
    import io

    text = ("cpu  10 0 10 500 0 0 0 0 0 0\n"
            "cpu0 100 1 20 300 7 2 3 4 0 0\n"
            "cpu1 50 0 10 300 0 0 0 0 0 0\n"
            "intr 1 2 3\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(text) if path == "/proc/stat"
                        else real_open(path, *a, **k))
    monkeypatch.setattr(layout.os, "sysconf", lambda name: 100)
    assert layout._busy_seconds(None) == pytest.approx((100 + 1 + 20 + 2 + 3 + 4 + 50 + 10) / 100)
    assert layout._busy_seconds({1}) == pytest.approx(0.6)
    assert layout._busy_seconds({5}) is None


def test_the_real_load_probe():
    with layout.LoadProbe() as p:
        end = layout.time.perf_counter() + 1.5 * layout.MIN_PROBE_S
        while layout.time.perf_counter() < end:
            pass
    assert p.cpus >= 1 and (p.others is None or p.others >= 0)
    assert p.loadavg is None or p.loadavg >= 0
