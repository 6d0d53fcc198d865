"""Public model zoos imported as our zoos (``netspace zoo import --format modelzoo|smallcnnzoo SRC --out ZOO``).

:mod:`.modelzoo` the HSG-AIML Model Zoos (Ray Tune trial folders of ``torch.save``d state dicts),
:mod:`.smallcnnzoo` the Small CNN Zoo (flattened Keras weights in a NumPy file, a metrics table, a
layout), :mod:`.nets` their networks as modules under the sources' names (architectures by name,
each with its input geometry), :mod:`.members` what both share: epochs, filters, splits, writing.
Nothing is unpickled: state dicts are read with ``torch.load(weights_only=True)``, NumPy files with
``allow_pickle=False``. An imported zoo records its images' geometry (channels, size, normalization;
:class:`netspace_fast.data.ImageGeometry`), so a space trained on it sees the data as its networks did.
"""

from .modelzoo import import_modelzoo
from .smallcnnzoo import import_smallcnnzoo

__all__ = ["FORMATS", "import_modelzoo", "import_smallcnnzoo"]

#: the ``--format`` of ``netspace zoo import`` -> its importer (``netspace``: :mod:`netspace_fast.zoo.importer`)
FORMATS = {"modelzoo": import_modelzoo, "smallcnnzoo": import_smallcnnzoo}
