"""Small SIREN zoos for the SDF space and mesh tests, built without any fitting: SIREN MLPs whose
weights are set by hand so that their zero level set is a sphere of a chosen radius and centre.

The construction (exact up to the small-angle terms, which are ~1e-4 of the values here): with the
first layer's bias pi/60, ``sin(30 (w x + pi/60)) = cos(a x)`` (a = 30 w); hidden unit 0 of the
second layer sums the three cosines minus 3 with a small weight v, so it works in its linear range,
``sin(30 v (sum_i cos(a x_i) - 3)) ~ -30 v a^2 |x|^2 / 2``; the output layer scales that back:
f(x) ~ |x - c|^2 - r^2 (negative inside, positive outside; the zero set is the sphere)."""

from __future__ import annotations

import math

import torch

from netspace_fast import archs
from netspace_fast.zoo.format import write_instance


def sphere_mlp(radius: float = 0.5, center=(0.0, 0.0, 0.0), a: float = 0.1, v: float = 0.01) -> archs.SpecNet:
    """A SIREN whose output is ~ |x - center|^2 - radius^2 (module doc)."""
    m = archs.build("siren")
    fc1, fc2, fc3 = m.get_submodule("fc1"), m.get_submodule("fc2"), m.get_submodule("fc3")
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for i in range(3):
            fc1.weight[i, i] = a / 30
            fc1.bias[i] = math.pi / 60 - a / 30 * center[i]  # cos(a (x_i - c_i))
        fc2.weight[0, :3] = v
        fc2.bias[0] = -3 * v
        fc3.weight[0, 0] = -2 / (30 * v * a * a)
        fc3.bias[0] = -radius * radius
    return m


def constant_mlp(value: float) -> archs.SpecNet:
    """A SIREN that outputs ``value`` everywhere (no zero crossing when value != 0)."""
    m = archs.build("siren")
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.get_submodule("fc3").bias.fill_(value)
    return m


SPHERES = {  # id -> (radius, center, split)
    "sphere-a": (0.45, (0.0, 0.0, 0.0), "train"),
    "sphere-b": (0.30, (0.1, 0.0, -0.1), "train"),
    "sphere-c": (0.55, (-0.1, 0.05, 0.0), "train"),
    "sphere-d": (0.40, (0.0, -0.1, 0.1), "val"),
}


def write_sphere_zoo(path) -> None:
    """An SDF zoo of four sphere MLPs (3 train, 1 val)."""
    for i, (id, (r, c, split)) in enumerate(SPHERES.items()):
        write_instance(path, sphere_mlp(r, c), id=id, arch="siren", dataset=None, protocol="sdf-test", seed=i,
                       epoch=0, acc={}, split=split)
