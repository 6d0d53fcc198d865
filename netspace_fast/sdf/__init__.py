"""Neural SDFs: shapes with signed-distance samples and batched SIREN fitting.

:mod:`.shapes` the shape sources behind one interface (:class:`ShapeSet`: procedural chairs with
exact distances, mesh folders through trimesh + libigl, DeepSDF .npz sample files),
:mod:`.fit` batched SIREN fitting and the resumable zoo job (``netspace zoo fit-sdf``),
:mod:`.presets` its recipes, :mod:`.catalog` real chair meshes from Sweet Home 3D furniture catalogs
(``netspace shapes extract-chairs``).
"""

from .catalog import CHAIR_NAME_OUTLIERS, LICENCES, MAX_AMBIGUOUS, CatalogModel, extract_chairs, read_catalog
from .fit import KERNELS, PREP_WIDTH, WITHIN, SirenFitter, SirenStack, fit_sdf_zoo, network_seed, siren_forward
from .presets import SDF_PRESETS, SdfPreset
from .shapes import (Chair, MeshShapes, NpzShapes, ProceduralChairs, ShapeSet, box_sdf, deepsdf_pool, make_chair,
                     open_shapes, union_sdf)

__all__ = ["CHAIR_NAME_OUTLIERS", "KERNELS", "LICENCES", "MAX_AMBIGUOUS", "PREP_WIDTH", "SDF_PRESETS", "WITHIN",
           "CatalogModel", "Chair", "MeshShapes", "NpzShapes", "ProceduralChairs", "SdfPreset", "ShapeSet",
           "SirenFitter", "SirenStack", "box_sdf", "deepsdf_pool", "extract_chairs", "fit_sdf_zoo", "make_chair",
           "network_seed", "open_shapes", "read_catalog", "siren_forward", "union_sdf"]
