"""How long `netspace zoo import` takes per member, with the members recorded in batches (one manifest
update each, as the importer does) and one at a time (one update per member, as before): BENCHMARKS.md,
"Public model zoos".

    python benchmarks/zoo/time_public_import.py [--runs 222] [--batch 1000]

Writes a Small CNN Zoo folder of ``runs`` x 9 checkpoints in its layout (the test suite's writer,
tests/zoo/public/public_zoos.py) into a temporary folder, imports it with ``--epochs all`` and prints
the wall time per member.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "zoo" / "public"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=222, help="runs of 9 checkpoints each (default 222: 1,998 members)")
    ap.add_argument("--batch", type=int, action="append",
                    help="members per manifest update (repeatable; default: 1000, then 1)")
    args = ap.parse_args(argv)
    from public_zoos import STEPS, write_smallcnnzoo

    from netspace_fast.zoo.public import import_smallcnnzoo, members

    torch.set_num_threads(1)
    for batch in args.batch or [1000, 1]:
        with tempfile.TemporaryDirectory() as d:
            src, _, _ = write_smallcnnzoo(Path(d), runs=[("relu" if i % 2 == 0 else "tanh", STEPS)
                                                         for i in range(args.runs)])
            members.WRITE_BATCH = batch
            t = time.perf_counter()
            n = len(import_smallcnnzoo(src, Path(d) / "zoo", epochs="all").instances())
            dt = time.perf_counter() - t
            print(f"{n} members, {batch} per manifest update: {dt:.1f} s ({1000 * dt / n:.1f} ms a member)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
