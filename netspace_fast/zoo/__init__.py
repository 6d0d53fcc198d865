"""Model zoos: B instances of one architecture trained as one batched job.

:mod:`.model` the stacked module (per-instance BatchNorm, on the engine's layout plan),
:mod:`.augment` per-instance crops and flips, :mod:`.loop` epochs, evaluation and optimizers,
:mod:`.presets` the recipes, :mod:`.job` the resumable ``train_zoo``, :mod:`.distributed` torchrun
sharding, :mod:`.format` the on-disk zoo format.
"""

from .augment import NORMALIZED_BLACK, crop_flip_draws, random_crop_flip
from .distributed import shard
from .job import train_zoo
from .loop import DataOrder, evaluate, make_optimizer, train_epoch
from .model import BatchedZooNet
from .presets import PRESETS, Preset

__all__ = ["BatchedZooNet", "DataOrder", "NORMALIZED_BLACK", "PRESETS", "Preset", "crop_flip_draws", "evaluate",
           "make_optimizer", "random_crop_flip", "shard", "train_epoch", "train_zoo"]
