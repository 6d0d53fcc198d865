"""Shapes out of SIREN SDF networks (METHOD.md section 7): the SDF of B MLPs on
a regular grid over the bounding cube (batched: one :func:`netspace_fast.batched_forward` call per
chunk of networks and chunk of grid points), the zero level set by marching cubes (scikit-image),
meshes written as .ply (trimesh) and rendered into one PNG (matplotlib, flat shading).

- :func:`sdf_grid`: (B, R, R, R) SDF values of PReps on the grid ``linspace(-bound, bound, R)^3``.
- :func:`mesh_from_grid`: one grid -> a :class:`trimesh.Trimesh` (empty, not an error, when the SDF
  has no zero crossing).
- :func:`decode_meshes`: embeddings of an SDF run -> meshes.
- :func:`interpolate_shapes`: ``steps`` evenly spaced embeddings between two zoo MLPs' embeddings
  (both ends included, as ``netspace interpolate``), decoded, meshed, written as
  ``step_000.ply`` ...; the two input MLPs' own meshes (``input_a.ply``, ``input_b.ply``);
  ``interpolation.png`` (input A, the decoded steps, input B) and ``interpolation.csv`` (per shape:
  vertices, faces, whether the mesh is non-empty and watertight, its connected components, its parts
  (components of at least 1% of the area) and the largest one's share of the area, its file; for the two decoded ends
  the fraction of grid points within 0.01 of their input MLP).

Coordinates: the MLPs' own (x, y, z); the render shows y up (ShapeNet's and the procedural chairs'
convention), looking at the shape from the front-left and above.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import archs
from ..engine import batched_forward
from ..interpolation import check_steps
from ..storage import atomic_write_bytes

__all__ = ["MESH_FIELDS", "PART_SHARE", "ShapeInterpolation", "decode_meshes", "grid_points", "interpolate_shapes",
           "mesh_from_grid", "mesh_stats", "meshes_from_preps", "render_meshes", "sdf_grid", "write_mesh"]

MESH_FIELDS = ("shape", "kind", "step", "alpha", "id", "vertices", "faces", "non_empty", "watertight", "components",
               "parts", "largest_part", "within_0.01", "file")
PART_SHARE = 0.01  #: a connected component with at least this share of a mesh's surface area is a part (smaller: a speck)


def _check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution: expected an int >= 2 (grid points per axis), got {resolution!r}")
    return resolution


def _check_bound(bound) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0:
        raise ValueError(f"bound: expected a number > 0 (the grid spans [-bound, bound]^3), got {bound!r}")
    return float(bound)


def grid_points(resolution: int = 64, bound: float = 1.0, device="cpu") -> torch.Tensor:
    """The (R^3, 3) points of the grid, x slowest and z fastest (``reshape(R, R, R)`` indexes [x, y, z])."""
    r = _check_resolution(resolution)
    axis = torch.linspace(-_check_bound(bound), bound, r, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


@torch.no_grad()
def sdf_grid(preps: torch.Tensor, resolution: int = 64, bound: float = 1.0, *, chunk: int = 8,
             point_chunk: int = 32768) -> torch.Tensor:
    """SDF values (B, R, R, R) of the SIREN MLPs in ``preps`` (B, H, W) on the grid (:func:`grid_points`),
    one batched call per ``chunk`` networks x ``point_chunk`` points."""
    if not isinstance(preps, torch.Tensor) or preps.dim() != 3:
        raise ValueError(f"preps: expected SIREN PReps (B, H, W), got "
                         f"{tuple(preps.shape) if isinstance(preps, torch.Tensor) else type(preps).__name__}")
    spec = archs.spec("siren")
    pts = grid_points(resolution, bound, preps.device).to(preps.dtype)
    r = resolution
    out = torch.empty(preps.shape[0], pts.shape[0], dtype=preps.dtype, device=preps.device)
    for s in range(0, preps.shape[0], chunk):
        for p in range(0, pts.shape[0], point_chunk):
            y = batched_forward(spec, preps[s:s + chunk], pts[p:p + point_chunk])  # (b, n, 1), one call
            out[s:s + chunk, p:p + point_chunk] = y[..., 0]
    return out.reshape(-1, r, r, r)


def mesh_from_grid(volume, bound: float = 1.0, level: float = 0.0):
    """The ``level`` set of one SDF grid (R, R, R) (:func:`sdf_grid`) as a ``trimesh.Trimesh`` in the
    MLP's coordinates. An SDF without a crossing of ``level`` (or not finite) gives an empty mesh."""
    import trimesh
    from skimage.measure import marching_cubes

    v = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if v.ndim != 3 or min(v.shape) < 2:
        raise ValueError(f"volume: expected one SDF grid (R, R, R) with R >= 2, got shape {v.shape}")
    bound = _check_bound(bound)
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all() or not (v.min() < level < v.max()):
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64))
    spacing = tuple(2 * bound / (n - 1) for n in v.shape)
    verts, faces, _normals, _ = marching_cubes(v, level=level, spacing=spacing)
    # skimage's default winding (gradient_direction="descent") gives outward normals for an SDF
    # (negative inside): a closed mesh has a positive volume
    return trimesh.Trimesh(vertices=verts - bound, faces=faces, process=True)


