"""The NetSpace networks (METHOD.md section 5; seed Sec. I, II): the encoder (PRep -> embedding), the
decoder (embedding -> PRep) and the ClassId head, with the original NetSpace code's module names, so
that at the paper configuration (:meth:`SpaceConfig.paper`) the state dicts have exactly the original's
keys and shapes and its checkpoints load:

- encoder ``conv1.0`` (E/32, 1, 1, 3), ``conv2.0`` (E/16, E/32, 1, 3), ``conv3.0`` (E/8, E/16, 3, 1),
  ``conv4.0`` (E, E/8, 3, 1), each + bias and followed by LeakyReLU; the first two stride (1, 2),
  padding (0, 1), then the maximum over the width; the last two padding (1, 0), then the maximum
  over the height (6,788,352 parameters at E = 4096);
- decoder for (H, W) PReps: the embedding viewed as (E / v^2, v, v) (v = 64); ``conv1.0`` 3x3/2 to
  ``a*H*4b / (v/2)^2`` channels (2048 = H*256 at the paper's a = 128, b = 512), reshaped to
  (a, H, 4b); ``conv2.0`` 3x3/2 to W/8 channels, reshaped to (b, H/2, W/4); ``conv3.0`` 3x3/2 to c
  (256) channels, (c, H/4, W/8); ``conv4.0`` 3x3 to 32 channels, reshaped to (H, W); LeakyReLU after
  the first three; then ``scalelayer`` (an elementwise affine over the whole PRep: ``scale`` ~
  N(0, 1) * 1e-3, ``bias`` ~ U(0, 1) * 1e-2). (8, 10000) at the paper configuration: 2,875,394
  parameters.
- ClassId head (Multi-Architecture; inside the decoder, as in the original): ``arch_conv.0`` 3x3/2
  (E / v^2 -> 10 channels) on the same view, LeakyReLU, flatten, ``arch_classifier`` linear to the
  number of architectures ((4, 10240) at the paper configuration).

Smaller configurations (our design, for CPU presets) scale the same structure down: a smaller
embedding E, view v and channel counts a, b, c; every reshape stays exact (checked when the
configuration is made).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .conv_max import conv_max_width

__all__ = ["Decoder", "Encoder", "ScaleLayer", "SpaceConfig"]

LEAKY_SLOPE = 0.01  # torch's default, nn.LeakyReLU() as the original builds it


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


@dataclass(frozen=True)
class SpaceConfig:
    """Sizes of a NetSpace: PRep (height, width), embedding ``embed``, the decoder's view side
    ``view`` and channel counts ``dec_a``, ``dec_b``, ``dec_c``, ``num_archs`` (> 0: the ClassId
    head), and ``prep_scale``, a factor on the encoder's input (1 in the original; the CPU presets use
    30: trained weights are ~0.03, and at that size the encoder's conv biases dominate its features,
    so every PRep maps to nearly one embedding and the decoder collapses to one network, measured on
    the digits zoo), and ``bias_init``, the scale layer's bias at initialization: ``"uniform"``
    U(0, 1) * 1e-2 (the original), or ``"centered"`` U(-1, 1) * 1e-2 (the digits Multi preset: with the
    original's all-positive weights a decoded ResNet32 starts with logits ~3e5, and the first
    gradient, ~5e7, freezes Adam for thousands of steps; measured). :meth:`paper` is the original's
    configuration."""

    height: int
    width: int
    embed: int = 4096
    view: int = 64
    dec_a: int = 128
    dec_b: int = 512
    dec_c: int = 256
    num_archs: int = 0
    head_channels: int = 10
    prep_scale: float = 1.0
    bias_init: str = "uniform"

    def __post_init__(self) -> None:
        for name in ("height", "width", "embed", "view", "dec_a", "dec_b", "dec_c", "head_channels"):
            _positive_int(getattr(self, name), name)
        if not isinstance(self.prep_scale, (int, float)) or not math.isfinite(self.prep_scale) or self.prep_scale <= 0:
            raise ValueError(f"prep_scale: expected a finite number > 0, got {self.prep_scale!r}")
        if self.bias_init not in ("uniform", "centered"):
            raise ValueError(f"bias_init: expected 'uniform' (the paper's U(0, 1) * 1e-2) or 'centered' "
                             f"(U(-1, 1) * 1e-2), got {self.bias_init!r}")
        if isinstance(self.num_archs, bool) or not isinstance(self.num_archs, int) or self.num_archs < 0:
            raise ValueError(f"num_archs: expected an int >= 0 (0: no ClassId head), got {self.num_archs!r}")
        if self.height % 4:
            raise ValueError(f"height: expected a multiple of 4 (a PRep height), got {self.height}")
        if self.width % 8:
            raise ValueError(f"width: expected a multiple of 8 (a PRep width), got {self.width}")
        if self.embed % 32:
            raise ValueError(f"embed: expected a multiple of 32 (the encoder has E/32, E/16, E/8 channels), got "
                             f"{self.embed}")
        if self.view % 2 or self.embed % (self.view * self.view):
            raise ValueError(f"view: expected an even side v with embed divisible by v*v (the embedding is viewed "
                             f"as (E/v^2, v, v)), got v={self.view} for embed={self.embed}")
        if (self.dec_a * self.height * 4 * self.dec_b) % self.half_view ** 2:
            raise ValueError(f"dec_a, dec_b: the first reshape needs dec_a*height*4*dec_b divisible by (view/2)^2 = "
                             f"{self.half_view ** 2}, got {self.dec_a}*{self.height}*4*{self.dec_b}")

    @classmethod
    def paper(cls, height: int = 8, width: int = 10_000, num_archs: int = 0) -> "SpaceConfig":
        """The original code's configuration (E = 4096) for PReps of (height, width)."""
        return cls(height, width, num_archs=num_archs)

    @property
    def half_view(self) -> int:
        return self.view // 2

    @property
    def view_channels(self) -> int:
        """Channels of the decoder's view of the embedding (E / v^2)."""
        return self.embed // (self.view * self.view)

    @property
    def dec_c1(self) -> int:
        """Output channels of the decoder's first conv (H * 256 at the paper configuration)."""
        return self.dec_a * self.height * 4 * self.dec_b // self.half_view ** 2


