"""The ``netspace`` command line (click).

::

    netspace zoo info DIR [--json]      summary of a zoo: schema, config, counts, accuracy ranges
    netspace zoo verify DIR             check every file against the manifest; exit 0 clean, 1 problems
    netspace zoo train --preset NAME --out DIR [--root PATH] [--seed INT] [--device cpu|cuda] [--no-progress]
                       [--tensorboard LOGDIR] [--arch NAME|PKG.MOD:FACTORY]
    torchrun --nproc_per_node=K -m netspace_fast.cli zoo train ...   the same, instances sharded over K ranks
    netspace zoo import LIST [LIST ...] --out ZOO [--root PATH] [--base DIR]   the original code's zoo
    netspace train single|multi --zoo ZOO --out RUN [--preset NAME] [--seed S] [--epochs N] [--device cpu|cuda]
    netspace eval RUN [--split train|val|test|all] [--csv FILE]
    netspace interpolate RUN --a ID --b ID [--steps 100] --out DIR
    netspace sample-unseen RUN --out DIR [--alphas 0.1,...,0.9]
    netspace optimize RUN (--from ID | --random) [--arch NAME] [--steps N] [--lr 1e-4] --out DIR
    netspace export RUN (--id ID | --embedding FILE) --out FILE.safetensors
    netspace visualize RUN --id ID --out FILE.png
    netspace probe RUN [--target test_acc|gap|epoch|...] --out DIR   predict a network's accuracy from its embedding
    netspace demo [--out runs/demo] [--seed S] [--fresh]   the whole story on digits, with a report

Every command of ``train`` and the exploration commands takes ``--config FILE``: a YAML mapping of
option names to values (flags on the command line win); see :func:`.base.config_option`.

Also runnable as ``python -m netspace_fast.cli``. A user mistake (missing folder, no manifest,
unknown preset, a ValueError / OSError raised by the library) is reported as one ``error: ...``
line on stderr with a non-zero exit status, never a traceback: exit 1 for a failed operation,
exit 2 for a bad argument (click's convention). Library modules are imported inside the commands,
so ``netspace --help`` stays cheap and a broken optional module only affects its own command.
One module per command group: :mod:`.zoo`, :mod:`.space`, :mod:`.explore`, :mod:`.probe` (next: ``sdf``).
"""

from __future__ import annotations

from . import demo as _demo_commands  # noqa: F401  (registers ``netspace demo``)
from . import explore as _explore_commands  # noqa: F401  (interpolate, sample-unseen, optimize, export, visualize)
from . import layout as _layout_commands  # noqa: F401  (registers ``netspace layout show|clear|retune``)
from . import probe as _probe_commands  # noqa: F401  (registers ``netspace probe``)
from . import space as _space_commands  # noqa: F401  (registers ``netspace train|eval ...``)
from . import sdf as _sdf_commands  # noqa: F401  (registers ``netspace train sdf``)
from . import zoo as _zoo_commands  # noqa: F401  (registers ``netspace zoo ...``)
from .base import CliError, cli

__all__ = ["CliError", "cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``netspace = "netspace_fast.cli:main"``)."""
    cli.main(args=argv, prog_name="netspace")

