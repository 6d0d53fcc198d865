"""Random small CNNs and MLPs from the supported set of user-architecture operations, as ordinary
``nn.Module`` s (what a user writes), for the property tests of tracing and of the general engine.

A network is drawn as a recipe (plain data, so hypothesis can shrink it) and built by
:func:`build`: image networks are conv blocks (any kernel, rectangular too, stride, padding,
dilation, groups including depthwise, with or without bias, optional BatchNorm2d and activation,
optional max / average pooling, optional residual block with or without a 1x1 projection), then
flatten or adaptive average pooling + flatten, then linear layers (with or without bias, optional
BatchNorm1d and activation, dropout) and a last linear; MLPs are the linear part alone, sin(w0 x)
among the activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

ACTS = ("relu", "leaky", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "sin", "none")
SMOOTH = ("gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "sin", "none")


class Sin(nn.Module):
    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


def act_module(name: str) -> nn.Module:
    return {"relu": lambda: nn.ReLU(), "leaky": lambda: nn.LeakyReLU(0.2), "gelu": lambda: nn.GELU(),
            "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": lambda: nn.SiLU(), "tanh": lambda: nn.Tanh(),
            "sigmoid": lambda: nn.Sigmoid(), "sin": lambda: Sin(2.0), "none": lambda: nn.Identity()}[name]()


class Residual(nn.Module):
    """act(body(x) + shortcut(x)), the shortcut a 1x1 conv (+ BN) or the identity."""

    def __init__(self, body: nn.Module, proj: nn.Module | None, act: str) -> None:
        super().__init__()
        self.body = body
        self.proj = proj
        self.act = act_module(act)

    def forward(self, x):
        short = x if self.proj is None else self.proj(x)
        return self.act(self.body(x) + short)


class RandomNet(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def recipes(draw, image: bool | None = None, acts=ACTS):
    """A network recipe: ('image', (C, H, W), blocks, pool_to, linears, out) or ('mlp', F, linears, out)."""
    if image is None:
        image = draw(st.booleans())
    act = st.sampled_from(acts)
    linears = draw(st.lists(st.tuples(st.integers(1, 6), st.booleans(), st.booleans(), act, st.booleans()),
                            max_size=2))  # (out, bias, bn, act, dropout)
    out = draw(st.integers(1, 4))
    if not image:
        return ("mlp", draw(st.integers(1, 6)), linears, out)
    C, H, W = draw(st.integers(1, 3)), draw(st.integers(3, 8)), draw(st.integers(3, 8))
    blocks = []
    c, h, w = C, H, W
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("conv", "conv", "residual", "pool")))
        if kind == "pool":
            if min(h, w) < 2:
                continue
            blocks.append(("pool", draw(st.sampled_from(("max", "avg")))))
            h, w = h // 2, w // 2
            continue
        if kind == "residual":
            cout = draw(st.integers(1, 4))
            blocks.append(("residual", cout, draw(st.booleans()), draw(act)))
            c = cout
            continue
        g = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
        cout = g * draw(st.integers(1, 3))
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        s, p, d = draw(st.integers(1, 2)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
        ho, wo = _conv_out(h, kh, s, p, d), _conv_out(w, kw, s, p, d)
        if ho < 1 or wo < 1:
            continue
        blocks.append(("conv", cout, (kh, kw), s, p, d, g, draw(st.booleans()), draw(st.booleans()), draw(act)))
        c, h, w = cout, ho, wo
    pool_to = draw(st.sampled_from((None, 1, 2)))
    return ("image", (C, H, W), blocks, pool_to, linears, out)


def build(recipe, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """The module of ``recipe`` (BatchNorm statistics and affine parameters randomized, so folding
    matters) and its input shape (without the batch)."""
    torch.manual_seed(seed)
    if recipe[0] == "mlp":
        _, fin, linears, out = recipe
        feats, in_shape = nn.Identity(), (fin,)
    else:
        _, in_shape, blocks, pool_to, linears, out = recipe
        layers, c = [], in_shape[0]
        for b in blocks:
            if b[0] == "pool":
                layers.append(nn.MaxPool2d(2) if b[1] == "max" else nn.AvgPool2d(2))
            elif b[0] == "residual":
                _, cout, proj, act = b
                body = nn.Sequential(nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                     nn.Conv2d(cout, cout, 3, padding=1))
                p = nn.Sequential(nn.Conv2d(c, cout, 1, bias=False), nn.BatchNorm2d(cout)) if (proj or c != cout) \
                    else None
                layers.append(Residual(body, p, act))
                c = cout
            else:
                _, cout, k, s, p, d, g, bias, bn, act = b
                layers.append(nn.Conv2d(c, cout, k, s, p, d, g, bias=bias))
                if bn:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(act_module(act))
                c = cout
        if pool_to is not None:
            layers.append(nn.AdaptiveAvgPool2d(pool_to))
        feats = nn.Sequential(*layers)
        with torch.no_grad():
            fin = math.prod(feats.eval()(torch.zeros(1, *in_shape)).shape[1:])
    head = []
    for n, bias, bn, act, drop in linears:
        head.append(nn.Linear(fin, n, bias=bias))
        if bn:
            head.append(nn.BatchNorm1d(n))
        head.append(act_module(act))
        if drop:
            head.append(nn.Dropout(0.5))
        fin = n
    head.append(nn.Linear(fin, out))
    net = RandomNet(feats, nn.Sequential(*head))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval(), tuple(in_shape)


def is_smooth(recipe) -> bool:
    """No ReLU / LeakyReLU / max pooling / residual ReLU: the gradient is continuous in the inputs."""
    text = repr(recipe)
    return not any(w in text for w in ("'relu'", "'leaky'", "'max'", "'residual'"))


__all__ = ["ACTS", "SMOOTH", "RandomNet", "build", "is_smooth", "recipes", "F"]