def mesh_stats(mesh) -> dict:
    """Vertices, faces, whether the mesh is non-empty and watertight (closed); its connected components
    (faces joined by shared vertices; 0 for an empty mesh), its parts (the components holding at least
    ``PART_SHARE`` of the surface area: a chair in one piece is 1 part, a broken-off leg or a floating
    fragment adds one; the specks a SIREN leaves away from its surface are components, not parts) and
    the largest component's share of the area."""
    nonempty = len(mesh.faces) > 0
    components, parts, largest = 0, 0, 0.0
    if nonempty:
        import trimesh

        labels = trimesh.graph.connected_component_labels(mesh.edges_unique, node_count=len(mesh.vertices))
        face_label = labels[mesh.faces[:, 0]]
        area = np.bincount(face_label, weights=mesh.area_faces)[np.unique(face_label)]
        share = area / max(float(area.sum()), 1e-30)
        components, parts, largest = int(len(area)), int((share >= PART_SHARE).sum()), float(share.max())
    return {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)), "non_empty": bool(nonempty),
            "watertight": bool(nonempty and mesh.is_watertight), "components": components, "parts": parts,
            "largest_part": round(largest, 6)}


def meshes_from_preps(preps: torch.Tensor, resolution: int = 64, bound: float = 1.0) -> list:
    """One mesh per SIREN PRep of ``preps`` (B, H, W) (grids evaluated batched)."""
    grids = sdf_grid(preps, resolution, bound)
    return [mesh_from_grid(g, bound) for g in grids]


def decode_meshes(space, z: torch.Tensor, resolution: int = 64, bound: float = 1.0) -> list:
    """Meshes of the networks decoded from embeddings ``z`` (B, E) by ``space`` (an
    :class:`netspace_fast.sdf.space.SdfSpace` or an SDF run folder)."""
    from .space import SdfSpace

    if not isinstance(space, SdfSpace):
        space = SdfSpace.load(space)
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z: expected embeddings (B, E), got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    return meshes_from_preps(space.decode(z), resolution, bound)


