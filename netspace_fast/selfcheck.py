"""The PRep core self-check: every architecture end to end on the embedded default (digits geometry), on CPU,
in seconds (the first stage of `netspace demo`; also ``python -m netspace_fast.selfcheck``).

Builds every architecture, checks parameter counts against the seed's Table I, folds BatchNorm
(one native call per architecture) and checks the folded networks against the BN networks in
eval mode, packs a batch of PReps per architecture, evaluates all of them from their PReps in one
batched call (checked against each BN network), saves one PRep as a PNG image and prints a table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from . import archs, backends, batched_forward, fold_bn, pack_preps, unpack_prep, PRepLayout
from .prep.image import save_prep_png

TABLE_I = {"lenetlike": 62_006, "vanillacnn": 68_818, "resnet8": 78_042, "resnet32": 466_906, "resnet56": 855_770}


def _randomize_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Stand-in for training (the zoo comes in a later issue): BN statistics that are not identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
    model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netspace_fast.selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="selfcheck_out", help="folder for the PRep image (default: selfcheck_out)")
    parser.add_argument("--dataset", default="digits", choices=sorted(archs.DATASETS))
    parser.add_argument("--batch", type=int, default=8, help="networks per architecture (default: 8)")
    parser.add_argument("--width", type=int, default=10_000, help="PRep width, a multiple of 8 (default: 10000)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch: expected a positive number of networks, got {args.batch}")
    text, ok, _ = run_checks(args.out, args.dataset, args.batch, args.width)
    print(text)
    return 0 if ok else 1


def run_checks(out: str | os.PathLike, dataset: str = "digits", batch: int = 8,
               width: int = 10_000) -> tuple[str, bool, str | None]:
    """Run the checks; returns (the printed table as text, all checks passed, the PRep image's path)."""
    os.makedirs(out, exist_ok=True)
    lines: list[str] = []
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    lines.append(f"netspace_fast backends: {backends()}")
    ds = dataset
    x = torch.randn(16, *archs.spec("lenetlike", ds).input_shape, generator=gen)
    rows = []
    image_path = None
    for name in TABLE_I:
        spec = archs.spec(name, ds)
        models = [archs.build(name, ds) for _ in range(batch)]
        for m in models:
            _randomize_bn(m, gen)
        count = sum(p.numel() for p in models[0].parameters())
        with torch.no_grad():
            t0 = time.perf_counter()
            folded = fold_bn(models)
            t_fold = time.perf_counter() - t0
            err = max(((a(x) - b(x)).abs().max() / a(x).abs().max()).item() for a, b in zip(models, folded))
            t0 = time.perf_counter()
            preps = pack_preps(models, width=width)
            t_pack = time.perf_counter() - t0
            layout = PRepLayout.for_spec(spec, width)
            # the PRep is the folded network: its views are the folded parameters
            same = all(torch.equal(v, p) for v, p in zip(unpack_prep(preps[0], layout).values(),
                                                           folded[0].parameters()))
            # all B networks at once, straight from their PReps, against each BN model in eval mode
            t0 = time.perf_counter()
            ys = batched_forward(spec, preps, x)
            t_eval = time.perf_counter() - t0
            err_eval = max(((ys[b] - m(x)).abs().max() / m(x).abs().max()).item() for b, m in enumerate(models))
        if name == "resnet8":
            image_path = save_prep_png(preps[0], os.path.join(out, f"prep_{name}_{ds}.png"), spec.num_params)
        rows.append((name, count, TABLE_I[name], spec.num_params, tuple(preps.shape), err, same,
                     1e3 * t_fold, 1e3 * t_pack, err_eval, 1e3 * t_eval))
    header = (f"{'arch':<11}{'params':>9}{'Table I':>9}{'BN-free':>9}  {'PRep batch':<18}{'fold rel err':>13}"
              f"{'PRep=fold':>10}{'fold ms':>9}{'pack ms':>9}{'batched err':>12}{'eval ms':>9}")
    lines.append(f"\n{ds}: {batch} networks per architecture, PRep width {width}; batched eval of all of them "
          f"on {x.shape[0]} images in one call\n{header}\n{'-' * len(header)}")
    ok = True
    for name, count, table, bnfree, shape, err, same, tf, tp, err_eval, te in rows:
        ok &= count == table and err <= 1e-5 and same and err_eval <= 1e-4
        lines.append(f"{name:<11}{count:>9,}{table:>9,}{bnfree:>9,}  {str(shape):<18}{err:>13.2e}{str(same):>10}"
              f"{tf:>9.1f}{tp:>9.1f}{err_eval:>12.2e}{te:>9.1f}")
    lines.append(f"\nPRep image: {image_path}")
    lines.append("all checks passed" if ok else "CHECK FAILED")
    return "\n".join(lines), ok, image_path


if __name__ == "__main__":
    raise SystemExit(main())
