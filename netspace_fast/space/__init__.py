"""NetSpace (issue 9): the space of trained networks. :mod:`.nets` the encoder, decoder and ClassId
head (the original code's names and shapes at :meth:`SpaceConfig.paper`), :mod:`.losses` the losses.
Training, evaluation and checkpoints land here next."""

from .losses import class_loss, gamma_plan, interpolate, kd_loss, multi_kd_loss
from .nets import Decoder, Encoder, SpaceConfig

__all__ = ["Decoder", "Encoder", "SpaceConfig", "class_loss", "gamma_plan", "interpolate", "kd_loss",
           "multi_kd_loss"]