def write_mesh(path, mesh) -> Path:
    """A mesh as a binary .ply, written atomically (an empty mesh: a .ply with no vertices)."""
    path = Path(path)
    if len(mesh.faces):
        data = mesh.export(file_type="ply")
    else:
        data = (b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                b"property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    atomic_write_bytes(path, data)
    return path


def render_meshes(meshes: list, titles: list[str], path, *, bound: float = 1.0, max_faces: int = 20_000) -> Path:
    """One PNG: the meshes side by side (flat shading, y up), each titled; an empty mesh is a panel
    saying so. Meshes over ``max_faces`` faces are drawn with a regular subset of their faces."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if len(meshes) != len(titles):
        raise ValueError(f"titles: expected one title per mesh ({len(meshes)}), got {len(titles)}")
    n = len(meshes)
    # one box for every panel (relative sizes stay visible): the union of the meshes' bounds
    full = [m for m in meshes if len(m.faces)]
    if full:
        lo = np.min([m.bounds[0] for m in full], 0)
        hi = np.max([m.bounds[1] for m in full], 0)
        center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2 * 1.05, 1e-3)
    else:
        center, half = np.zeros(3), bound
    center = center[[0, 2, 1]]
    fig = plt.figure(figsize=(2.2 * n, 2.6))
    light = np.array([0.4, 0.5, 0.75])
    light /= np.linalg.norm(light)
    for i, (mesh, title) in enumerate(zip(meshes, titles)):
        ax = fig.add_subplot(1, n, i + 1, projection="3d")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
        if len(mesh.faces) == 0:
            ax.text2D(0.5, 0.5, "empty mesh\n(no zero crossing)", ha="center", va="center", fontsize=7,
                      transform=ax.transAxes)
            continue
        faces = mesh.faces
        if len(faces) > max_faces:
            faces = faces[np.linspace(0, len(faces) - 1, max_faces).astype(np.int64)]
        tri = mesh.vertices[faces][:, :, [0, 2, 1]]  # plot (x, z, y): the MLP's y is up
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
        # (x, z, y) is a mirror of (x, y, z): the normals flip sign
        shade = 0.35 + 0.65 * np.clip(-normals @ light, 0, 1)
        colors = np.stack([0.55 * shade, 0.68 * shade, 0.85 * shade, np.ones_like(shade)], 1)
        ax.add_collection3d(Poly3DCollection(tri, facecolors=colors, edgecolors="none"))
        ax.set_xlim(center[0] - half, center[0] + half), ax.set_ylim(center[1] - half, center[1] + half)
        ax.set_zlim(center[2] - half, center[2] + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=20, azim=-60)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


@dataclass
class ShapeInterpolation:
    """One row per shape (``MESH_FIELDS``; ``within_0.01`` only for the decoded ends, against their
    inputs on the grid): input A, the ``steps`` decoded embeddings, input B; the
    meshes in the same order; the files written (none without ``out``)."""

    a: str
    b: str
    rows: list[dict]
    meshes: list = field(repr=False, default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def decoded_rows(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "decoded"]

    def summary_lines(self) -> list[str]:
        d = self.decoded_rows
        ok = sum(r["non_empty"] and r["watertight"] for r in d)
        one = sum(r["components"] == 1 for r in d)
        one_part = sum(r["parts"] == 1 for r in d)
        lines = [f"{r['shape']}: alpha {r['alpha']:.3f}, {r['faces']} faces, "
                 f"{'non-empty' if r['non_empty'] else 'EMPTY'}, {'closed' if r['watertight'] else 'not closed'}, "
                 f"{r['parts']} part{'' if r['parts'] == 1 else 's'} ({r['components']} "
                 f"component{'' if r['components'] == 1 else 's'})"
                 for r in self.rows]
        return lines + [f"{ok} of {len(d)} decoded steps give a non-empty closed mesh",
                        f"{one_part} of {len(d)} decoded steps are one connected part "
                        f"(components under {PART_SHARE:.0%} of the area aside; {one} with no such speck either)"]


def _shown_steps(steps: int, panels: int) -> list[int]:
    """Up to ``panels`` evenly spaced step indices of ``steps``, both ends included."""
    if steps <= panels:
        return list(range(steps))
    return sorted({round(i * (steps - 1) / (panels - 1)) for i in range(panels)})


#: the most steps of one interpolation between shapes (their grids are held together: 1 MiB each at 64^3)
MAX_SHAPE_STEPS = 1_000


def interpolate_shapes(run_dir, a: str, b: str, steps: int, out=None, device: str = "cpu", *,
                       resolution: int = 64, bound: float = 1.0, max_panels: int = 12,
                       which: str = "last") -> ShapeInterpolation:
    """Interpolate between the embeddings of zoo MLPs ``a`` and ``b`` of the SDF run ``run_dir``:
    ``steps`` embeddings ``lerp(z_a, z_b, alpha)``, alpha = linspace(0, 1, steps), decoded (batched),
    SDF on a ``resolution``^3 grid (batched), marching cubes. With ``out`` (a folder, created) writes
    ``input_a.ply``, ``step_000.ply`` ..., ``input_b.ply``, ``interpolation.png`` and
    ``interpolation.csv``. A decoded SDF with no zero crossing gives an empty mesh (a row with
    ``non_empty`` False), not an error. The PNG shows at most ``max_panels`` shapes: both inputs and
    evenly spaced steps, both ends included (every step has its .ply). ``which``: the run's ``"last"``
    weights (default: the paper stops training when the training MLPs reach the target and uses that
    model) or its ``"best"`` (best validation metric) weights."""
    from .space import SdfSpace

    resolution = _check_resolution(resolution)
    # the same rule as netspace interpolate on other runs; every step's SDF grid is held at once
    steps = check_steps(steps, limit=MAX_SHAPE_STEPS, step_bytes=4 * resolution ** 3, what="an SDF grid")
    if isinstance(max_panels, bool) or not isinstance(max_panels, int) or max_panels < 4:
        raise ValueError(f"max_panels: expected an int >= 4 (both inputs and both ends), got {max_panels!r}")
    if out is not None:
        from ..outputs import check_output

        out = check_output(out, folder=True, sub="interpolate")  # never a run or a zoo folder
        if out.exists() and not out.is_dir():
            raise ValueError(f"out: {str(out)!r} exists and is not a folder")
    if which not in ("last", "best"):
        raise ValueError(f"which: expected 'last' or 'best', got {which!r}")
    space = SdfSpace.load(run_dir, device=device, which=which)
    inputs = space.preps([a, b])
    with torch.no_grad():
        z = space.encode(inputs)
        alphas = torch.linspace(0, 1, steps, device=z.device)
        zs = torch.lerp(z[0:1], z[1:2], alphas[:, None])
    decoded = space.decode(zs)
    grids = sdf_grid(torch.cat([inputs[0:1], decoded, inputs[1:2]]), resolution, bound)
    meshes = [mesh_from_grid(g, bound) for g in grids]
    # how close the decoded ends are to their inputs: the paper's metric on the grid points
    ends = {1: float(((grids[1] - grids[0]).abs() <= 0.01).float().mean()),
            steps: float(((grids[steps] - grids[-1]).abs() <= 0.01).float().mean())}
    names = ["input_a"] + [f"step_{i:03d}" for i in range(steps)] + ["input_b"]
    rows = []
    for k, (name, mesh) in enumerate(zip(names, meshes)):
        decoded_row = 0 < k <= steps
        alpha = float(alphas[k - 1]) if decoded_row else (0.0 if k == 0 else 1.0)
        rows.append({"shape": name, "kind": "decoded" if decoded_row else "input",
                     "step": k - 1 if decoded_row else "", "alpha": alpha,
                     "id": a if k == 0 else (b if k == steps + 1 else ""), **mesh_stats(mesh),
                     "within_0.01": ends.get(k, ""), "file": f"{name}.ply" if out is not None else ""})
    result = ShapeInterpolation(a, b, rows, meshes)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, mesh in zip(names, meshes):
            result.files[name] = write_mesh(out / f"{name}.ply", mesh)
        shown = _shown_steps(steps, max_panels - 2)
        titles = [f"input A\n{a}"] + [f"alpha {float(alphas[i]):.2f}" for i in shown] + [f"input B\n{b}"]
        panels = [meshes[0]] + [meshes[1 + i] for i in shown] + [meshes[-1]]
        result.files["png"] = render_meshes(panels, titles, out / "interpolation.png", bound=bound)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=MESH_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(out / "interpolation.csv", buf.getvalue().encode())
        result.files["csv"] = out / "interpolation.csv"
    return result
