"""Per-layer choice between the two layouts of B networks' convolutional activations.

* grouped: ONE (N, B*C, H, W) channels-last tensor, network-major channels; a conv is ONE grouped
  call (groups = B; a shared input: ONE ordinary conv with the B networks' filters stacked).
* split: a list of B (N, C, H, W) channels-last tensors; a conv is B ordinary calls.
* nchw (a candidate on CUDA): the grouped call on the input converted to NCHW, with NCHW filters;
  its output converted back to channels-last.

Which is faster depends on the work per network and on the machine. One machine's measurements
(2-core Xeon, oneDNN via torch 2.14, forward + backward of one conv, ms grouped vs split)::

    B=8  N=128 3->16  32x32 out            47 vs 27     split
    B=8  N=128 16->16 32x32 out            75 vs 55     split
    B=8  N=128 32->32 16x16 out            52 vs 45     split
    B=8  N=128 16->32 16x16 out (stride 2) 56 vs 38     split
    B=64 N=128 16->16 32x32 out          1066 vs 450    split
    B=8  N=128 64->64 8x8 out              42 vs 39     ~even
    B=8  N=16  16->16 32x32 out           8.6 vs 8.5    even
    B=8  N=32  64->64 8x8 out            10.3 vs 12.0   grouped
    B=32 N=128 3->6   14x14 out (LeNet)    41 vs 76     grouped
    B=32 N=128 6->16  5x5 out (LeNet)      13 vs 32     grouped
    forward only: B=32 N=512 6->16 5x5 out 14.3 vs 13.2 split, N=256 5.8 vs 6.7 grouped
    whole zoo epoch, 8 ResNet8, batch 128: 8x8 layers grouped 1969 ms, split 1938 ms

i.e. there, small per-network convolutions (few output channels or few output pixels) gain from
one grouped call, large ones lose to the grouped kernel's poorer blocking. :func:`use_split`
encodes that as a static threshold rule (``SPLIT_MIN_PIXELS``, ``SPLIT_MIN_CHANNELS``). On another
CPU the crossover lies elsewhere (on a Xeon with AMX the rule costs 10-23% of a zoo epoch against
the measured choice: BENCHMARKS.md, "Convolution layout: measured per machine"), so by default the
choice is measured on the machine that runs it:

The tuner (:class:`LayoutTuner`). The first time a conv layer shape is met, both layouts run one
forward + backward (weight, bias and input gradients; the shared input of NetSpace evaluation gets
none) on random tensors of that shape (:func:`_time_layouts`):

* one warm-up call of each candidate first (primitive creation, first-touch memory: never timed);
  the candidates: both layouts, and the conversions between them (``switch``, below);
* then timed rounds, each ONE call of every candidate, interleaved (grouped split switch, switch
  split grouped, ...: a slow phase of the machine hits all, and none always runs first), at
  least :data:`MIN_REPS` rounds, more (up to :data:`MAX_REPS`) until the rounds have taken
  :data:`MIN_TIME_S` seconds (but :data:`LOADED_ROUNDS` rounds when the machine is loaded by then:
  the verdict is ``loaded`` anyway);
* meanwhile, the load: the CPU time other processes took on the cores this process may use
  (``/proc/stat`` less this process's own CPU time, over the timing's wall time; steal time of a
  virtual machine counts as others'), and ``os.getloadavg()`` and the number of cores.

The verdict (:func:`judge`), recorded with the timing in the cache entry (``decision``):

* ``loaded``: other processes kept more than ``cores - threads +`` :data:`LOAD_SLACK` cores busy
  (threads: torch's intra-op threads; 1 on a GPU, the launching thread). Under contention the
  layouts do not slow down alike (B small parallel calls meet B times as many thread barriers), so
  an interleaved timing can be clean and still wrong: a loaded timing never decides;
* ``noisy``: fewer than :data:`MIN_REPS` rounds, or a layout's times spread by more than
  :data:`NOISE_LIMIT` (median absolute deviation / median);
* ``close``: a quiet, clean timing where the faster layout's median is less than
  :data:`CLEAR_MARGIN` ahead, or it won fewer than :data:`CLEAR_ROUNDS` of the rounds, or it is
  not the static rule's layout and is less than :data:`DEVIATE_MARGIN` ahead or saves less than
  ``switch_ms``: the time of converting the layer's input and output to the other layout and back
  (what a layer of the other layout among its neighbours costs on top, forward and backward;
  timed in the same rounds). The timing of one layer alone sees neither these conversions nor the
  network-by-network execution of a run of split layers: on a 2-core Xeon (BENCHMARKS.md), one
  grouped layer among ResNet8's split ones, 8-24% faster alone, ran a zoo epoch at 0.66-0.87x
  the speed of all split;
* ``measured``: otherwise: the faster layout.

``measured`` takes the faster layout; ``close``, ``noisy`` and ``loaded`` take the static rule
(:func:`use_split`). ``measured`` and ``close`` are final: every later run reads them. ``noisy``
and ``loaded`` entries (and the entries of older cache files, which carry no ``decision``) are
timed again by the next process that meets the shape, up to :data:`MAX_ATTEMPTS` timings in all;
after that the rule stays until ``netspace layout retune`` (or ``clear``). One network (B = 1) is
never timed: both layouts are the same one convolution (grouped). The data comes from a private
``torch.Generator`` (the global RNG state is untouched), under its own grad mode (the caller's
autograd graph and ``no_grad`` / ``inference_mode`` / autocast state are untouched); the caller's
tensors are never used. A shape whose timing fails (out of memory, an unsupported dtype) gets the
static rule, in memory only, with a warning.

The key of a choice (:meth:`ConvShape.key`) is ``cin=.. cout=.. k=.. stride=.. padding=.. in=HxW
B=.. N=.. dtype=.. device=..`` plus ``threads=T`` on CPUs (torch's intra-op threads: the crossover
moves with them) and ``shared`` for a conv of an input shared by all networks. Choices are cached
on disk per device model and torch version, one JSON file per pair::

    <cache dir>/conv_layout-<device model>-torch<version>.json

(the device model: the CPU's ``model name`` from /proc/cpuinfo and a digest of its flags, else
``platform.processor()``; a GPU's ``torch.cuda.get_device_name``; both as file-name slugs), in the
folder :func:`netspace_fast.settings.cache_dir` names (``NETSPACE_CACHE_DIR``, else
``$XDG_CACHE_HOME/netspace_fast`` or ``~/.cache/netspace_fast``). The file holds, per key, the
layout, the verdict and how it was measured::

    {"format": 1, "device": "...", "torch": "2.14.1", "key": "...",
     "entries": {"cin=16 cout=16 k=3 ... threads=2": {
         "layout": "split", "decision": "measured", "grouped_ms": 75.1, "split_ms": 55.0,
         "switch_ms": 9.2, "reps": 7, "grouped_spread": 0.012, "split_spread": 0.021, "split_won": 7,
         "load": 0.03, "loadavg": 0.4, "cpus": 2, "attempts": 1, "timed": "2026-12-07T15:00:00Z"}}}

(an entry of an older version has the first three fields only; such a file is still read, its
entries timed again). It is written atomically (:func:`netspace_fast.storage.atomic_write_bytes`),
read-modify-written under the cache folder's lock (concurrent jobs time a shape once and agree on
it: the first final entry on disk wins). A corrupt or unreadable file warns once and is measured
again and rewritten; an unwritable folder warns once and the choices stay in memory for the
process. Each choice is made once per key per process and then fixed (memoized in memory), so a
training run never changes layout midway, even if the file changes meanwhile (a ``noisy`` shape
re-timed by a later process changes that later process only); once final, every later run makes
the same choices (reproducible training). Under ``torch.compile`` the choice is a constant of the
graph (made, and if need be measured, while tracing).

On CUDA the candidates are three: cuDNN's grouped channels-last kernels, B ordinary channels-last
calls (split), and the grouped call in NCHW (``nchw``: what ``torch.func.vmap`` gets from cuDNN; the
GPU program keeps its activations channels-last, so such a layer converts its input to NCHW and its
output back, and is timed with those conversions). Each candidate is captured in a CUDA graph after
one eager call and timed by replay (:func:`replay_candidates`), as the GPU program runs it: the
launch overhead of split's B small calls, which replay removes, is not counted against it. Where a
capture fails every candidate is timed eagerly (the entry says ``"replayed": false``). The GPU
program measures a shape before any CUDA graph of it is captured, so a capture never times. cuDNN's
autotuner follows one rule (:func:`netspace_fast.settings.cudnn_benchmark`: on unless
``NETSPACE_CUDNN_BENCHMARK`` says otherwise): its autotuning falls in the untimed first call. A
CPU's candidates are grouped and split (oneDNN's NCHW grouped kernels are not timed there; forcing
``nchw`` runs them).

``NETSPACE_CONV_LAYOUT`` (:func:`netspace_fast.settings.conv_layout`) overrides it:

* ``auto`` (default): measured (tuned, cached) on the device that runs it, CPU or GPU;
* ``tune``: the same as ``auto`` (an older name, kept);
* ``rule``: the static threshold rule (:func:`use_split`), no timing: deterministic on any machine
  (what the test suite runs with);
* ``grouped`` / ``split`` / ``nchw``: one layout everywhere (benchmarks, A/B measurements on new
  machines; ``nchw``: every conv grouped in NCHW, between channels-last activations).

The cached choices of this machine: ``netspace layout show`` (also ``python -m
netspace_fast.engine.layout``: :func:`print_cache`); ``netspace layout retune`` times the undecided
entries again now (``--all``: every entry), ``netspace layout clear`` deletes the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .. import settings, storage

CL = torch.channels_last

#: split when a network's conv writes at least this many output pixels (N * OH * OW) ...
SPLIT_MIN_PIXELS = 8192
#: ... and at least this many output channels (the ``rule`` layout)
SPLIT_MIN_CHANNELS = 16

LAYOUTS = settings.CONV_LAYOUTS
#: the layouts a conv can run in (module docstring); ``NETSPACE_CONV_LAYOUT`` names one to force it
FORCED = ("grouped", "split", "nchw")

#: the format number of the cache files (a file of another format is measured again and rewritten).
#: Entries of format 1 files written before the verdicts existed lack ``decision``: read, and re-timed.
CACHE_FORMAT = 1
#: timed rounds (one call of each layout, interleaved) per shape: at least this many ...
MIN_REPS = 5
#: ... and more, up to MAX_REPS, until the rounds have taken MIN_TIME_S seconds (small shapes: a
#: steadier median, and a window long enough to measure the load over)
MAX_REPS = 50
MIN_TIME_S = 0.25
#: a layout is ahead clearly when the other's median is at least this fraction slower ...
CLEAR_MARGIN = 0.05
#: ... and it was the faster in at least this fraction of the interleaved rounds
CLEAR_ROUNDS = 0.8
#: leaving the static rule takes more: the other layout at least this fraction faster, and saving
#: more than the conversions a layout change costs around the layer (``switch_ms``)
DEVIATE_MARGIN = 0.25
#: a timing is noisy when a layout's times spread by more than this (median absolute deviation / median)
NOISE_LIMIT = 0.10
#: a timing is loaded when other processes kept more than (cores - threads + LOAD_SLACK) cores busy
LOAD_SLACK = 0.5
#: a timing stops after this many rounds when the machine is loaded by then (its verdict: loaded)
LOADED_ROUNDS = 2
#: a noisy or loaded shape is timed again by later processes, up to this many timings in all
MAX_ATTEMPTS = 5
#: the verdicts of a timing (:func:`judge`); FINAL ones are never timed again (but by ``retune``)
DECISIONS = ("measured", "close", "noisy", "loaded")
FINAL = ("measured", "close")

KEY_DOC = ("cin cout k stride padding in=HxW (input) B (networks) N (images per network) dtype device "
           "[threads: torch's intra-op threads, CPUs] [shared: one input for all networks]")


def _static_rule(n: int, cout: int, out_hw: int, device) -> bool:
    if torch.device(device).type != "cpu":
        return False
    return cout >= SPLIT_MIN_CHANNELS and n * out_hw >= SPLIT_MIN_PIXELS


def use_split(n: int, cout: int, out_hw: int, device: torch.device | str = "cpu") -> bool:
    """The static threshold rule (``NETSPACE_CONV_LAYOUT=rule``): whether a conv with ``cout``
    output channels over ``n`` images of ``out_hw`` output pixels runs per network (split) rather
    than as one grouped call.

    The thresholds come from one CPU's measurements (module docstring); on other devices the rule
    keeps the grouped call. ``NETSPACE_CONV_LAYOUT=grouped|split`` forces one layout here too."""
    choice = settings.conv_layout()
    if choice in FORCED:
        return choice == "split"
    return _static_rule(n, cout, out_hw, device)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


class ConvShape(NamedTuple):
    """One conv layer of B networks as the tuner times it; :meth:`key` is its cache key.

    ``h``, ``w``: the input's spatial size; ``n``: images per network; ``dtype``: a torch dtype's
    name ("float32"); ``device``: where to time it ("cpu", "cuda:0"; the key holds its type);
    ``threads``: torch's intra-op threads (CPUs; 0 elsewhere); ``shared``: one input for all
    networks (grouped is then one ordinary conv with the filters stacked)."""

    cin: int
    cout: int
    k: int
    stride: int
    padding: int
    h: int
    w: int
    B: int
    n: int
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0
    shared: bool = False

    @classmethod
    def make(cls, cin: int, cout: int, k: int, stride: int, padding: int, hw: tuple[int, int], B: int, n: int,
             dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu", shared: bool = False,
             threads: int | None = None) -> "ConvShape":
        """A checked shape (``threads``: torch's current intra-op threads on CPUs unless given)."""
        for name, v in (("cin", cin), ("cout", cout), ("k", k), ("stride", stride), ("B", B), ("n", n)):
            _positive(name, v)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding: expected an int >= 0, got {padding!r}")
        if not (isinstance(hw, (tuple, list)) and len(hw) == 2):
            raise ValueError(f"hw: expected (H, W), got {hw!r}")
        h, w = (_positive(name, v) for name, v in (("hw[0]", hw[0]), ("hw[1]", hw[1])))
        if h + 2 * padding < k or w + 2 * padding < k:
            raise ValueError(f"hw: a {k}x{k} kernel with padding {padding} needs an input of at least "
                             f"{k - 2 * padding}x{k - 2 * padding}, got {h}x{w}")
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype: expected a torch dtype or its name, got {dtype!r}")
        elif isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        else:
            raise TypeError(f"dtype: expected a torch.dtype or its name, got {type(dtype).__name__}")
        dev = torch.device(device)
        if threads is None:
            threads = torch.get_num_threads() if dev.type == "cpu" else 0
        return cls(cin, cout, k, stride, padding, h, w, B, n, dtype, str(dev), int(threads), bool(shared))

    @property
    def out_hw(self) -> tuple[int, int]:
        return ((self.h + 2 * self.padding - self.k) // self.stride + 1,
                (self.w + 2 * self.padding - self.k) // self.stride + 1)

    def key(self) -> str:
        """``cin=3 cout=16 k=3 stride=1 padding=1 in=32x32 B=8 N=128 dtype=float32 device=cpu threads=2``
        (``threads`` on CPUs only; `` shared`` appended for a shared input)."""
        dev = torch.device(self.device).type
        key = (f"cin={self.cin} cout={self.cout} k={self.k} stride={self.stride} padding={self.padding} "
               f"in={self.h}x{self.w} B={self.B} N={self.n} dtype={self.dtype} device={dev}")
        if dev == "cpu":
            key += f" threads={self.threads}"
        return key + (" shared" if self.shared else "")

    @classmethod
    def from_key(cls, key: str) -> "ConvShape":
        """The shape a :meth:`key` names (``netspace layout retune`` times the cached keys again);
        ValueError for a string that is no key."""
        m = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
        if m is None:
            raise ValueError(f"not a conv layout key: {key!r} (expected {KEY_DOC})")
        g = m.groupdict()
        dev = g["device"]
        if (dev == "cpu") != (g["threads"] is not None):
            raise ValueError(f"not a conv layout key: {key!r} (threads=T on CPUs, and only there)")
        return cls.make(int(g["cin"]), int(g["cout"]), int(g["k"]), int(g["stride"]), int(g["padding"]),
                        (int(g["h"]), int(g["w"])), int(g["B"]), int(g["n"]), g["dtype"], dev, g["shared"] is not None,
                        threads=int(g["threads"]) if g["threads"] is not None else 0)


_KEY_RE = re.compile(r"cin=(?P<cin>\d+) cout=(?P<cout>\d+) k=(?P<k>\d+) stride=(?P<stride>\d+) "
                     r"padding=(?P<padding>\d+) in=(?P<h>\d+)x(?P<w>\d+) B=(?P<B>\d+) N=(?P<n>\d+) "
                     r"dtype=(?P<dtype>\w+) device=(?P<device>[a-z]+)(?: threads=(?P<threads>\d+))?"
                     r"(?P<shared> shared)?")


# ---------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        sync = getattr(getattr(torch, device.type, None), "synchronize", None)
        if callable(sync):
            sync()


class Timing(NamedTuple):
    """What a timer measured for one shape: ``samples`` maps each layout ("grouped", "split") to its
    milliseconds per timed round (round i of every layout ran back to back: :func:`interleave`),
    and optionally "switch" to the conversions' (module docstring; none: nothing to pay);
    ``load``: the cores other processes kept busy meanwhile (None: not measurable here);
    ``loadavg``: ``os.getloadavg()[0]`` then; ``cpus``: the cores this process may use; ``replayed``:
    on CUDA, whether the layouts were timed replayed from CUDA graphs (None elsewhere). ``samples``
    may also hold "nchw" (the grouped call in NCHW; CUDA)."""

    samples: dict
    load: float | None = None
    loadavg: float | None = None
    cpus: int | None = None
    replayed: bool | None = None


def _usable_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _busy_seconds(cpus: set[int] | None) -> float | None:
    """Seconds the CPUs ``cpus`` (None: all) have been busy since boot, steal time included
    (``/proc/stat``; None where there is none)."""
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    except (OSError, ValueError):
        return None
    busy, seen = 0, False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()) or (cpus is not None and int(name[3:]) not in cpus):
            continue
        v = [int(x) for x in rest.split()[:8] if x.isdigit()]
        if len(v) < 7:
            continue
        # user nice system idle iowait irq softirq [steal]: guest time is already inside user
        busy += v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
        seen = True
    return busy / tick if seen and tick > 0 else None


#: a load window shorter than this is not judged (``/proc/stat`` counts in ticks of 10 ms per core)
MIN_PROBE_S = 0.1


class LoadProbe:
    """``with LoadProbe() as p: ...`` then ``p.others``: the cores other processes kept busy during
    the block (busy time of the usable cores, less this process's CPU time, over the wall time;
    None where ``/proc/stat`` is missing or the block was shorter than :data:`MIN_PROBE_S`),
    ``p.loadavg`` (1-minute load average at the end, None where unknown) and ``p.cpus``."""

    def __enter__(self) -> "LoadProbe":
        self._set = _usable_cpus()
        self.cpus = len(self._set) if self._set else (os.cpu_count() or 1)
        self.others: float | None = None
        self.loadavg: float | None = None
        self._busy0 = _busy_seconds(self._set)
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def current(self) -> float | None:
        """``others`` so far (None: not measurable, or not yet :data:`MIN_PROBE_S` long)."""
        wall = time.perf_counter() - self._t0
        ours = time.process_time() - self._cpu0
        busy1 = _busy_seconds(self._set)
        if self._busy0 is None or busy1 is None or wall < MIN_PROBE_S:
            return None
        return max(0.0, (busy1 - self._busy0 - ours) / wall)

    def __exit__(self, *exc) -> None:
        self.others = self.current()
        try:
            self.loadavg = os.getloadavg()[0]
        except (AttributeError, OSError):
            self.loadavg = None


def interleave(fns: dict, sync: Callable[[], None] = lambda: None,
               clock: Callable[[], float] = time.perf_counter,
               give_up: Callable[[int], bool] | None = None) -> dict[str, list[float]]:
    """Milliseconds per call of each of ``fns`` (name -> a callable of no arguments), timed in rounds
    of one call each: the order alternates (A B, B A, A B, ...) so a slow phase of the machine hits
    every candidate alike. First one untimed warm-up call of each (one-time costs: primitive
    creation, first-touch memory); then at least :data:`MIN_REPS` rounds, more (up to
    :data:`MAX_REPS`) until the rounds have taken :data:`MIN_TIME_S` seconds. ``sync`` waits for
    the device (around every timed call); ``clock`` in seconds (tests pass a fake); ``give_up(rounds
    so far)``, asked after each round, ends the rounds early (the real timer: when the machine is
    loaded, the verdict is "loaded" however many rounds follow)."""
    names = list(fns)
    for name in names:
        fns[name]()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = clock()
    rounds = 0
    while True:
        for name in (names if rounds % 2 == 0 else names[::-1]):
            sync()
            t0 = clock()
            fns[name]()
            sync()
            samples[name].append((clock() - t0) * 1e3)
        rounds += 1
        if rounds >= MAX_REPS or (rounds >= MIN_REPS and clock() - start >= MIN_TIME_S):
            return samples
        if give_up is not None and give_up(rounds):
            return samples


@contextlib.contextmanager
def _threads(n: int):
    """torch's intra-op threads set to ``n`` (>= 1) for the block, as before afterwards."""
    before = torch.get_num_threads()
    if n < 1 or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def candidates(device: torch.device | str) -> tuple[str, ...]:
    """The layouts the tuner times on ``device``: grouped and split; on CUDA also the grouped call in
    NCHW (what ``torch.func.vmap`` gets from cuDNN)."""
    return FORCED if torch.device(device).type == "cuda" else ("grouped", "split")


def replay_candidates(fns: dict, device: torch.device, graphs=None) -> tuple[dict, bool]:
    """On CUDA, each of ``fns`` (name -> a callable of no arguments) captured in a CUDA graph of its
    own, after one eager call on a side stream (cuDNN's autotuning, the workspaces: never captured);
    returns (name -> the graph's ``replay``, True): a layout is timed as the GPU program runs it,
    replayed, without the launch overhead of its B small calls. Elsewhere, or when a capture fails
    (an operation that cannot be captured: the GPU program then runs that call eagerly too),
    ``(fns, False)``: every candidate eager, so that they stay comparable. ``graphs``: the API
    (``torch.cuda``; tests pass a fake)."""
    if device.type != "cuda" and graphs is None:
        return fns, False
    api = torch.cuda if graphs is None else graphs
    replays = {}
    try:
        with (torch.cuda.device(device) if graphs is None else contextlib.nullcontext()):
            for name, fn in fns.items():
                side = api.Stream()
                side.wait_stream(api.current_stream())
                with api.stream(side):
                    fn()
                api.current_stream().wait_stream(side)
                g = api.CUDAGraph()
                with api.graph(g):
                    fn()
                replays[name] = g.replay
    except Exception:  # noqa: BLE001 - any failed capture: time every candidate eagerly
        return fns, False
    return replays, True


def _time_layouts(shape: ConvShape, layouts: tuple[str, ...] | None = None, graphs=None) -> Timing:
    """The :class:`Timing` of one forward + backward of the conv ``shape`` describes, in each of
    ``layouts`` (:func:`candidates` of its device unless given; module docstring), with torch's
    intra-op threads at ``shape.threads`` on CPUs; on CUDA replayed from CUDA graphs
    (:func:`replay_candidates`; ``graphs``: its API, for tests). Replaceable (tests inject a fake)."""
    device = torch.device(shape.device)
    layouts = candidates(device) if layouts is None else tuple(layouts)
    if not {"grouped", "split"} <= set(layouts) or not set(layouts) <= set(FORCED):
        raise ValueError(f"layouts: expected 'grouped', 'split' and optionally 'nchw', got {layouts!r}")
    dtype = getattr(torch, shape.dtype)
    B, n, cin, cout, k = shape.B, shape.n, shape.cin, shape.cout, shape.k
    oh, ow = shape.out_hw
    gen = torch.Generator(device=device)
    gen.manual_seed(0)

    def rand(*size: int, cl: bool = False) -> torch.Tensor:
        t = torch.randn(size, generator=gen, device=device, dtype=dtype)
        return t.contiguous(memory_format=CL) if cl else t

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        if device.type in ("cpu", "cuda"):
            stack.enter_context(torch.autocast(device.type, enabled=False))
        if device.type == "cpu":
            stack.enter_context(_threads(shape.threads))
        x = rand(n, cin if shape.shared else B * cin, shape.h, shape.w, cl=True).requires_grad_(not shape.shared)
        w = rand(B * cout, cin, k, k).requires_grad_()
        b = rand(B * cout).requires_grad_()
        gy = rand(n, B * cout, oh, ow, cl=True)
        if shape.shared:
            xs = [x] * B
        else:
            xs = [x.detach()[:, i * cin:(i + 1) * cin].contiguous(memory_format=CL).requires_grad_() for i in range(B)]
        ws = [w.detach()[i * cout:(i + 1) * cout].clone().requires_grad_() for i in range(B)]
        bs = [b.detach()[i * cout:(i + 1) * cout].clone().requires_grad_() for i in range(B)]
        gys = [gy[:, i * cout:(i + 1) * cout].contiguous(memory_format=CL) for i in range(B)]
        g_inputs = [t for t in (x, w, b) if t.requires_grad]
        s_inputs = [t for t in (*({id(t): t for t in xs}.values()), *ws, *bs) if t.requires_grad]
        groups = 1 if shape.shared else B
        w_cl = w.detach().contiguous(memory_format=CL).requires_grad_()
        cl_inputs = [t for t in (x, w_cl, b) if t.requires_grad]

        def grouped() -> None:
            y = F.conv2d(x, w_cl, b, shape.stride, shape.padding, 1, groups)
            torch.autograd.grad(y, cl_inputs, gy)

        def nchw() -> None:  # as the GPU program runs it among channels-last layers: converted in and out
            y = F.conv2d(x.contiguous(), w, b, shape.stride, shape.padding, 1, groups).contiguous(memory_format=CL)
            torch.autograd.grad(y, g_inputs, gy)

        def split() -> None:
            ys = [F.conv2d(xs[i], ws[i], bs[i], shape.stride, shape.padding) for i in range(B)]
            torch.autograd.grad(ys, s_inputs, gys)

        def switch() -> None:  # the conversions around a layer of the other layout, forward and backward
            if not shape.shared:
                to_grouped(to_split(x.detach(), B))
            to_grouped(to_split(gy, B))

        threads = shape.threads if device.type == "cpu" else 1

        def loaded(rounds: int) -> bool:  # the verdict is "loaded" then: spare the remaining rounds
            return rounds >= LOADED_ROUNDS and is_loaded(probe.current(), None, probe.cpus, threads)

        fns = {"grouped": grouped, "split": split, "nchw": nchw}
        fns = {name: fns[name] for name in layouts}
        fns["switch"] = switch
        fns, replayed = replay_candidates(fns, device, graphs)
        with LoadProbe() as probe:
            samples = interleave(fns, lambda: _sync(device), give_up=loaded)
    return Timing(samples, probe.others, probe.loadavg, probe.cpus, replayed if device.type == "cuda" else None)


def _rule_layout(shape: ConvShape) -> str:
    oh, ow = shape.out_hw
    return "split" if _static_rule(shape.n, shape.cout, oh * ow, shape.device) else "grouped"


def _spread(xs: list[float]) -> float:
    """Median absolute deviation over the median."""
    med = statistics.median(xs)
    return statistics.median(abs(x - med) for x in xs) / med


def is_loaded(load: float | None, loadavg: float | None, cpus: int | None, threads: int) -> bool:
    """Whether a timing ran under load: other processes kept more than ``cpus - threads +``
    :data:`LOAD_SLACK` cores busy (``load``; where it is unknown, the 1-minute load average less
    this process's ``threads``, a rough estimate; neither known: not loaded). ``threads``: torch's
    intra-op threads (at least 1: a GPU's launching thread)."""
    t = max(1, int(threads))
    if load is not None:
        others = load
    elif loadavg is not None:
        others = max(0.0, loadavg - t)
    else:
        return False
    cores = cpus if cpus else (os.cpu_count() or 1)
    return others > max(0, cores - t) + LOAD_SLACK


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else float(f"{v:.{digits}g}")


def judge(shape: ConvShape, timing: Timing) -> dict:
    """The cache entry of a timing of ``shape``: its verdict (``decision``: module docstring), the
    layout it gives (the fastest one where ``measured``, the static rule's otherwise) and how it was
    measured: medians (``grouped_ms``, ``split_ms``, ``nchw_ms`` where timed, ``switch_ms``), rounds
    (``reps``), spreads, the rounds split won against grouped (``split_won``) and the fastest won
    against every other (``won``), the load, and on CUDA whether the layouts were replayed from
    CUDA graphs (``replayed``). ValueError for a timing that is not one (missing layouts, rounds of
    unequal counts, a time that is not a positive finite number)."""
    samples = timing.samples
    if not isinstance(samples, dict) or not {"grouped", "split"} <= set(samples):
        raise ValueError(f"the timer's samples: expected {{'grouped': [ms, ...], 'split': [ms, ...]}}, got {samples!r}")
    names = [name for name in FORCED if name in samples]
    times = {name: [_finite_ms(f"{name}_ms", v) for v in samples[name]] for name in names}
    sw = [_finite_ms("switch_ms", v) for v in samples.get("switch", ())]
    reps = len(times["grouped"])
    if not reps or any(len(t) != reps for t in times.values()) or (sw and len(sw) != reps):
        raise ValueError("the timer's samples: expected one time per round of each layout, got "
                         + " and ".join(f"{len(t)} {name}" for name, t in times.items())
                         + (f" and {len(sw)} switch" if sw else ""))
    med = {name: statistics.median(t) for name, t in times.items()}
    spread = {name: _spread(t) for name, t in times.items()}
    switch_ms = statistics.median(sw) if sw else 0.0
    split_won = sum(b < a for a, b in zip(times["grouped"], times["split"]))
    faster = min(names, key=lambda name: (med[name], names.index(name)))
    won = sum(all(times[faster][r] < times[o][r] for o in names if o != faster) for r in range(reps))
    rule = _rule_layout(shape)
    threads = shape.threads if torch.device(shape.device).type == "cpu" else 1
    if is_loaded(timing.load, timing.loadavg, timing.cpus, threads):
        decision, choice = "loaded", rule
    elif reps < MIN_REPS or max(spread.values()) > NOISE_LIMIT:
        decision, choice = "noisy", rule
    else:
        fast = med[faster]
        runner_up = min(med[name] for name in names if name != faster)
        clear = runner_up >= (1 + CLEAR_MARGIN) * fast and won >= CLEAR_ROUNDS * reps
        if clear and faster != rule:  # leaving the rule must pay for the layout changes around the layer
            # (NCHW is timed with its conversions from and to channels-last; split <-> grouped is switch_ms)
            cost = switch_ms if "split" in (faster, rule) else 0.0
            clear = med[rule] >= (1 + DEVIATE_MARGIN) * fast and med[rule] - fast > cost
        decision, choice = ("measured", faster) if clear else ("close", rule)
    entry = {"layout": choice, "decision": decision, "grouped_ms": _round(med["grouped"], 6),
             "split_ms": _round(med["split"], 6)}
    if "nchw" in med:
        entry["nchw_ms"] = _round(med["nchw"], 6)
    entry.update({"switch_ms": _round(switch_ms, 6) if sw else None, "reps": reps,
                  "grouped_spread": _round(spread["grouped"], 3), "split_spread": _round(spread["split"], 3)})
    if "nchw" in spread:
        entry["nchw_spread"] = _round(spread["nchw"], 3)
    entry.update({"split_won": split_won, "won": won,
                  "load": None if timing.load is None else round(float(timing.load), 2),
                  "loadavg": None if timing.loadavg is None else round(float(timing.loadavg), 2),
                  "cpus": timing.cpus, "attempts": 1})
    if timing.replayed is not None:
        entry["replayed"] = bool(timing.replayed)
    entry["timed"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return entry


# ---------------------------------------------------------------------------------------------
# device names and the cache files

_NAMES: dict[str, str] = {}


def _cpu_model() -> str:
    """The CPU's model name, plus a digest of its feature flags where /proc/cpuinfo has them: virtual
    machines report several CPU generations under one name ("Intel(R) Xeon(R) Processor" for AVX-512
    Xeons with and without AMX), and the layouts' crossover moves between them."""
    name = flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                field, _, value = line.partition(":")
                field = field.strip().lower()
                if field == "model name" and not name:
                    name = value.strip()
                elif field in ("flags", "features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if name and flags:
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} flags-{hashlib.sha256(flags.encode()).hexdigest()[:8]}" if flags else name


def device_name(device: torch.device | str = "cpu") -> str:
    """The model of ``device``: a CPU's model name and a digest of its feature flags (/proc/cpuinfo,
    else ``platform.processor()``), a GPU's ``torch.cuda.get_device_name``; other devices: their type."""
    dev = torch.device(device)
    label = str(dev)
    if label not in _NAMES:
        if dev.type == "cpu":
            _NAMES[label] = _cpu_model()
        elif dev.type == "cuda":
            _NAMES[label] = torch.cuda.get_device_name(dev)
        else:
            _NAMES[label] = dev.type
    return _NAMES[label]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")[:80] or "unknown"


def cache_file_name(device_name: str, torch_version: str) -> str:
    """``conv_layout-<device model slug>-torch<version slug>.json``."""
    return f"conv_layout-{_slug(device_name)}-torch{_slug(torch_version)}.json"


def _finite_ms(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive finite number of milliseconds, got {v!r}")
    return float(v)


def _entries_of(data) -> dict[str, dict]:
    """The entries of a parsed cache file; ValueError saying what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != CACHE_FORMAT:
        raise ValueError(f"expected format {CACHE_FORMAT}, got {data.get('format')!r}")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise ValueError("expected an object 'entries'")
    for key, e in entries.items():
        if not isinstance(e, dict) or e.get("layout") not in FORCED:
            raise ValueError(f"entry {key!r}: expected {{'layout': 'grouped', 'split' or 'nchw', ...}}, got {e!r}")
        _finite_ms(f"entry {key!r} grouped_ms", e.get("grouped_ms"))
        _finite_ms(f"entry {key!r} split_ms", e.get("split_ms"))
        if "nchw_ms" in e or e["layout"] == "nchw":
            _finite_ms(f"entry {key!r} nchw_ms", e.get("nchw_ms"))
    return entries


Timer = Callable[[ConvShape], Timing]


def _attempts(entry: dict | None) -> int:
    a = entry.get("attempts") if isinstance(entry, dict) else None
    return a if isinstance(a, int) and not isinstance(a, bool) and a >= 0 else 0


def _final(entry: dict) -> bool:
    """A cached verdict later runs keep: ``measured`` or ``close`` from at least :data:`MIN_REPS`
    rounds. Entries of older versions (no ``decision``) are not."""
    reps = entry.get("reps")
    return (entry.get("decision") in FINAL and isinstance(reps, int) and not isinstance(reps, bool)
            and reps >= MIN_REPS)


def settled(entry: dict) -> bool:
    """Whether a cache entry is kept as it is by a process that meets its shape (module docstring):
    final, or timed noisily :data:`MAX_ATTEMPTS` times (the static rule then, until a retune)."""
    return _final(entry) or (entry.get("decision") in ("noisy", "loaded") and _attempts(entry) >= MAX_ATTEMPTS)


def status(entry: dict) -> str:
    """One word or two on an entry: ``measured``, ``close``, ``noisy 2/5`` (timings so far / the
    most), ``loaded 5/5``, ``unjudged`` (written by an older version: timed again when met)."""
    d = entry.get("decision")
    if d in FINAL:
        return d if _final(entry) else f"{d}?"
    if d in ("noisy", "loaded"):
        return f"{d} {_attempts(entry)}/{MAX_ATTEMPTS}"
    return "unjudged"


class LayoutTuner:
    """Measured layout choices of one device model under one torch version (module docstring).

    ``device_name``: the model (:func:`device_name`), in the file name; ``torch_version``: torch's
    unless given; ``directory``: the cache folder (:func:`netspace_fast.settings.cache_dir` at
    construction unless given); ``timer``: ``timer(shape) -> Timing``, the module's
    :func:`_time_layouts` (looked up at each use) unless given. ``choices`` is the in-memory memo
    (key -> "grouped", "split" or "nchw"): a key in it is never decided again by this tuner."""

    def __init__(self, device_name: str, *, torch_version: str | None = None,
                 directory: str | os.PathLike | None = None, timer: Timer | None = None) -> None:
        if not isinstance(device_name, str) or not device_name.strip():
            raise ValueError(f"device_name: expected a non-empty str, got {device_name!r}")
        if torch_version is not None and (not isinstance(torch_version, str) or not torch_version.strip()):
            raise ValueError(f"torch_version: expected a non-empty str or None, got {torch_version!r}")
        if timer is not None and not callable(timer):
            raise TypeError(f"timer: expected a callable(shape) -> Timing or None, got {type(timer).__name__}")
        self.device_name = device_name
        self.torch_version = torch.__version__ if torch_version is None else torch_version
        self.directory = Path(directory) if directory is not None else settings.cache_dir()
        self.path = self.directory / cache_file_name(device_name, self.torch_version)
        self.timer = timer
        self.choices: dict[str, str] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._writable = True

    def __repr__(self) -> str:
        return f"LayoutTuner({self.device_name!r}, torch {self.torch_version}, {str(self.path)!r})"

    def layout(self, shape: ConvShape) -> str:
        """"grouped", "split" or "nchw" (CUDA) for ``shape``: the memo, else the cache file's final
        entry, else timed now (and written to the file; module docstring)."""
        if not isinstance(shape, ConvShape):
            raise TypeError(f"shape: expected a ConvShape, got {type(shape).__name__}")
        key = shape.key()
        choice = self.choices.get(key)
        if choice is None:
            with self._lock:
                choice = self.choices.get(key)
                if choice is None:
                    choice = self.choices[key] = self._decide(shape, key)
        return choice

    def split(self, shape: ConvShape) -> bool:
        return self.layout(shape) == "split"

    def entries(self, strict: bool = False) -> dict[str, dict]:
        """The cache file's entries: empty when it is missing; when it is unreadable or corrupt,
        empty with a warning, or the error (ValueError, OSError) where ``strict``."""
        return self._read(strict)

    def retune(self, everything: bool = False,
               report: Callable[[str, dict | None, dict | str], None] | None = None) -> dict[str, dict | str]:
        """Time the cached shapes again now and write their new entries: every entry without a final
        verdict (noisy and loaded ones, also those past :data:`MAX_ATTEMPTS`; older versions'
        entries), ``everything``: every entry. A fresh entry counts its timings from 1. Returns
        key -> the new entry, or the reason it was left as it was (a key that names no shape, a
        failed timing); ``report(key, old entry, new entry or reason)`` is called after each. The
        choices this tuner already made (:attr:`choices`) stay as they are. Raises what
        :meth:`entries` raises (strict)."""
        results: dict[str, dict | str] = {}
        for key, old in self._read(strict=True).items():
            if _final(old) and not everything:
                continue
            try:
                shape = ConvShape.from_key(key)
                new = judge(shape, self._measure(shape))
            except Exception as e:  # one shape's failure must not stop the others
                results[key] = f"{type(e).__name__}: {e}"
            else:
                with self._locked():
                    entries = self._read(strict=True)
                    entries[key] = new
                    self._write(entries, strict=True)
                results[key] = new
            if report is not None:
                report(key, old, results[key])
        return results

    def clear(self) -> bool:
        """Delete the cache file (under the folder's lock); whether there was one. The choices this
        tuner already made stay as they are."""
        with self._locked():
            try:
                self.path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return False
        return True

    # -- internals

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    @contextlib.contextmanager
    def _locked(self):
        """The cache folder's lock where the folder can be made and opened (else none: _write warns)."""
        with contextlib.ExitStack() as stack:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                stack.enter_context(storage.locked(self.directory))
            except OSError:
                pass
            yield

    def _read(self, strict: bool = False) -> dict[str, dict]:
        try:
            raw = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # nothing cached (yet); an unusable folder: _write warns
            return {}
        except OSError as e:
            if strict:
                raise
            self._warn_once("read", f"netspace_fast: cannot read the conv layout cache {str(self.path)!r} ({e}); "
                                    f"measuring again")
            return {}
        try:
            return dict(_entries_of(json.loads(raw.decode("utf-8"))))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError included
            if strict:
                raise ValueError(f"the conv layout cache {str(self.path)!r} is corrupt ({e})") from None
            self._warn_once("corrupt", f"netspace_fast: the conv layout cache {str(self.path)!r} is corrupt ({e}); "
                                       f"measuring again and rewriting it")
            return {}

    def _write(self, entries: dict[str, dict], strict: bool = False) -> None:
        if not self._writable and not strict:
            return
        data = {"what": "convolution layouts measured on this device (netspace_fast.engine.layout)",
                "format": CACHE_FORMAT, "device": self.device_name, "torch": self.torch_version, "key": KEY_DOC,
                "entries": dict(sorted(entries.items()))}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            storage.atomic_write_bytes(self.path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
        except OSError as e:
            if strict:
                raise
            self._writable = False
            self._warn_once("write", f"netspace_fast: cannot write the conv layout cache {str(self.path)!r} ({e}); "
                                     f"keeping the measured choices in memory for this process")

    def _measure(self, shape: ConvShape) -> Timing:
        timer = self.timer if self.timer is not None else _time_layouts
        got = timer(shape)
        if isinstance(got, dict):
            got = Timing(got)
        if not isinstance(got, Timing):
            raise ValueError(f"the timer returned {got!r}, expected a Timing")
        return got

    def _decide(self, shape: ConvShape, key: str) -> str:
        if shape.B == 1:  # one network: both layouts are the same one convolution
            return "grouped"
        with self._locked():  # one process times a shape at a time: the others then read its result
            entries = self._read()
            old = entries.get(key)
            if old is not None and settled(old):
                return old["layout"] if _final(old) else _rule_layout(shape)
            try:
                entry = judge(shape, self._measure(shape))
            except Exception as e:  # timing must never stop a run
                self._warn_once("measure", f"netspace_fast: timing the conv layouts of {key} failed "
                                           f"({type(e).__name__}: {e}); using the static rule for such shapes "
                                           f"in this process")
                return _rule_layout(shape)
            if old is not None and old.get("decision") in ("noisy", "loaded"):
                entry["attempts"] = _attempts(old) + 1
            entries[key] = entry
            self._write(entries)
            return entry["layout"]


_TUNERS: dict[tuple[str, str], LayoutTuner] = {}
_TUNERS_LOCK = threading.Lock()


def tuner(device: torch.device | str = "cpu") -> LayoutTuner:
    """This process's tuner of ``device``'s model (one per model; its cache folder is fixed when it is
    first used, so a run's choices never move)."""
    dev = torch.device(device)
    ident = (dev.type, device_name(dev))
    with _TUNERS_LOCK:
        t = _TUNERS.get(ident)
        if t is None:
            t = _TUNERS[ident] = LayoutTuner(ident[1])
        return t


def reset_tuners() -> None:
    """Forget this process's tuners and their choices (tests: a fresh process)."""
    with _TUNERS_LOCK:
        _TUNERS.clear()


@torch.compiler.assume_constant_result
def _tuned_layout(cin: int, cout: int, k: int, stride: int, padding: int, h: int, w: int, B: int, n: int,
                  dtype: torch.dtype, device: str, shared: bool) -> int:
    """The tuner's choice (its index in :data:`FORCED`); a constant of the graph under torch.compile
    (made while tracing)."""
    shape = ConvShape.make(cin, cout, k, stride, padding, (h, w), B, n, dtype, device, shared)
    return FORCED.index(tuner(shape.device).layout(shape))


def conv_layout(mode: str, n: int, cin: int | None, cout: int, k: int, stride: int, padding: int,
                hw: tuple[int, int], B: int | None, dtype: torch.dtype, device, shared: bool = False) -> str:
    """The layout ("grouped", "split" or "nchw") of one conv under layout ``mode`` (a value of
    ``NETSPACE_CONV_LAYOUT``); ``hw`` is its input's spatial size."""
    if mode in FORCED:
        return mode
    dev = torch.device(device)
    oh = (hw[0] + 2 * padding - k) // stride + 1
    ow = (hw[1] + 2 * padding - k) // stride + 1
    if mode == "rule":
        return "split" if use_split(n, cout, oh * ow, dev) else "grouped"
    if mode not in ("auto", "tune"):
        raise ValueError(f"mode: expected one of {LAYOUTS}, got {mode!r}")
    if B is None or cin is None:
        raise ValueError(f"B and the input's channels are needed to time layouts (NETSPACE_CONV_LAYOUT={mode}), "
                         f"got B={B!r}, cin={cin!r}")
    if n < 1 or B < 1 or oh < 1 or ow < 1:  # nothing to run
        return "grouped"
    return FORCED[_tuned_layout(int(cin), int(cout), int(k), int(stride), int(padding), int(hw[0]), int(hw[1]),
                                int(B), int(n), dtype, str(dev), bool(shared))]


def conv_split(mode: str, n: int, cin: int | None, cout: int, k: int, stride: int, padding: int,
               hw: tuple[int, int], B: int | None, dtype: torch.dtype, device, shared: bool = False) -> bool:
    """Whether one conv runs split under layout ``mode`` (:func:`conv_layout`)."""
    return conv_layout(mode, n, cin, cout, k, stride, padding, hw, B, dtype, device, shared) == "split"


class Block(NamedTuple):
    """Steps ``start`` to ``stop - 1`` of a program: per network (``split``) or for all networks at
    once; ``nchw``: a grouped conv run in NCHW (its input converted from channels-last, its output
    back)."""

    start: int
    stop: int
    split: bool
    nchw: bool = False


def plan_blocks(layers, n: int, hw0: tuple[int, int], device, B: int | None = None, c0: int | None = None,
                dtype: torch.dtype = torch.float32, shared: bool = False) -> list[Block]:
    """Cut a network into :class:`Block` s ``(start, stop, split, nchw)``.

    ``layers``: per layer ``(kind, src, dst, cout, k, stride, padding)`` (value ids as in
    :class:`netspace_fast.archs.LayerSpec`; for an "avgpool" k and stride are the pool's); ``n``
    images per network of spatial size ``hw0`` and ``c0`` channels, ``B`` networks, ``dtype`` and
    ``device`` the activations'; ``shared``: one input (value 0) for all networks. Each conv's
    layout comes from ``NETSPACE_CONV_LAYOUT`` (module docstring: the tuner, the static rule
    :func:`use_split`, or one layout forced); the tuner needs ``B`` and ``c0``. A split block is a
    maximal run of convs sent per network, plus the pools between them: callers run it network by
    network (each network's activations flow from layer to layer while still in cache: ResNet8's
    forward, B=8, N=128, 98 ms against 126 ms layer by layer). Every other layer is a block of its
    own, run for all networks at once (a conv the tuner or ``NETSPACE_CONV_LAYOUT=nchw`` puts in NCHW:
    ``nchw``)."""
    mode = settings.conv_layout()
    hw = {0: tuple(hw0)}
    ch = {0: c0}
    split_vals: set[int] = set()
    flags, nchw = [], []
    for kind, src, dst, cout, k, stride, padding in layers:
        choice = "grouped"
        if kind in ("conv", "avgpool") and src in hw:
            H, W = hw[src]
            hw[dst] = ((H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1)
            if kind == "conv":
                ch[dst] = cout
                choice = conv_layout(mode, n, ch.get(src), cout, k, stride, padding, (H, W), B, dtype, device,
                                     shared and src == 0)
            else:
                ch[dst] = ch.get(src)
                choice = "split" if src in split_vals else "grouped"
        if choice == "split":
            split_vals.add(dst)
        flags.append(choice == "split")
        nchw.append(choice == "nchw")
    blocks, i = [], 0
    while i < len(flags):
        j = i + 1
        if flags[i]:
            while j < len(flags) and flags[j]:
                j += 1
        blocks.append(Block(i, j, flags[i], nchw[i]))
        i = j
    return blocks


def _fmt(v, spec: str, missing: str = "-") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else missing


def describe_cache(device: torch.device | str = "cpu", strict: bool = False) -> str:
    """The cache file of ``device``'s model under this torch (its path), then per key the layout, the
    verdict (:func:`status`), the medians (both layouts, the conversions between them), the rounds,
    the larger spread, the load when timed (cores
    other processes kept busy / the cores) and the key; and the other conv layout caches in the
    folder (other devices, other torch versions). ``strict``: an unreadable or corrupt file raises
    (ValueError, OSError) instead of warning."""
    t = LayoutTuner(device_name(device))
    lines = [f"{t.path}  ({t.device_name}, torch {t.torch_version})"]
    entries = t.entries(strict)
    if not entries:
        lines.append("  no choices measured yet on this device model with this torch version")
    else:
        nchw = any("nchw_ms" in e for e in entries.values())  # a column of its own where timed (CUDA)
        lines.append(f"  {'layout':8} {'decision':12} {'grouped ms':>10} {'split ms':>10} "
                     + (f"{'nchw ms':>10} " if nchw else "")
                     + f"{'switch ms':>9} {'reps':>4} {'spread':>6} {'load':>9}  key ({len(entries)} shapes)")
        for key, e in entries.items():
            spreads = [v for v in (e.get("grouped_spread"), e.get("split_spread"), e.get("nchw_spread"))
                       if isinstance(v, (int, float))]
            spread = f"{max(spreads):.1%}" if spreads else "-"
            load = f"{_fmt(e.get('load'), '.2f', '?')}/{_fmt(e.get('cpus'), 'd', '?')}" if "decision" in e else "-"
            lines.append(f"  {e['layout']:8} {status(e):12} {e['grouped_ms']:10.4g} {e['split_ms']:10.4g} "
                         + (f"{_fmt(e.get('nchw_ms'), '10.4g'):>10} " if nchw else "")
                         + f"{_fmt(e.get('switch_ms'), '9.4g'):>9} {_fmt(e.get('reps'), 'd'):>4} {spread:>6} "
                         f"{load:>9}  {key}")
    others = []
    if t.directory.is_dir():
        others = sorted(p.name for p in t.directory.glob("conv_layout-*.json") if p != t.path)
    if others:
        lines.append(f"other conv layout caches in {t.directory}: " + ", ".join(others))
    return "\n".join(lines)


def print_cache(device: torch.device | str = "cpu") -> None:
    """Prints :func:`describe_cache` (for BENCHMARKS notes: which layout each measured shape got)."""
    print(describe_cache(device))


def cache_files(directory: str | os.PathLike | None = None) -> list[Path]:
    """The conv layout cache files in ``directory`` (the cache folder setting unless given), sorted."""
    d = Path(directory) if directory is not None else settings.cache_dir()
    return sorted(d.glob("conv_layout-*.json")) if d.is_dir() else []


def clear_caches(directory: str | os.PathLike | None = None) -> list[Path]:
    """Delete every conv layout cache file in ``directory`` (the cache folder setting unless given;
    every device model and torch version), under the folder's lock; returns the files deleted. The
    choices this process's tuners already made stay as they are."""
    d = Path(directory) if directory is not None else settings.cache_dir()
    if not d.is_dir():
        return []
    removed = []
    with storage.locked(d):
        for p in cache_files(d):
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(p)
    return removed


def to_split(v, B: int) -> list[torch.Tensor]:
    """B (N, C, H, W) channels-last tensors from a grouped (N, B*C, H, W) tensor (or as given)."""
    if isinstance(v, list):
        return v
    C = v.shape[1] // B
    return [v[:, b * C:(b + 1) * C].contiguous(memory_format=CL) for b in range(B)]


def to_grouped(v) -> torch.Tensor:
    """The grouped (N, B*C, H, W) channels-last tensor of a split list (or as given)."""
    if isinstance(v, list):
        return torch.cat(v, 1).contiguous(memory_format=CL)
    return v


class _FlattenGrouped(torch.autograd.Function):
    """(N, B*C, H, W) -> (B, N, C*H*W) in one copy, whose gradient comes back channels-last.

    Autograd's own backward of the reshape would hand the previous layer an NCHW-contiguous
    gradient while its saved activation is channels-last; elementwise backward kernels (the
    activation's) over mismatched layouts run ~9x slower (measured: LeakyReLU backward of a
    (64, 512, 5, 5) tensor 1.75 ms vs 0.19 ms)."""

    @staticmethod
    def forward(ctx, v, B):
        n, bc, hh, ww = v.shape
        ctx.B, ctx.shape = B, v.shape
        # splitting the channel dim is a view in any layout: one copy in all
        return v.unflatten(1, (B, bc // B)).permute(1, 0, 2, 3, 4).reshape(B, n, -1)

    @staticmethod
    def backward(ctx, g):
        n, bc, hh, ww = ctx.shape
        B = ctx.B
        gi = torch.empty(ctx.shape, dtype=g.dtype, device=g.device, memory_format=CL)
        gi.unflatten(1, (B, bc // B)).copy_(g.reshape(B, n, bc // B, hh, ww).permute(1, 0, 2, 3, 4))
        return gi, None


def flatten(v, B: int) -> torch.Tensor:
    """(B, N, C*H*W), each network's features in its own (c, h, w) order, from either layout."""
    if isinstance(v, list):
        return torch.stack([t.reshape(t.shape[0], -1) for t in v])
    return _FlattenGrouped.apply(v, B)




__all__ = ["Block", "CACHE_FORMAT", "CLEAR_MARGIN", "CLEAR_ROUNDS", "ConvShape", "DECISIONS", "DEVIATE_MARGIN", "FINAL", "FORCED",
           "LAYOUTS", "LOAD_SLACK", "LOADED_ROUNDS", "LayoutTuner", "LoadProbe", "MAX_ATTEMPTS", "MAX_REPS", "MIN_REPS",
           "MIN_TIME_S", "NOISE_LIMIT", "SPLIT_MIN_CHANNELS", "SPLIT_MIN_PIXELS", "Timing", "cache_file_name",
           "cache_files", "candidates", "clear_caches", "conv_layout", "conv_split", "describe_cache", "device_name", "flatten", "interleave",
           "is_loaded", "judge", "plan_blocks", "print_cache", "replay_candidates", "reset_tuners", "settled", "status", "to_grouped",
           "to_split", "tuner", "use_split"]

if __name__ == "__main__":
    print_cache(*sys.argv[1:2])  # python -m netspace_fast.engine.layout [device]
