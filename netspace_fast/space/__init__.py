"""NetSpace: the space of trained networks. :mod:`.nets` the encoder, decoder and ClassId
head (the original code's names and shapes at :meth:`SpaceConfig.paper`), :mod:`.losses` the losses,
:mod:`.step` one training step (networks evaluated in batches), :mod:`.train` training runs
(:mod:`.presets`, :mod:`.run`), :mod:`.evaluate`, :mod:`.importer` (the original's checkpoints) and
:class:`Space` (a trained space from Python)."""

from .api import Space
from .losses import class_loss, gamma_plan, interpolate, kd_loss, multi_kd_loss
from .nets import Decoder, Encoder, SpaceConfig

__all__ = ["Decoder", "Encoder", "Space", "SpaceConfig", "class_loss", "gamma_plan", "interpolate", "kd_loss",
           "multi_kd_loss"]
