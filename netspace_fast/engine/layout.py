"""Per-layer choice between the two layouts of B networks' convolutional activations.

* grouped: ONE (N, B*C, H, W) channels-last tensor, network-major channels; a conv is ONE grouped
  call (groups = B; a shared input: ONE ordinary conv with the B networks' filters stacked).
* split: a list of B (N, C, H, W) channels-last tensors; a conv is B ordinary calls.

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
none) on random tensors of that shape: one warm-up, then up to :data:`MAX_REPS` timed repetitions
each, alternating, fewer when one repetition is slow (about :data:`TUNE_BUDGET_S` seconds of timed
work per shape at most), the median of each. The faster layout wins (a tie: grouped). The data
comes from a private ``torch.Generator`` (the global RNG state is untouched), under its own grad
mode (the caller's autograd graph and ``no_grad`` / ``inference_mode`` / autocast state are
untouched); the caller's tensors are never used. A shape whose timing fails (out of memory, an
unsupported dtype) gets the static rule, in memory only, with a warning.

The key of a choice (:meth:`ConvShape.key`) is ``cin=.. cout=.. k=.. stride=.. padding=.. in=HxW
B=.. N=.. dtype=.. device=..`` plus ``threads=T`` on CPUs (torch's intra-op threads: the crossover
moves with them) and ``shared`` for a conv of an input shared by all networks. Choices are cached
on disk per device model and torch version, one JSON file per pair::

    <cache dir>/conv_layout-<device model>-torch<version>.json

(the device model: the CPU's ``model name`` from /proc/cpuinfo and a digest of its flags, else
``platform.processor()``; a GPU's ``torch.cuda.get_device_name``; both as file-name slugs), in the
folder :func:`netspace_fast.settings.cache_dir` names (``NETSPACE_CACHE_DIR``, else
``$XDG_CACHE_HOME/netspace_fast`` or ``~/.cache/netspace_fast``). The file holds, per key, the
choice and both measured times::

    {"format": 1, "device": "...", "torch": "2.14.1", "key": "...",
     "entries": {"cin=16 cout=16 k=3 ... threads=2": {"layout": "split", "grouped_ms": 75.1, "split_ms": 55.0}}}

It is written atomically (:func:`netspace_fast.storage.atomic_write_bytes`), read-modify-written
under the cache folder's lock (concurrent jobs measure a shape once and agree on it: the first
measurement on disk wins). A corrupt or unreadable file warns once and is measured again and
rewritten; an unwritable folder warns once and the choices stay in memory for the process. Each
choice is made once per key per process and then fixed (memoized in memory), so a training run
never changes layout midway, even if the file is deleted meanwhile; once cached, every later run
makes the same choices (reproducible training). Under ``torch.compile`` the choice is a constant
of the graph (made, and if need be measured, while tracing).

``NETSPACE_CONV_LAYOUT`` (:func:`netspace_fast.settings.conv_layout`) overrides it:

* ``auto`` (default): measured (tuned, cached) on the device that runs it, CPU or GPU (on CUDA
  timed with ``torch.cuda.synchronize``: cuDNN's grouped kernels against B ordinary calls; the
  GPU program measures a shape before any CUDA graph of it is captured, so capture never times);
* ``tune``: the same as ``auto`` (an older name, kept);
* ``rule``: the static threshold rule (:func:`use_split`), no timing: deterministic on any machine
  (what the test suite runs with);
* ``grouped`` / ``split``: one layout everywhere (benchmarks, A/B measurements on new machines).

The cached choices of this machine: ``python -c "from netspace_fast.engine import layout;
layout.print_cache()"`` (the file's path, then per key the choice and both times).
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

#: the format number of the cache files (a file of another format is measured again and rewritten)
CACHE_FORMAT = 1
#: timed repetitions of each layout per shape, at most (after one warm-up each)
MAX_REPS = 5
#: seconds the timed repetitions of one shape may take together, about (at least one repetition runs)
TUNE_BUDGET_S = 1.0

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
    if choice in ("grouped", "split"):
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


# ---------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        sync = getattr(getattr(torch, device.type, None), "synchronize", None)
        if callable(sync):
            sync()


def _time_layouts(shape: ConvShape) -> tuple[float, float]:
    """Milliseconds (grouped, split) of one forward + backward of the conv ``shape`` describes, each
    the median of its timed repetitions (module docstring). Replaceable (tests inject a fake)."""
    device = torch.device(shape.device)
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

        def grouped() -> None:
            y = F.conv2d(x, w, b, shape.stride, shape.padding, 1, groups)
            torch.autograd.grad(y, g_inputs, gy)

        def split() -> None:
            ys = [F.conv2d(xs[i], ws[i], bs[i], shape.stride, shape.padding) for i in range(B)]
            torch.autograd.grad(ys, s_inputs, gys)

        def timed(fn) -> float:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            return time.perf_counter() - t0

        warm = timed(grouped) + timed(split)
        reps = max(1, min(MAX_REPS, int(TUNE_BUDGET_S / max(warm, 1e-9))))
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(reps):  # alternating: a slow phase of the machine hits both
            times[0].append(timed(grouped))
            times[1].append(timed(split))
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


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
        if not isinstance(e, dict) or e.get("layout") not in ("grouped", "split"):
            raise ValueError(f"entry {key!r}: expected {{'layout': 'grouped' or 'split', ...}}, got {e!r}")
        _finite_ms(f"entry {key!r} grouped_ms", e.get("grouped_ms"))
        _finite_ms(f"entry {key!r} split_ms", e.get("split_ms"))
    return entries


Timer = Callable[[ConvShape], "tuple[float, float]"]


class LayoutTuner:
    """Measured layout choices of one device model under one torch version (module docstring).

    ``device_name``: the model (:func:`device_name`), in the file name; ``torch_version``: torch's
    unless given; ``directory``: the cache folder (:func:`netspace_fast.settings.cache_dir` at
    construction unless given); ``timer``: ``timer(shape) -> (grouped_ms, split_ms)``, the module's
    :func:`_time_layouts` (looked up at each use) unless given. ``choices`` is the in-memory memo
    (key -> "grouped" or "split"): a key in it is never decided again by this tuner."""

    def __init__(self, device_name: str, *, torch_version: str | None = None,
                 directory: str | os.PathLike | None = None, timer: Timer | None = None) -> None:
        if not isinstance(device_name, str) or not device_name.strip():
            raise ValueError(f"device_name: expected a non-empty str, got {device_name!r}")
        if torch_version is not None and (not isinstance(torch_version, str) or not torch_version.strip()):
            raise ValueError(f"torch_version: expected a non-empty str or None, got {torch_version!r}")
        if timer is not None and not callable(timer):
            raise TypeError(f"timer: expected a callable(shape) -> (grouped_ms, split_ms) or None, got "
                            f"{type(timer).__name__}")
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
        """"grouped" or "split" for ``shape``: the memo, else the cache file, else measured now
        (and written to the file)."""
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

    def entries(self) -> dict[str, dict]:
        """The cache file's entries (empty when it is missing or unreadable, with the warning)."""
        return self._read()

    # -- internals

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _read(self) -> dict[str, dict]:
        try:
            raw = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # nothing cached (yet); an unusable folder: _write warns
            return {}
        except OSError as e:
            self._warn_once("read", f"netspace_fast: cannot read the conv layout cache {str(self.path)!r} ({e}); "
                                    f"measuring again")
            return {}
        try:
            return dict(_entries_of(json.loads(raw.decode("utf-8"))))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError included
            self._warn_once("corrupt", f"netspace_fast: the conv layout cache {str(self.path)!r} is corrupt ({e}); "
                                       f"measuring again and rewriting it")
            return {}

    def _write(self, entries: dict[str, dict]) -> None:
        if not self._writable:
            return
        data = {"what": "convolution layouts measured on this device (netspace_fast.engine.layout)",
                "format": CACHE_FORMAT, "device": self.device_name, "torch": self.torch_version, "key": KEY_DOC,
                "entries": dict(sorted(entries.items()))}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            storage.atomic_write_bytes(self.path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
        except OSError as e:
            self._writable = False
            self._warn_once("write", f"netspace_fast: cannot write the conv layout cache {str(self.path)!r} ({e}); "
                                     f"keeping the measured choices in memory for this process")

    def _measure(self, shape: ConvShape) -> tuple[float, float]:
        timer = self.timer if self.timer is not None else _time_layouts
        got = timer(shape)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise ValueError(f"the timer returned {got!r}, expected (grouped_ms, split_ms)")
        return _finite_ms("grouped_ms", got[0]), _finite_ms("split_ms", got[1])

    def _decide(self, shape: ConvShape, key: str) -> str:
        with contextlib.ExitStack() as stack:
            try:  # one process measures a shape at a time: the others then read its result
                self.directory.mkdir(parents=True, exist_ok=True)
                stack.enter_context(storage.locked(self.directory))
            except OSError:
                pass  # no lock where the folder cannot be made or opened; _write warns
            entries = self._read()
            if key in entries:
                return entries[key]["layout"]
            try:
                grouped_ms, split_ms = self._measure(shape)
            except Exception as e:  # timing must never stop a run
                oh, ow = shape.out_hw
                self._warn_once("measure", f"netspace_fast: timing the conv layouts of {key} failed "
                                           f"({type(e).__name__}: {e}); using the static rule for such shapes "
                                           f"in this process")
                return "split" if _static_rule(shape.n, shape.cout, oh * ow, shape.device) else "grouped"
            choice = "split" if split_ms < grouped_ms else "grouped"
            entries[key] = {"layout": choice, "grouped_ms": float(f"{grouped_ms:.6g}"),
                            "split_ms": float(f"{split_ms:.6g}")}
            self._write(entries)
            return choice


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
def _tuned_split(cin: int, cout: int, k: int, stride: int, padding: int, h: int, w: int, B: int, n: int,
                 dtype: torch.dtype, device: str, shared: bool) -> bool:
    """The tuner's choice; a constant of the graph under torch.compile (made while tracing)."""
    shape = ConvShape.make(cin, cout, k, stride, padding, (h, w), B, n, dtype, device, shared)
    return tuner(shape.device).split(shape)


def conv_split(mode: str, n: int, cin: int | None, cout: int, k: int, stride: int, padding: int,
               hw: tuple[int, int], B: int | None, dtype: torch.dtype, device, shared: bool = False) -> bool:
    """Whether one conv runs split under layout ``mode`` (a value of ``NETSPACE_CONV_LAYOUT``);
    ``hw`` is its input's spatial size."""
    if mode in ("grouped", "split"):
        return mode == "split"
    dev = torch.device(device)
    oh = (hw[0] + 2 * padding - k) // stride + 1
    ow = (hw[1] + 2 * padding - k) // stride + 1
    if mode == "rule":
        return use_split(n, cout, oh * ow, dev)
    if mode not in ("auto", "tune"):
        raise ValueError(f"mode: expected one of {LAYOUTS}, got {mode!r}")
    if B is None or cin is None:
        raise ValueError(f"B and the input's channels are needed to time layouts (NETSPACE_CONV_LAYOUT={mode}), "
                         f"got B={B!r}, cin={cin!r}")
    if n < 1 or B < 1 or oh < 1 or ow < 1:  # nothing to run
        return False
    return _tuned_split(int(cin), int(cout), int(k), int(stride), int(padding), int(hw[0]), int(hw[1]), int(B),
                        int(n), dtype, str(dev), bool(shared))


def plan_blocks(layers, n: int, hw0: tuple[int, int], device, B: int | None = None, c0: int | None = None,
                dtype: torch.dtype = torch.float32, shared: bool = False) -> list[tuple[int, int, bool]]:
    """Cut a network into blocks ``(start, stop, split)``.

    ``layers``: per layer ``(kind, src, dst, cout, k, stride, padding)`` (value ids as in
    :class:`netspace_fast.archs.LayerSpec`; for an "avgpool" k and stride are the pool's); ``n``
    images per network of spatial size ``hw0`` and ``c0`` channels, ``B`` networks, ``dtype`` and
    ``device`` the activations'; ``shared``: one input (value 0) for all networks. Each conv's
    layout comes from ``NETSPACE_CONV_LAYOUT`` (module docstring: the tuner, the static rule
    :func:`use_split`, or one layout forced); the tuner needs ``B`` and ``c0``. A split block is a
    maximal run of convs sent per network, plus the pools between them: callers run it network by
    network (each network's activations flow from layer to layer while still in cache: ResNet8's
    forward, B=8, N=128, 98 ms against 126 ms layer by layer). Every other layer is a block of its
    own, run for all networks at once."""
    mode = settings.conv_layout()
    hw = {0: tuple(hw0)}
    ch = {0: c0}
    split_vals: set[int] = set()
    flags = []
    for kind, src, dst, cout, k, stride, padding in layers:
        flag = False
        if kind in ("conv", "avgpool") and src in hw:
            H, W = hw[src]
            hw[dst] = ((H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1)
            if kind == "conv":
                ch[dst] = cout
                flag = conv_split(mode, n, ch.get(src), cout, k, stride, padding, (H, W), B, dtype, device,
                                  shared and src == 0)
            else:
                ch[dst] = ch.get(src)
                flag = src in split_vals
        if flag:
            split_vals.add(dst)
        flags.append(flag)
    blocks, i = [], 0
    while i < len(flags):
        j = i + 1
        if flags[i]:
            while j < len(flags) and flags[j]:
                j += 1
        blocks.append((i, j, flags[i]))
        i = j
    return blocks


def describe_cache(device: torch.device | str = "cpu") -> str:
    """The cache file of ``device``'s model under this torch (its path), then per key the choice and
    both times; and the other conv layout caches in the folder (other devices, other torch versions)."""
    t = LayoutTuner(device_name(device))
    lines = [f"{t.path}  ({t.device_name}, torch {t.torch_version})"]
    if not t.path.exists():
        lines.append("  no choices measured yet on this device model with this torch version")
    else:
        entries = t.entries()
        lines.append(f"  {'layout':8} {'grouped ms':>11} {'split ms':>11}  key ({len(entries)} shapes)")
        for key, e in entries.items():
            lines.append(f"  {e['layout']:8} {e['grouped_ms']:11.4g} {e['split_ms']:11.4g}  {key}")
    others = []
    if t.directory.is_dir():
        others = sorted(p.name for p in t.directory.glob("conv_layout-*.json") if p != t.path)
    if others:
        lines.append(f"other conv layout caches in {t.directory}: " + ", ".join(others))
    return "\n".join(lines)


def print_cache(device: torch.device | str = "cpu") -> None:
    """Prints :func:`describe_cache` (for BENCHMARKS notes: which layout each measured shape got)."""
    print(describe_cache(device))


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




__all__ = ["CACHE_FORMAT", "ConvShape", "LAYOUTS", "LayoutTuner", "MAX_REPS", "SPLIT_MIN_CHANNELS", "SPLIT_MIN_PIXELS",
           "TUNE_BUDGET_S", "cache_file_name", "conv_split", "describe_cache", "device_name", "flatten", "plan_blocks",
           "print_cache", "reset_tuners", "to_grouped", "to_split", "tuner", "use_split"]

if __name__ == "__main__":
    print_cache(*sys.argv[1:2])  # python -m netspace_fast.engine.layout [device]
