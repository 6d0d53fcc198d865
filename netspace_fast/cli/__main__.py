"""``python -m netspace_fast.cli`` (and ``torchrun ... -m netspace_fast.cli``)."""

from . import main

main()
