"""`netspace demo` (`make demo`): the NetSpace story end to end on the embedded digits data, on CPU, in minutes;
``--dataset fashion-mnist --root R`` tells the same story on real images (Fashion-MNIST, zoo and space
presets ``fmnist-single``).

Stages, each timed and written into ``OUT/report.md`` (every number in it is measured by this run):

1. ``selfcheck``: the PRep core (parameter counts against the paper's Table I, BN folding, packing,
   batched evaluation from PReps), one network per architecture.
2. ``zoo``: a Single-Architecture zoo of LeNetLike snapshots trained in batched jobs (zoo preset
   ``digits-demo``).
3. ``space``: NetSpace Single-Architecture trained on it (space preset ``digits-demo``).
4. ``evaluate``: every test network encoded, decoded and evaluated next to its input.
5. ``interpolate``: embedding vs raw-weight interpolation between the weakest test network and the
   strongest of another training run.
6. ``optimize``: latent optimization from a random embedding (decoder frozen, distillation).
7. ``images``: input and decoded PReps as images.
8. ``audit``: the memorization audit (``netspace audit``): are the decoded networks copies of
   training networks?

A second run reuses what the first finished (the zoo, the trained space: both resume where they
stopped) unless ``fresh``; the cheap stages after them are run again. Deterministic given the seed
on one machine (same thread count).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .monitor import log

__all__ = ["DEMO_DATASETS", "DemoSettings", "KEEPS_SLOPE", "KEEPS_SPEARMAN", "SETTINGS", "demo_settings",
           "keeps_differences", "run_demo", "summary_table"]


class DemoSettings:
    """What one demo size runs: zoo and space presets and the exploration budgets."""

    def __init__(self, zoo_preset: str, space_preset: str, interp_steps: int, opt_steps: int, opt_eval_every: int,
                 selfcheck_width: int, audit_steps: int = 5, audit_images: int = 2000, opt_lr: float = 1e-4) -> None:
        self.zoo_preset, self.space_preset = zoo_preset, space_preset
        self.interp_steps, self.opt_steps, self.opt_eval_every = interp_steps, opt_steps, opt_eval_every
        self.opt_lr = opt_lr
        self.selfcheck_width = selfcheck_width
        self.audit_steps, self.audit_images = audit_steps, audit_images


SETTINGS = {
    # latent optimization: 1,000 Adam steps at lr 1e-2 (measured on seed 0's space: at the CLI's 1e-4 a random
    # embedding hardly moves, 86.6% test accuracy at step 0, 86.9% after 1,000 steps; at 1e-3 91.6%; at 1e-2
    # 93.0% after 200 steps, 92.8% at 1,000)
    "full": DemoSettings("digits-demo", "digits-demo", interp_steps=100, opt_steps=1000, opt_eval_every=50,
                         selfcheck_width=10_000, opt_lr=1e-2),
    # CI: every stage at its smallest (seconds); the numbers mean nothing
    "smoke": DemoSettings("digits-demo-smoke", "digits-tiny-single", interp_steps=5, opt_steps=4, opt_eval_every=2,
                          selfcheck_width=1024, audit_steps=2, audit_images=64),
}
# the demo on real images: the Fashion-MNIST Single presets (zoo ~6 min, space ~20 min on 2 cores: 600 epochs at
# T = 1, the recipe whose decoded networks keep their inputs' accuracies, BENCHMARKS.md); latent
# optimization 1,000 steps (a step costs ~0.17 s on 32x32 images, 20x a digits step; measured: 1,000 steps move
# a random embedding's decoded network by ~0.1 point, so 3,000 would add 6 minutes and nothing to the story)
_FMNIST_SETTINGS = {
    "full": DemoSettings("fmnist-single", "fmnist-single", interp_steps=100, opt_steps=1000, opt_eval_every=100,
                         selfcheck_width=10_000),
    "smoke": DemoSettings("fmnist-demo-smoke", "fmnist-tiny-single", interp_steps=5, opt_steps=4, opt_eval_every=2,
                          selfcheck_width=1024, audit_steps=2, audit_images=64),
}
DEMO_DATASETS = {"digits": ("the embedded digits data", SETTINGS),
                 "fashion-mnist": ("Fashion-MNIST", _FMNIST_SETTINGS)}  #: dataset -> (its name in the report, sizes)


def demo_settings(dataset: str, size: str) -> DemoSettings:
    """The presets and budgets of the demo on ``dataset`` at ``size``; a ValueError names the valid ones."""
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"dataset: the demo runs on {', '.join(DEMO_DATASETS)}; got {dataset!r}")
    sizes = DEMO_DATASETS[dataset][1]
    if size not in sizes:
        raise ValueError(f"size: expected one of {sorted(sizes)}, got {size!r}")
    return sizes[size]


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{model}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads{gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


#: what a demo writes into its folder (``--fresh`` deletes a folder holding nothing else)
DEMO_ENTRIES = ("selfcheck", "zoo", "space", "evaluate.csv", "evaluate.png", "interpolate", "optimize",
                "prep_images.png", "audit", "summary.json", "report.md")


def _check_demo_folder(out: Path) -> None:
    """A ValueError unless ``out`` holds only what a demo writes (it is about to be deleted)."""
    from .storage import TMP_PREFIX

    if not out.is_dir():
        raise ValueError(f"out: {str(out)!r} exists and is not a folder")
    other = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES and not p.name.startswith(TMP_PREFIX))
    if other:
        shown = ", ".join(repr(n) for n in other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise ValueError(f"fresh: --fresh deletes the demo folder {str(out)!r} first, but it holds what a demo does "
                         f"not write ({shown}); give a new --out, or remove the folder yourself")


def run_demo(out: str | os.PathLike = "runs/demo", *, seed: int = 0, fresh: bool = False, device: str = "cpu",
             progress: bool = True, size: str = "full", dataset: str = "digits", root=None,
             download: bool = False) -> dict:
    """Run every stage into ``out``; returns the summary (also written as ``summary.json``).
    ``dataset``: ``"digits"`` (embedded) or ``"fashion-mnist"`` (read from ``root``; ``download``
    fetches it there first)."""
    from . import archs
    from .explore import interpolate, optimize, visualize
    from .explore.audit import audit, summary_lines as audit_summary_lines
    from .explore.interpolate import summary_lines
    from .selfcheck import run_checks
    from .space import Space
    from .space.evaluate import summarize
    from .space.train import train_space
    from .outputs import check_output
    from .storage import atomic_write_bytes, strict_json
    from .zoo.format import Zoo
    from .zoo.job import train_zoo

    from . import data

    s = demo_settings(dataset, size)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if dataset != "digits":
        data.fetch(dataset, root, download)
        data.tensors(dataset, "test", root=root, seed=seed)  # missing or bad files: one line, before any work
        root = str(Path(root).expanduser().resolve())
    out = check_output(out, folder=True, sub="demo")  # never a run or a zoo folder
    if fresh and out.exists():
        _check_demo_folder(out)  # --fresh deletes only what a demo wrote
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    zoo_dir, run_dir = out / "zoo", out / "space"
    times: dict[str, float] = {}
    reused: dict[str, bool] = {}
    summary: dict = {"seed": seed, "size": size, "dataset": dataset, "machine": _machine(), "device": device,
                     "zoo_preset": s.zoo_preset, "space_preset": s.space_preset}
    t_all = time.perf_counter()

    log(progress, "[1/8] PRep core self-check")
    t0 = time.perf_counter()
    check_text, check_ok, check_png = run_checks(out / "selfcheck", dataset, 1, s.selfcheck_width)
    times["selfcheck"] = time.perf_counter() - t0
    if not check_ok:
        raise RuntimeError(f"the PRep core self-check failed:\n{check_text}")

    log(progress, f"[2/8] zoo (preset {s.zoo_preset}) -> {zoo_dir}")
    t0 = time.perf_counter()
    reused["zoo"] = _zoo_complete(zoo_dir, s.zoo_preset)
    with _fresh_hint(zoo_dir / "manifest.json", out):
        train_zoo(zoo_dir, s.zoo_preset, root=root, seed=seed, device=device, progress=progress)
    times["zoo"] = time.perf_counter() - t0
    zoo = Zoo.open(zoo_dir)
    zoo_rows = {sp: [e for e in zoo.instances(sp)] for sp in ("train", "val", "test")}

    log(progress, f"[3/8] NetSpace Single-Architecture (preset {s.space_preset}) -> {run_dir}")
    t0 = time.perf_counter()
    reused["space"] = _run_complete(run_dir)
    with _fresh_hint(run_dir / "run.json", out):
        train_space(run_dir, zoo_dir, "single", s.space_preset, seed=seed, device=device, root=root,
                    progress=progress)
    times["space"] = time.perf_counter() - t0
    space = Space.load(run_dir, device=device)

    log(progress, "[4/8] decoded vs input networks (test split)")
    t0 = time.perf_counter()
    rows = space.evaluate("test")
    stats = summarize(rows)
    _write_csv(out / "evaluate.csv", rows)
    scatter_png = _plot_scatter(rows, stats, out / "evaluate.png")
    times["evaluate"] = time.perf_counter() - t0

    weakest, strongest = _interpolation_ends(rows, {e["id"]: e.get("seed") for e in zoo_rows["test"]})
    log(progress, f"[5/8] interpolation {weakest} -> {strongest} ({s.interp_steps} steps)")
    t0 = time.perf_counter()
    it = interpolate(run_dir, weakest, strongest, steps=s.interp_steps, out=out / "interpolate", device=device,
                     progress=progress)
    e_acc = [r["embedding_acc"] for r in it.rows]
    w_acc = [r["weights_acc"] for r in it.rows]
    interp = {"a": weakest, "b": strongest, "steps": s.interp_steps, "a_acc": it.input_acc[weakest],
              "b_acc": it.input_acc[strongest], "min_embedding_acc": min(e_acc), "mean_embedding_acc": _mean(e_acc),
              "min_weight_acc": min(w_acc), "mean_weight_acc": _mean(w_acc), "lines": summary_lines(it),
              "csv": os.path.relpath(it.files["csv"], out), "png": os.path.relpath(it.files["png"], out)}
    times["interpolate"] = time.perf_counter() - t0

    log(progress, f"[6/8] latent optimization from a random embedding ({s.opt_steps} steps)")
    t0 = time.perf_counter()
    o = optimize(run_dir, start="random", steps=s.opt_steps, lr=s.opt_lr, eval_every=s.opt_eval_every, seed=seed,
                 out=out / "optimize", device=device, progress=progress)
    opt = {"steps": s.opt_steps, "lr": s.opt_lr, "teacher": o.teacher, "first": o.rows[0], "best": o.best,
           "last": o.rows[-1], "best_acc": o.best["test_acc"], "csv": os.path.relpath(o.files["csv"], out),
           "png": os.path.relpath(o.files["png"], out), "network": os.path.relpath(o.files["network"], out)}
    times["optimize"] = time.perf_counter() - t0

    log(progress, "[7/8] PRep images")
    t0 = time.perf_counter()
    image = visualize(run_dir, strongest, out / "prep_images.png", device=device)
    times["images"] = time.perf_counter() - t0

    log(progress, "[8/8] memorization audit")
    t0 = time.perf_counter()
    au = audit(run_dir, out=out / "audit", steps=s.audit_steps, embeddings=[o.files["embedding"]],
               images=s.audit_images, device=device)
    audit_summary = {"lines": audit_summary_lines(au), "kinds": au.summary,
                     "csv": os.path.relpath(au.files["csv"], out), "png": os.path.relpath(au.files["png"], out)}
    times["audit"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_all

    spec = archs.spec("lenetlike", dataset)
    summary.update({
        "times_s": times, "reused": reused,
        "zoo": {sp: {"networks": len(v), "min_test_acc": min((e["test_acc"] for e in v), default=None),
                     "max_test_acc": max((e["test_acc"] for e in v), default=None)} for sp, v in zoo_rows.items()},
        "num_params": spec.num_params,
        "evaluate": {"networks": stats["networks"], "mean_abs_gap": stats.get("mean_abs_gap"),
                     "spearman": stats.get("spearman"), "slope": stats.get("slope"),
                     "intercept": stats.get("intercept"), "span_ratio": stats.get("span_ratio"),
                     "mean_input_acc": _mean(r["input_acc"] for r in rows),
                     "mean_decoded_acc": stats.get("mean_decoded_acc"), "keeps_differences": keeps_differences(stats),
                     "png": os.path.relpath(scatter_png, out)},
        "interpolate": interp, "optimize": opt, "audit": audit_summary, "images": {k: (os.path.relpath(v, out) if k == "path" else v) for k, v in image.items()},
        "selfcheck_png": None if check_png is None else os.path.relpath(check_png, out),
    })
    atomic_write_bytes(out / "summary.json", (json.dumps(strict_json(summary), indent=1, sort_keys=True, default=str) + "\n")
                       .encode())
    atomic_write_bytes(out / "report.md", _report(summary, rows, check_text).encode())
    return summary


def _interpolation_ends(rows: list[dict], run_of: dict) -> tuple[str, str]:
    """The weakest test network and the strongest test network of another training run (``run_of``: network
    -> its run's seed) where there is one: two runs' raw weights are not linearly connected, one run's
    snapshots are (their straight line is close to the training path between them)."""
    test = sorted(rows, key=lambda r: r["input_acc"])
    weakest = test[0]["network"]
    others = [r for r in test if run_of.get(r["network"]) != run_of.get(weakest)] or test
    return weakest, others[-1]["network"]


@contextmanager
def _fresh_hint(owned: Path, out: Path) -> Iterator[None]:
    """A ValueError from resuming what an earlier demo left (``owned``: its zoo's manifest or its run's
    record; e.g. a zoo of another seed or of the demo's earlier recipe, which is not resumed) also says
    how to start over."""
    earlier = owned.exists()
    try:
        yield
    except ValueError as e:
        if not earlier:
            raise
        raise ValueError(f"{e}; {str(out)!r} holds an earlier demo: `netspace demo --fresh --out {out}` starts "
                         f"over") from e


def _zoo_complete(zoo_dir: Path, preset: str) -> bool:
    from .zoo.presets import PRESETS

    p = PRESETS[preset]
    try:
        from .zoo.format import Zoo

        n = len(Zoo.open(zoo_dir).instances())
    except (OSError, ValueError):
        return False
    want = sum(p.runs * len(p.snapshots) if p.protocol == "single" else a + b + c for _, a, b, c in p.archs)
    return n == want


def _run_complete(run_dir: Path) -> bool:
    try:
        cfg = json.loads((run_dir / "run.json").read_text())
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("epoch") == cfg.get("config", {}).get("epochs")


def _mean(values) -> float | None:
    v = list(values)
    return sum(v) / len(v) if v else None


def _write_csv(path: Path, rows: list[dict]) -> None:
    from io import StringIO

    from .storage import atomic_write_bytes

    buf = StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["network"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _report(s: dict, rows: list[dict], check_text: str) -> str:
    t, ev, it, op, im = s["times_s"], s["evaluate"], s["interpolate"], s["optimize"], s["images"]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [
        "# netspace_fast demo report", "",
        f"Written {stamp} by `netspace demo` (seed {s['seed']}, size {s['size']}, device {s['device']}).",
        f"Machine: {s['machine']}.", "",
        "Every number below was measured by this run.", "",
        "## Stages", "",
        "| stage | seconds | note |", "|---|---:|---|",
    ]
    notes = {"zoo": "reused (resumed a finished zoo)" if s["reused"].get("zoo") else f"preset {s['zoo_preset']}",
             "space": "reused (resumed a finished run)" if s["reused"].get("space") else f"preset {s['space_preset']}"}
    for k in ("selfcheck", "zoo", "space", "evaluate", "interpolate", "optimize", "images", "audit", "total"):
        lines.append(f"| {k} | {t[k]:.1f} | {notes.get(k, '')} |")
    z = s["zoo"]
    lines += ["", "## The zoo", "",
              f"LeNetLike ({s['num_params']:,} parameters, BN-free) snapshots of Adam runs on "
              f"{DEMO_DATASETS[s.get('dataset', 'digits')][0]} "
              f"(zoo preset `{s['zoo_preset']}`).", "",
              "| split | networks | test accuracy min | max |", "|---|---:|---:|---:|"]
    for sp in ("train", "val", "test"):
        lo, hi = z[sp]["min_test_acc"], z[sp]["max_test_acc"]
        lines.append(f"| {sp} | {z[sp]['networks']} | {_pct(lo) if lo is not None else '-'} | "
                     f"{_pct(hi) if hi is not None else '-'} |")
    lines += ["", "## Decoded vs input networks (test split)", "",
              f"Does the space keep its inputs' differences? Over {ev['networks']} test networks, each encoded, "
              f"decoded and evaluated next to its input: least-squares slope of decoded on input accuracy "
              f"**{_num(ev.get('slope'), 2)}** (1: decoded networks track their inputs, 0: one network for all; "
              f"span ratio {_num(ev.get('span_ratio'), 2)}), Spearman correlation of input and decoded accuracy "
              f"**{_num(ev.get('spearman'), 3)}** (1: the inputs' ranking kept), mean absolute accuracy gap "
              f"**{100 * ev['mean_abs_gap']:.2f} points**; mean input accuracy {_pct(ev['mean_input_acc'])}, mean "
              f"decoded {_pct(ev['mean_decoded_acc'])}.", "",
              _eval_verdict(rows, ev), "", f"![decoded vs input accuracy]({ev['png']})", "",
              "| network | input | decoded | gap (points) |", "|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["input_acc"]):
        lines.append(f"| {r['network']} | {_pct(r['input_acc'])} | {_pct(r['decoded_acc'])} | "
                     f"{100 * (r['decoded_acc'] - r['input_acc']):+.1f} |")
    lines += ["", "CSV: `evaluate.csv`.", "", "## Interpolation", "",
              f"{it['steps']} evenly spaced embeddings between the weakest test network `{it['a']}` "
              f"({_pct(it['a_acc'])}) and the strongest of another training run `{it['b']}` "
              f"({_pct(it['b_acc'])}), each decoded and "
              f"evaluated; next to it, linear interpolation of the two input PReps (raw weights).", "",
              "| path | min accuracy | mean accuracy |", "|---|---:|---:|",
              f"| decoded embeddings | {_pct(it['min_embedding_acc'])} | {_pct(it['mean_embedding_acc'])} |",
              f"| raw weights | {_pct(it['min_weight_acc'])} | {_pct(it['mean_weight_acc'])} |", "",
              _interp_verdict(it), "",
              f"CSV: `{it['csv']}`.", "", f"![interpolation]({it['png']})", "",
              "## Latent optimization from a random embedding", "",
              f"Decoder frozen; a random embedding (normal, with the per-dimension mean and std of the training "
              f"networks' embeddings) optimized with Adam (lr {op['lr']:g}, {op['steps']} steps of 128 training "
              f"images) to distill the teacher `{op['teacher']}` (the training network best on validation). "
              f"The best step is chosen on validation accuracy.", "",
              "| | step | validation accuracy | test accuracy |", "|---|---:|---:|---:|",
              f"| start | {op['first']['step']} | {_pct(op['first']['val_acc'])} | {_pct(op['first']['test_acc'])} |",
              f"| best | {op['best']['step']} | {_pct(op['best']['val_acc'])} | {_pct(op['best']['test_acc'])} |",
              f"| last | {op['last']['step']} | {_pct(op['last']['val_acc'])} | {_pct(op['last']['test_acc'])} |", "",
              _opt_verdict(op), "",
              f"CSV: `{op['csv']}`; the best network as a plain state dict: `{op['network']}` "
              f"(`netspace_fast.explore.load_network`).", "", f"![latent optimization]({op['png']})", "",
              "## PRep images", "",
              f"Input (left, test accuracy {_pct(im['input_acc'])}) and decoded (right, {_pct(im['decoded_acc'])}) "
              f"PRep of `{it['b']}`: parameters in a near-square layout, one colour range for both, clipped to the "
              f"1st-99th percentiles.", "", f"![PRep images]({im['path']})", "",
              "## Memorization audit", "",
              "Are the generated networks copies of training networks? For each decoded test network, an "
              "interpolation between the weakest and the strongest, and the latent optimization's result: the "
              "training network whose test predictions agree most with its own, and the L2 distance to the nearest "
              "training PRep as a fraction of the median distance between two training networks (0: a copy). "
              "Baselines: each input plus Gaussian noise of the decoded network's distance, and the average of the "
              "two training networks nearest to the input (`netspace audit`).", "",
              *s["audit"]["lines"], "", f"CSV: `{s['audit']['csv']}`.", "", f"![audit]({s['audit']['png']})", "",
              "## PRep core self-check", "", "```", check_text, "```", ""]
    return "\n".join(lines)


#: the slope and Spearman correlation (decoded on input test accuracy) from which the report says that the
#: space keeps its inputs' differences
KEEPS_SLOPE, KEEPS_SPEARMAN = 0.6, 0.9


def keeps_differences(ev: dict) -> bool:
    """Whether decoded networks keep their inputs' differences: slope >= :data:`KEEPS_SLOPE` and Spearman >=
    :data:`KEEPS_SPEARMAN` (False when either is undefined)."""
    slope, rho = ev.get("slope"), ev.get("spearman")
    return slope is not None and rho is not None and slope >= KEEPS_SLOPE and rho >= KEEPS_SPEARMAN


def _num(v, digits: int) -> str:
    """A figure of the report; 'undefined' for None or NaN (e.g. Spearman when every decoded network is alike)."""
    return "undefined" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _eval_verdict(rows: list[dict], ev: dict) -> str:
    """How the decoded accuracies spread compared with the inputs' (whatever they show)."""
    if not rows:
        return ""
    i = [r["input_acc"] for r in rows]
    d = [r["decoded_acc"] for r in rows]
    text = (f"Input accuracies span {_pct(min(i))}-{_pct(max(i))} ({100 * (max(i) - min(i)):.1f} points), decoded "
            f"ones {_pct(min(d))}-{_pct(max(d))} ({100 * (max(d) - min(d)):.1f} points).")
    if keeps_differences(ev):
        text += (f" The space keeps its inputs' differences (slope >= {KEEPS_SLOPE}, Spearman >= {KEEPS_SPEARMAN}): "
                 "a stronger input decodes to a stronger network, as the scatter below shows.")
    elif max(d) - min(d) < 0.5 * (max(i) - min(i)):
        text += (" The decoded networks are closer to each other than their inputs are (the space pulls them "
                 "towards one typical network), so the inputs' differences are only partly kept.")
    else:
        text += (f" The space keeps its inputs' differences only in part (slope below {KEEPS_SLOPE} or Spearman "
                 f"below {KEEPS_SPEARMAN}).")
    return text


def _plot_scatter(rows: list[dict], stats: dict, path: Path) -> Path:
    """Decoded against input test accuracy, one point per test network, with the diagonal (decoded = input) and
    the least-squares line whose slope the report states."""
    from .explore.common import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5))
    x = [r["input_acc"] for r in rows]
    y = [r["decoded_acc"] for r in rows]
    lo, hi = min(x + y, default=0.0) - 0.02, max(x + y, default=1.0) + 0.02
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--", label="decoded = input")
    slope, intercept = stats.get("slope"), stats.get("intercept")
    if slope is not None and not math.isnan(slope):
        ax.plot([lo, hi], [slope * lo + intercept, slope * hi + intercept], color="tab:red", lw=1,
                label=f"least squares (slope {slope:.2f})")
    ax.scatter(x, y, s=22, color="tab:blue", zorder=3, label=f"{len(rows)} test networks")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("input network: test accuracy")
    ax.set_ylabel("decoded network: test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"slope {_num(slope, 2)}, Spearman {_num(stats.get('spearman'), 3)}, mean |gap| "
                 f"{100 * stats.get('mean_abs_gap', math.nan):.2f} points", fontsize=9)
    return save_figure(fig, path)


