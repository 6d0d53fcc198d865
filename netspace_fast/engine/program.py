"""A network as the engine runs it: one step per layer of the spec, in execution order.

A step is ``(kind, src, dst, residual, act, geom)``: value ids as in
:class:`netspace_fast.archs.LayerSpec`, ``act`` the activation code of
:mod:`netspace_fast.ops.batched_layers_ref`, and ``geom`` the layer's geometry, for a conv
``(w_off, b_off, cout, cin, k, stride, padding)``, a linear ``(w_off, b_off, out, in)`` (offsets of
the weight and bias in the PRep layout of width ``width``), a pool ``(k, stride)``. The zoo
trainer, whose weights are stacked parameters rather than PReps, uses the same steps (and ignores
the offsets).
"""

from __future__ import annotations

from functools import lru_cache

from ..archs import ArchSpec
from ..ops.batched_layers_ref import ACT_CODES
from ..prep.layout import PRepLayout

__all__ = ["compile_program"]


@lru_cache(maxsize=256)
def compile_program(spec: ArchSpec, width: int = 8) -> tuple[tuple, ...]:
    """The steps of ``spec`` (offsets for PReps of width ``width``)."""
    offsets = {e.name: e.offset for e in PRepLayout.for_spec(spec, width).entries}
    prog = []
    for layer in spec.layers:
        if layer.kind == "conv":
            geom = (offsets[f"{layer.name}.weight"], offsets[f"{layer.name}.bias"], layer.out_features,
                    layer.in_features, layer.kernel, layer.stride, layer.padding)
        elif layer.kind == "linear":
            geom = (offsets[f"{layer.name}.weight"], offsets[f"{layer.name}.bias"], layer.out_features,
                    layer.in_features)
        else:
            geom = (layer.kernel, layer.stride)
        prog.append((layer.kind, layer.src, layer.dst, layer.residual, ACT_CODES[layer.act], geom))
    return tuple(prog)
