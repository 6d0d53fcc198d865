"""Neural SDFs: shapes with signed-distance samples and batched SIREN fitting.

:mod:`.shapes` the shape sources behind one interface (:class:`ShapeSet`: procedural chairs with
exact distances, mesh folders through trimesh + libigl, DeepSDF .npz sample files),
:mod:`.fit` batched SIREN fitting and the resumable zoo job (``netspace zoo fit-sdf``),
:mod:`.presets` its recipes.
"""

from .fit import KERNELS, PREP_WIDTH, WITHIN, SirenFitter, SirenStack, fit_sdf_zoo, network_seed, siren_forward
from .presets import SDF_PRESETS, SdfPreset
from .shapes import (Chair, MeshShapes, NpzShapes, ProceduralChairs, ShapeSet, box_sdf, deepsdf_pool, make_chair,
                     open_shapes, union_sdf)

__all__ = ["KERNELS", "PREP_WIDTH", "SDF_PRESETS", "WITHIN", "Chair", "MeshShapes", "NpzShapes", "ProceduralChairs",
           "SdfPreset", "ShapeSet", "SirenFitter", "SirenStack", "box_sdf", "deepsdf_pool", "fit_sdf_zoo",
           "make_chair", "network_seed", "open_shapes", "siren_forward", "union_sdf"]