def _block(conv: nn.Module, act: bool = True) -> nn.Sequential:
    return nn.Sequential(conv, nn.LeakyReLU(LEAKY_SLOPE)) if act else nn.Sequential(conv)


class Encoder(nn.Module):
    """PReps (B, H, W) or (B, 1, H, W) -> embeddings (B, E).

    ``fused`` (default): the first two blocks and the maximum over the width run as
    :func:`~netspace_fast.space.conv_max.conv_max_width` (same values; a backward that touches only the
    maximal positions, ~3x faster on CPU at the paper configuration); ``fused=False`` runs the modules
    one after the other with dense autograd, as the original does (the benchmarks' peer)."""

    def __init__(self, config: SpaceConfig, fused: bool = True) -> None:
        super().__init__()
        E = config.embed
        self.config = config
        self.fused = bool(fused)
        self.conv1 = _block(nn.Conv2d(1, E // 32, (1, 3), stride=(1, 2), padding=(0, 1)))
        self.conv2 = _block(nn.Conv2d(E // 32, E // 16, (1, 3), stride=(1, 2), padding=(0, 1)))
        self.conv3 = _block(nn.Conv2d(E // 16, E // 8, (3, 1), padding=(1, 0)))
        self.conv4 = _block(nn.Conv2d(E // 8, E, (3, 1), padding=(1, 0)))

    def forward(self, preps: torch.Tensor) -> torch.Tensor:
        c = self.config
        if preps.dim() == 3:
            preps = preps.unsqueeze(1)
        if preps.dim() != 4 or preps.shape[1:] != (1, c.height, c.width):
            raise ValueError(f"preps: expected (B, {c.height}, {c.width}) PReps for this space, got "
                             f"{tuple(preps.shape)}")
        if c.prep_scale != 1.0:
            preps = preps * c.prep_scale
        if self.fused:
            c1, c2 = self.conv1[0], self.conv2[0]
            h = conv_max_width(preps, c1.weight, c1.bias, c2.weight, c2.bias, LEAKY_SLOPE).unsqueeze(3)
        else:
            h = self.conv2(self.conv1(preps)).max(dim=3, keepdim=True).values  # max over the width
        return self.conv4(self.conv3(h)).amax(dim=2).flatten(1)  # max over the height -> (B, E)


class ScaleLayer(nn.Module):
    """An elementwise affine over the whole PRep: ``x * scale + bias`` (METHOD.md section 5); ``bias``
    starts at U(0, 1) * 1e-2 (the original) or, ``centered``, U(-1, 1) * 1e-2."""

    def __init__(self, height: int, width: int, centered: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(height, width) * 1e-3)
        bias = torch.rand(height, width) * 1e-2
        self.bias = nn.Parameter(bias * 2 - 1e-2 if centered else bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.scale)


class Decoder(nn.Module):
    """Embeddings (B, E) -> PReps (B, H, W); with ``num_archs`` > 0 also the ClassId logits
    (:meth:`class_logits`)."""

    def __init__(self, config: SpaceConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.conv1 = _block(nn.Conv2d(c.view_channels, c.dec_c1, 3, stride=2, padding=1))
        self.conv2 = _block(nn.Conv2d(c.dec_a, c.width // 8, 3, stride=2, padding=1))
        self.conv3 = _block(nn.Conv2d(c.dec_b, c.dec_c, 3, stride=2, padding=1))
        self.conv4 = _block(nn.Conv2d(c.dec_c, 32, 3, padding=1), act=False)
        self.scalelayer = ScaleLayer(c.height, c.width, centered=c.bias_init == "centered")
        if c.num_archs:
            self.arch_conv = _block(nn.Conv2d(c.view_channels, c.head_channels, 3, stride=2, padding=1))
            self.arch_classifier = nn.Linear(c.head_channels * c.half_view ** 2, c.num_archs)

    def _view(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        if z.dim() != 2 or z.shape[1] != c.embed:
            raise ValueError(f"z: expected embeddings (B, {c.embed}), got {tuple(z.shape)}")
        return z.view(z.shape[0], c.view_channels, c.view, c.view)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        B = z.shape[0] if z.dim() == 2 else -1
        h = self.conv1(self._view(z)).reshape(B, c.dec_a, c.height, 4 * c.dec_b)
        h = self.conv2(h).reshape(B, c.dec_b, c.height // 2, c.width // 4)
        h = self.conv3(h)  # (B, dec_c, H/4, W/8)
        h = self.conv4(h).reshape(B, c.height, c.width)
        return self.scalelayer(h)

    def class_logits(self, z: torch.Tensor) -> torch.Tensor:
        """ClassId logits (B, num_archs) of embeddings (B, E)."""
        if not self.config.num_archs:
            raise ValueError("class_logits: this decoder has no ClassId head (num_archs=0)")
        return self.arch_classifier(self.arch_conv(self._view(z)).flatten(1))


def num_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