def _opt_verdict(op: dict) -> str:
    gain = op["best"]["test_acc"] - op["first"]["test_acc"]
    if gain < 0.01:
        return (f"The random embedding already decodes to a {_pct(op['first']['test_acc'])} network, and the "
                f"optimization changes the test accuracy by {100 * gain:+.1f} points: in this space almost every "
                f"embedding near the training networks' decodes to a working network, so there is little left to "
                f"optimize.")
    return (f"The optimization raises the test accuracy from {_pct(op['first']['test_acc'])} to "
            f"{_pct(op['best']['test_acc'])} ({100 * gain:+.1f} points) in {op['best']['step']} steps.")


def _interp_verdict(it: dict) -> str:
    """What the two curves show, in one sentence (whatever they show)."""
    lo = min(it["a_acc"], it["b_acc"])
    e, w = it["min_embedding_acc"], it["min_weight_acc"]
    if e >= lo - 0.01 and w < lo - 0.01:
        return (f"The decoded path stays at or above the weaker end's accuracy all the way (minimum {_pct(e)}), "
                f"while the raw weights lose accuracy midway (minimum {_pct(w)}): the space holds good networks "
                f"between the two.")
    if e < lo - 0.01 and w < lo - 0.01:
        return (f"Both paths dip below the weaker end ({_pct(lo)}): decoded embeddings to {_pct(e)}, raw weights "
                f"to {_pct(w)}.")
    if e < lo - 0.01:
        return (f"Here the decoded path dips below the weaker end ({_pct(lo)}) to {_pct(e)}, while the raw "
                f"weights do not (minimum {_pct(w)}).")
    return (f"Neither path loses accuracy below the weaker end ({_pct(lo)}): minimum {_pct(e)} along the "
            f"embeddings, {_pct(w)} along the raw weights.")


def summary_table(s: dict) -> str:
    """The summary table printed at the end."""
    ev, op, it, t = s["evaluate"], s["optimize"], s["interpolate"], s["times_s"]
    rows = [("decoded vs input: mean |gap| (test)", f"{100 * ev['mean_abs_gap']:.2f} points"),
            ("decoded vs input: slope", _num(ev.get("slope"), 2)),
            ("decoded vs input: Spearman", _num(ev.get("spearman"), 3)),
            ("interpolation: min accuracy, embeddings", _pct(it["min_embedding_acc"])),
            ("interpolation: min accuracy, raw weights", _pct(it["min_weight_acc"])),
            ("latent optimization from random: best test acc", _pct(op["best_acc"])),
            ("total time", f"{t['total']:.0f} s")]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)
