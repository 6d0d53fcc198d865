"""Shapes and signed-distance samples.

Three sources behind one interface, :class:`ShapeSet`, so that the fitter does not care where a
shape comes from:

- :class:`ProceduralChairs`: the embedded default, no download. Seeded random chairs made of
  axis-aligned boxes (seat, back, four legs, optional arms and stretchers), with EXACT signed
  distances. Outside the chair the distance to a union of boxes is the minimum of the boxes'
  distances (exact). Inside, that minimum is only a bound (it ignores that a face of one box can
  be buried in another box, e.g. the top of a leg under the seat), so inside points are computed
  exactly instead: the box coordinates cut space into a grid of cells each fully inside or fully
  outside the union, and the depth of a point is its distance to the nearest outside cell that
  touches an inside cell (:func:`union_sdf`).
- :class:`MeshShapes`: a folder of meshes (.obj, .off, .ply), read and normalized by trimesh
  (bounding-box centre at the origin, farthest vertex at radius 1/1.03, as DeepSDF does), signed
  distances by libigl (``igl.signed_distance``: pseudonormal signs for watertight meshes, winding
  numbers, with a warning, for the others), cached on disk as .npz (written atomically).
- :class:`NpzShapes`: DeepSDF sample files as the original code reads them: a folder of .npz
  files with arrays ``pos`` and ``neg`` (rows x, y, z, sdf); rows with a NaN sdf are dropped;
  every draw takes half of its points from ``pos`` and half from ``neg``.

Sampling of the procedural and mesh sources (DeepSDF's recipe): a pool of points per shape, of
which 47/50 are surface points perturbed by Gaussian noise (half with variance 0.0025, half with
variance 0.00025) and 3/50 are uniform in the cube [-1, 1]^3. Every fitting step draws its points
uniformly (with replacement) from the pool, as DeepSDF draws from its precomputed samples. The
held-out points that measure fit quality are a second, independent draw of the same mix (not in
the pool). For :class:`NpzShapes` the held-out points are a fraction of each file's rows (from
``pos`` and ``neg`` alike) that training never draws.

``ShapeSet.sample(index, n, generator)`` returns ``(points [n, 3] float32, sdf [n] float32)``;
``ShapeSet.heldout(index)`` the held-out points and distances.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..storage import atomic_write_bytes, sha256_file

__all__ = [
    "MESH_SUFFIXES",
    "NEAR_FRACTION",
    "NOISE_VARIANCES",
    "Chair",
    "MeshShapes",
    "NpzShapes",
    "ProceduralChairs",
    "SHAPES_INDEX",
    "ShapeSet",
    "box_sdf",
    "deepsdf_pool",
    "normalize_mesh",
    "make_chair",
    "open_shapes",
    "reopen_shapes",
    "union_sdf",
]

MESH_SUFFIXES = (".obj", ".off", ".ply")
#: DeepSDF's two noise scales around the surface (variances)
NOISE_VARIANCES = (0.0025, 0.00025)
#: fraction of a pool that is near-surface (the rest is uniform in the cube [-1, 1]^3)
NEAR_FRACTION = 47 / 50
#: DeepSDF's normalization: the farthest vertex lands at radius 1 / NORMALIZE_BUFFER
NORMALIZE_BUFFER = 1.03
#: a mesh folder's optional index (written by :func:`.catalog.extract_chairs`): a JSON list of records
#: with at least "file"; MeshShapes.describe() records the ATTRIBUTION_KEYS of its meshes' records
SHAPES_INDEX = "shapes.json"
ATTRIBUTION_KEYS = ("file", "name", "creator", "licence", "licence_text", "catalog", "model", "flagged")
_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]")


# ---------------------------------------------------------------------------------------------
# exact SDF of a union of axis-aligned boxes


def box_sdf(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Exact signed distance of ``points`` (N, 3) to each box [lo, hi] ((M, 3) each): (N, M)."""
    c = (lo + hi) / 2
    half = (hi - lo) / 2
    q = np.abs(points[:, None, :] - c[None]) - half[None]
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(-1), 0.0)
    return outside + inside


def _boundary_cells(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid cells (lo, hi bounds, (C, 3) each) outside the union of the boxes that share a face
    with an inside cell: the nearest outside point of any inside point lies in one of them."""
    edges, centers = [], []
    for a in range(3):
        c = np.unique(np.concatenate([lo[:, a], hi[:, a]]))
        e_lo = np.concatenate([[-np.inf], c])
        e_hi = np.concatenate([c, [np.inf]])
        mid = np.concatenate([[c[0] - 1.0], (c[:-1] + c[1:]) / 2, [c[-1] + 1.0]])
        edges.append((e_lo, e_hi))
        centers.append(mid)
    gx, gy, gz = np.meshgrid(*centers, indexing="ij")
    ctr = np.stack([gx, gy, gz], -1)  # (nx, ny, nz, 3)
    inside = np.zeros(ctr.shape[:3], dtype=bool)
    for b in range(lo.shape[0]):  # a cell centre is never on a box face: strict tests are exact
        inside |= np.all((ctr > lo[b]) & (ctr < hi[b]), axis=-1)
    touch = np.zeros_like(inside)
    for a in range(3):
        sl_lo = [slice(None)] * 3
        sl_hi = [slice(None)] * 3
        sl_lo[a], sl_hi[a] = slice(0, -1), slice(1, None)
        touch[tuple(sl_lo)] |= inside[tuple(sl_hi)]
        touch[tuple(sl_hi)] |= inside[tuple(sl_lo)]
    cells = np.argwhere(touch & ~inside)
    c_lo = np.stack([edges[a][0][cells[:, a]] for a in range(3)], -1)
    c_hi = np.stack([edges[a][1][cells[:, a]] for a in range(3)], -1)
    return c_lo, c_hi


def union_sdf(points: np.ndarray, lo: np.ndarray, hi: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Exact signed distance of ``points`` (N, 3) to the union of the boxes [lo[i], hi[i]].

    Outside: the minimum of the boxes' distances (the distance to a union is the minimum of the
    distances). Inside: minus the distance to the complement of the union, computed on the grid of
    cells that the box coordinates cut space into (each cell is entirely inside or outside the
    union): the distance to the nearest outside cell that touches an inside cell. (The minimum of
    the box SDFs would only be an upper bound there: it sees the faces of one box that are buried
    in another.)"""
    points = np.asarray(points, dtype=np.float64)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    d = box_sdf(points, lo, hi).min(1)
    ins = np.flatnonzero(d < 0)
    if ins.size:
        c_lo, c_hi = _boundary_cells(lo, hi)
        depth = np.empty(ins.size)
        for s in range(0, ins.size, chunk):
            p = points[ins[s:s + chunk]][:, None, :]
            gap = np.maximum(np.maximum(c_lo[None] - p, p - c_hi[None]), 0.0)
            depth[s:s + chunk] = np.sqrt((gap * gap).sum(-1)).min(1)
        d[ins] = -depth
    return d


# ---------------------------------------------------------------------------------------------
# procedural chairs


@dataclass(frozen=True)
class Chair:
    """A chair as a union of axis-aligned boxes ``lo[i]``..``hi[i]`` (normalized: bounding-box
    centre at the origin, farthest corner at radius 1/1.03); ``parts[i]`` names box i."""

    lo: np.ndarray
    hi: np.ndarray
    parts: tuple[str, ...]

    def sdf(self, points: np.ndarray) -> np.ndarray:
        return union_sdf(points, self.lo, self.hi)

    def surface_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniform on the boundary of the union (box faces, minus what other boxes cover)."""
        lo, hi = self.lo, self.hi
        size = hi - lo
        # the six faces of each box: axis a, side s; area = product of the two other sizes
        faces = [(b, a, s) for b in range(len(lo)) for a in range(3) for s in (0, 1)]
        area = np.array([np.prod(np.delete(size[b], a)) for b, a, s in faces])
        out: list[np.ndarray] = []
        have = 0
        while have < n:
            m = max(2 * (n - have), 256)
            f = rng.choice(len(faces), size=m, p=area / area.sum())
            fb = np.array([faces[i][0] for i in f])
            fa = np.array([faces[i][1] for i in f])
            fs = np.array([faces[i][2] for i in f])
            p = lo[fb] + rng.random((m, 3)) * size[fb]
            p[np.arange(m), fa] = np.where(fs == 1, hi[fb, fa], lo[fb, fa])
            # keep the points that no other box covers: a point just outside the face (along its
            # outward normal) must be outside every box, else the face is buried there (inside
            # another box, or glued to one, like the top of a leg under the seat)
            q = p.copy()
            q[np.arange(m), fa] += np.where(fs == 1, 1e-7, -1e-7)
            keep = p[box_sdf(q, lo, hi).min(1) > 0]
            out.append(keep)
            have += len(keep)
        return np.concatenate(out)[:n]


def make_chair(seed: int, *, arms: bool | None = None, stretchers: bool | None = None) -> Chair:
    """A random chair from ``seed`` (numpy's SeedSequence): seat, back, four legs, arms (with
    probability 0.4, or as given) and side stretchers (probability 0.5, or as given)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EA7]))
    u = rng.uniform
    w, d = u(0.40, 0.62), u(0.38, 0.60)       # seat width (x) and depth (z)
    ts, h = u(0.03, 0.07), u(0.35, 0.55)       # seat thickness, seat height (top of the legs)
    leg, inset = u(0.03, 0.06), u(0.0, 0.05)   # leg cross-section, inset from the seat's edges
    bh, bt = u(0.30, 0.60), u(0.03, 0.06)      # back height above the seat, back thickness
    bw = w * u(0.75, 1.0)
    arms = bool(rng.random() < 0.4) if arms is None else bool(arms)
    stretchers = bool(rng.random() < 0.5) if stretchers is None else bool(stretchers)
    boxes: list[tuple[list[float], list[float], str]] = []
    boxes.append(([-w / 2, h, -d / 2], [w / 2, h + ts, d / 2], "seat"))
    boxes.append(([-bw / 2, h + ts, -d / 2], [bw / 2, h + ts + bh, -d / 2 + bt], "back"))
    xs = (-w / 2 + inset, w / 2 - inset - leg)
    zs = (-d / 2 + inset, d / 2 - inset - leg)
    for i, x in enumerate(xs):
        for j, z in enumerate(zs):
            boxes.append(([x, 0.0, z], [x + leg, h, z + leg], f"leg{2 * i + j}"))
    if arms:
        ah, at = u(0.15, 0.25), u(0.03, 0.05)  # arm height above the seat, arm thickness
        for side, x in (("l", -w / 2), ("r", w / 2 - at)):
            boxes.append(([x, h + ts + ah, -d / 2 + bt], [x + at, h + ts + ah + at, d / 2], f"arm_{side}"))
            boxes.append(([x, h + ts, d / 2 - at], [x + at, h + ts + ah, d / 2], f"arm_support_{side}"))
    if stretchers:
        sy, st = u(0.08, 0.2) * h / 0.45, u(0.02, 0.035)
        for i, x in enumerate(xs):
            boxes.append(([x + (leg - st) / 2, sy, zs[0] + leg], [x + (leg + st) / 2, sy + st, zs[1]],
                          f"stretcher{i}"))
    lo = np.array([b[0] for b in boxes], dtype=np.float64)
    hi = np.array([b[1] for b in boxes], dtype=np.float64)
    centre = (lo.min(0) + hi.max(0)) / 2
    lo, hi = lo - centre, hi - centre
    corners = np.concatenate([lo, hi, np.stack([lo[:, 0], lo[:, 1], hi[:, 2]], -1),
                              np.stack([lo[:, 0], hi[:, 1], lo[:, 2]], -1), np.stack([hi[:, 0], lo[:, 1], lo[:, 2]], -1),
                              np.stack([hi[:, 0], hi[:, 1], lo[:, 2]], -1), np.stack([hi[:, 0], lo[:, 1], hi[:, 2]], -1),
                              np.stack([lo[:, 0], hi[:, 1], hi[:, 2]], -1)])
    scale = 1.0 / (np.linalg.norm(corners, axis=1).max() * NORMALIZE_BUFFER)
    return Chair(lo * scale, hi * scale, tuple(b[2] for b in boxes))


# ---------------------------------------------------------------------------------------------
# DeepSDF-style pools


def deepsdf_pool(surface: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` query points: 47/50 near the surface (surface points plus Gaussian noise, half of them
    with variance 0.0025, half with 0.00025), 3/50 uniform in [-1, 1]^3. ``surface`` (S, 3) is
    drawn from with replacement."""
    n_near = int(round(n * NEAR_FRACTION))
    n_a = n_near // 2
    idx = rng.integers(0, len(surface), size=n_near)
    p = surface[idx].copy()
    std = np.where(np.arange(n_near) < n_a, math.sqrt(NOISE_VARIANCES[0]), math.sqrt(NOISE_VARIANCES[1]))
    p += rng.standard_normal((n_near, 3)) * std[:, None]
    uni = rng.uniform(-1.0, 1.0, size=(n - n_near, 3))
    return np.concatenate([p, uni])


# ---------------------------------------------------------------------------------------------
# the common interface


def _safe_id(name: str) -> str:
    s = _ID_SAFE.sub("_", name).lstrip("._-") or "shape"
    return s[:180]


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")


class ShapeSet:
    """Shapes with signed-distance samples. Subclasses fill ``ids`` (one unique, zoo-safe id per
    shape) and ``names`` (what the shape is called at its source), and implement :meth:`_pool`
    (training points, held-out points) or override :meth:`sample`/:meth:`heldout`."""

    ids: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def _check_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        if not 0 <= int(index) < len(self):
            raise IndexError(f"index: {index} is out of range for {len(self)} shapes")
        return int(index)

    # pools are built on first use and kept until released (the fitter releases a group's pools
    # once the group is done)
    def _pools(self) -> dict:
        if not hasattr(self, "_pool_cache"):
            self._pool_cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        return self._pool_cache

    def _get(self, index: int):
        cache = self._pools()
        if index not in cache:
            pts, sdf, hpts, hsdf = self._pool(index)
            cache[index] = (torch.as_tensor(pts, dtype=torch.float32).contiguous(),
                            torch.as_tensor(sdf, dtype=torch.float32).contiguous(),
                            torch.as_tensor(hpts, dtype=torch.float32).contiguous(),
                            torch.as_tensor(hsdf, dtype=torch.float32).contiguous())
        return cache[index]

    def _pool(self, index: int):
        raise NotImplementedError

    def release(self, indices=None) -> None:
        """Forget the pools of ``indices`` (all with None): memory for the next group of shapes."""
        cache = self._pools()
        for i in (list(cache) if indices is None else indices):
            cache.pop(int(i), None)

    def sample(self, index: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training points of shape ``index`` drawn with ``generator``: (points (n, 3), sdf (n,)),
        float32 on the CPU."""
        index = self._check_index(index)
        _check_generator(generator)
        pts, sdf = self._get(index)[:2]
        idx = torch.randint(0, pts.shape[0], (int(n),), generator=generator)
        return pts[idx], sdf[idx]

    def heldout(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out points of shape ``index`` (never drawn by :meth:`sample`): (points, sdf)."""
        index = self._check_index(index)
        return self._get(index)[2:]

    def describe(self) -> dict:
        """What the set is, as JSON (recorded in the zoo's config)."""
        raise NotImplementedError


class ProceduralChairs(ShapeSet):
    """``n`` procedural chairs from ``seed`` (chair i from SeedSequence(seed, i)); pools of
    ``pool_size`` points and ``heldout_size`` held-out points per chair, exact distances."""

    def __init__(self, n: int, seed: int = 0, *, pool_size: int = 100_000, heldout_size: int = 20_000) -> None:
        for name, v in (("n", n), ("seed", seed), ("pool_size", pool_size), ("heldout_size", heldout_size)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected an int, got {v!r}")
        if n < 1 or pool_size < 1 or heldout_size < 1:
            raise ValueError(f"n, pool_size, heldout_size: expected >= 1, got {n}, {pool_size}, {heldout_size}")
        self.n, self.seed, self.pool_size, self.heldout_size = n, seed, pool_size, heldout_size
        self.ids = [f"chair-{i:04d}" for i in range(n)]
        self.names = list(self.ids)

    def chair(self, index: int) -> Chair:
        return make_chair(self.seed * 1_000_003 + self._check_index(index))

    def _pool(self, index: int):
        chair = self.chair(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index, 1]))
        surf = chair.surface_points(max(self.pool_size // 2, 1000), rng)
        pts = deepsdf_pool(surf, self.pool_size, rng)
        hrng = np.random.default_rng(np.random.SeedSequence([self.seed, index, 2]))
        hsurf = chair.surface_points(max(self.heldout_size // 2, 1000), hrng)
        hpts = deepsdf_pool(hsurf, self.heldout_size, hrng)
        return pts, chair.sdf(pts), hpts, chair.sdf(hpts)

    def describe(self) -> dict:
        return {"source": "procedural", "n": self.n, "seed": self.seed, "pool_size": self.pool_size,
                "heldout_size": self.heldout_size}


def normalize_mesh(mesh):
    """``mesh`` (a trimesh, changed in place and returned) moved and scaled as DeepSDF does: the
    bounding-box centre at the origin, the farthest vertex at radius 1 / NORMALIZE_BUFFER."""
    mesh.apply_translation(-mesh.bounds.mean(0))
    mesh.apply_scale(1.0 / (np.linalg.norm(mesh.vertices, axis=1).max() * NORMALIZE_BUFFER))
    return mesh


def _load_mesh(path: Path):
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh", process=True)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for a bad file
        raise ValueError(f"{path}: unreadable mesh ({type(e).__name__}: {e})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise ValueError(f"{path}: empty mesh (no triangles); expected a mesh with faces")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"{path}: mesh has non-finite vertex coordinates")
    if float(mesh.area) <= 0.0:
        raise ValueError(f"{path}: empty mesh (zero surface area)")
    return mesh


def _unique_ids(names: list[str]) -> list[str]:
    ids, seen = [], set()
    for n in names:
        base = _safe_id(n)
        i, cand = 1, base
        while cand in seen:
            i += 1
            cand = f"{base}-{i}"
        seen.add(cand)
        ids.append(cand)
    return ids


def _list_folder(folder, suffixes: tuple[str, ...], what: str, arg: str) -> list[Path]:
    if isinstance(folder, (str, os.PathLike)):
        folder = Path(folder)
    else:
        raise TypeError(f"{arg}: expected a folder path, got {type(folder).__name__}")
    if not folder.exists():
        raise FileNotFoundError(f"{arg}: folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{arg}: {str(folder)!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"{arg}: folder {str(folder)!r} has no {what} (expected files ending in "
                         f"{', '.join(suffixes)})")
    return files


def _read_attribution(folder: Path, names: list[str]) -> list[dict] | None:
    """The ATTRIBUTION_KEYS of the records of ``folder``'s SHAPES_INDEX for the files ``names`` (in
    their order; a file without a record is left out); None without an index."""
    path = folder / SHAPES_INDEX
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable shape index ({type(e).__name__}: {e})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and isinstance(r.get("file"), str) for r in data):
        raise ValueError(f"{path}: expected a list of records with a 'file' each (the shape index of "
                         f"netspace shapes extract-chairs)")
    by_file = {r["file"]: r for r in data}
    return [{k: by_file[n].get(k) for k in ATTRIBUTION_KEYS} for n in names if n in by_file]


class MeshShapes(ShapeSet):
    """The meshes (.obj, .off, .ply) of ``folder``, sorted by file name, normalized to the unit
    sphere and sampled as DeepSDF does; signed distances by libigl, cached in ``cache_dir`` (one
    .npz per mesh, keyed by the file's sha256 and the sampling parameters; None: no cache).
    Every mesh is read when the set is made: an empty or unreadable one is a ValueError naming it.
    A ``shapes.json`` in the folder (:data:`SHAPES_INDEX`, from ``netspace shapes extract-chairs``)
    adds the meshes' creators and licences to :meth:`describe` (key ``attribution``)."""

    def __init__(self, folder, *, cache_dir=None, seed: int = 0, pool_size: int = 100_000,
                 heldout_size: int = 20_000) -> None:
        self.files = _list_folder(folder, MESH_SUFFIXES, "meshes", "shapes")
        self.folder = Path(folder)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.seed, self.pool_size, self.heldout_size = int(seed), int(pool_size), int(heldout_size)
        self.names = [p.name for p in self.files]
        self.ids = _unique_ids([p.stem for p in self.files])
        self.sha = [sha256_file(p) for p in self.files]
        self.attribution = _read_attribution(self.folder, self.names)
        for i, p in enumerate(self.files):  # fail early, naming the file (a cached mesh was read before)
            cached = self._cache_path(i)
            if cached is None or not cached.is_file():
                _load_mesh(p)

    def _cache_path(self, index: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps([self.sha[index], self.seed, self.pool_size, self.heldout_size,
                                         NOISE_VARIANCES, NEAR_FRACTION, NORMALIZE_BUFFER]).encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.ids[index]}-{key}.npz"

    def normalized_mesh(self, index: int):
        """The trimesh of shape ``index``: bounding-box centre at the origin, farthest vertex at 1/1.03."""
        return normalize_mesh(_load_mesh(self.files[self._check_index(index)]))

    def _signed_distance(self, mesh, points: np.ndarray, path: Path) -> np.ndarray:
        import igl

        if mesh.is_watertight:
            kind = igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL
        else:
            warnings.warn(f"{path}: mesh is not watertight; signs of its distances come from winding numbers",
                          stacklevel=3)
            kind = igl.SIGNED_DISTANCE_TYPE_WINDING_NUMBER
        v = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
        f = np.ascontiguousarray(mesh.faces, dtype=np.int64)
        return igl.signed_distance(np.ascontiguousarray(points, dtype=np.float64), v, f, kind)[0]

    def _pool(self, index: int):
        cache = self._cache_path(index)
        if cache is not None and cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    return z["points"], z["sdf"], z["heldout_points"], z["heldout_sdf"]
            except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
                pass
        import trimesh

        mesh = self.normalized_mesh(index)
        out = []
        for k, n in ((1, self.pool_size), (2, self.heldout_size)):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, index, k]))
            surf = trimesh.sample.sample_surface(mesh, max(n // 2, 1000), seed=int(rng.integers(0, 2**31)))[0]
            pts = deepsdf_pool(np.asarray(surf, dtype=np.float64), n, rng)
            out += [pts.astype(np.float32), self._signed_distance(mesh, pts, self.files[index]).astype(np.float32)]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, points=out[0], sdf=out[1], heldout_points=out[2], heldout_sdf=out[3])
            atomic_write_bytes(cache, buf.getvalue())
        return tuple(out)

    def describe(self) -> dict:
        d = {"source": "meshes", "folder": str(self.folder.resolve()), "files": self.names,
             "sha256": self.sha, "seed": self.seed, "pool_size": self.pool_size,
             "heldout_size": self.heldout_size}
        if self.attribution is not None:  # only with a shapes.json: older descriptions stay equal
            d["attribution"] = self.attribution
        return d


def _read_samples(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "pos" not in keys or "neg" not in keys:
                raise ValueError(f"{path}: expected a DeepSDF sample file with arrays 'pos' and 'neg', got arrays "
                                 f"{keys}")
            pos, neg = z["pos"], z["neg"]
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable .npz ({e})") from None
    except Exception as e:  # noqa: BLE001 - zipfile / numpy errors of a damaged file
        raise ValueError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from None
    out = []
    for name, a in (("pos", pos), ("neg", neg)):
        if a.ndim != 2 or a.shape[1] != 4 or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{path}: array {name!r}: expected rows of x, y, z, sdf (shape (n, 4), floats), "
                             f"got shape {a.shape} dtype {a.dtype}")
        a = a[~np.isnan(a[:, 3])].astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: array {name!r} has non-finite coordinates or distances")
        if len(a) < 2:
            raise ValueError(f"{path}: array {name!r} has {len(a)} rows with a finite sdf; expected at least 2")
        out.append(a)
    return out[0], out[1]


class NpzShapes(ShapeSet):
    """DeepSDF sample files: the .npz files of ``folder`` (sorted by name), each with ``pos`` and
    ``neg`` (rows x, y, z, sdf; NaN-sdf rows dropped). :meth:`sample` draws half of its points from
    ``pos`` and half from ``neg`` (with replacement, as DeepSDF's ``unpack_sdf_samples``); a seeded
    ``heldout_fraction`` of each array's rows (at most ``max_heldout`` rows in all) is held out.
    Every file is read when the set is made (a file without ``pos``/``neg`` is a ValueError naming it)."""

    def __init__(self, folder, *, seed: int = 0, heldout_fraction: float = 0.1, max_heldout: int = 20_000) -> None:
        self.files = _list_folder(folder, (".npz",), "DeepSDF sample files", "shapes")
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction: expected a number in (0, 1), got {heldout_fraction!r}")
        self.folder = Path(folder)
        self.seed, self.heldout_fraction, self.max_heldout = int(seed), float(heldout_fraction), int(max_heldout)
        self.names = [p.name for p in self.files]
        self.ids = _unique_ids([p.stem for p in self.files])
        self.sha = [sha256_file(p) for p in self.files]
        for p in self.files:
            _read_samples(p)

    def _get(self, index: int):
        cache = self._pools()
        if index not in cache:
            pos, neg = _read_samples(self.files[index])
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, index, 3]))
            parts = []
            for a in (pos, neg):
                k = min(max(1, int(len(a) * self.heldout_fraction)), max(1, self.max_heldout // 2), len(a) - 1)
                perm = rng.permutation(len(a))
                parts.append((torch.from_numpy(a[perm[k:]]), torch.from_numpy(a[perm[:k]])))
            (ptr, pho), (ntr, nho) = parts
            ho = torch.cat([pho, nho])
            cache[index] = (ptr.contiguous(), ntr.contiguous(), ho[:, :3].contiguous(), ho[:, 3].contiguous())
        return cache[index]

    def sample(self, index: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._check_index(index)
        _check_generator(generator)
        pos, neg = self._get(index)[:2]
        half = int(n) // 2
        ip = torch.randint(0, pos.shape[0], (int(n) - half,), generator=generator)
        ineg = torch.randint(0, neg.shape[0], (half,), generator=generator)
        rows = torch.cat([pos[ip], neg[ineg]])
        return rows[:, :3].contiguous(), rows[:, 3].contiguous()

    def describe(self) -> dict:
        return {"source": "deepsdf-npz", "folder": str(self.folder.resolve()), "files": self.names,
                "sha256": self.sha, "seed": self.seed, "heldout_fraction": self.heldout_fraction,
                "max_heldout": self.max_heldout}


def open_shapes(source, *, n: int = 32, seed: int = 0, pool_size: int = 100_000, heldout_size: int = 20_000,
                cache_dir=None) -> ShapeSet:
    """The shape set named by ``source``: ``"procedural"`` (``n`` chairs), a folder of .npz DeepSDF
    sample files, or a folder of meshes (a folder holding .npz files is read as sample files)."""
    if isinstance(source, ShapeSet):
        return source
    if source == "procedural":
        return ProceduralChairs(n, seed, pool_size=pool_size, heldout_size=heldout_size)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"shapes: expected 'procedural', a folder path or a ShapeSet, got {type(source).__name__}")
    folder = Path(source)
    if folder.is_dir() and any(p.suffix.lower() == ".npz" for p in folder.iterdir() if p.is_file()):
        return NpzShapes(folder, seed=seed, max_heldout=heldout_size)
    return MeshShapes(folder, cache_dir=cache_dir, seed=seed, pool_size=pool_size, heldout_size=heldout_size)


def reopen_shapes(description: dict, *, cache_dir=None) -> ShapeSet:
    """The shape set whose :meth:`ShapeSet.describe` is ``description`` (a zoo's recorded shapes), built
    again: procedural chairs regenerated, mesh and .npz folders reread (mesh samples from
    ``cache_dir``). A description of no known source, a folder that is gone, or files that changed
    since (their sha256) is a ValueError."""
    d = description
    if not isinstance(d, dict) or "source" not in d:
        raise ValueError(f"description: expected a ShapeSet.describe() dict, got {d!r}")
    try:
        if d["source"] == "procedural":
            shapes = ProceduralChairs(d["n"], d["seed"], pool_size=d["pool_size"], heldout_size=d["heldout_size"])
        elif d["source"] == "meshes":
            shapes = MeshShapes(d["folder"], cache_dir=cache_dir, seed=d["seed"], pool_size=d["pool_size"],
                                heldout_size=d["heldout_size"])
        elif d["source"] == "deepsdf-npz":
            shapes = NpzShapes(d["folder"], seed=d["seed"], heldout_fraction=d["heldout_fraction"],
                               max_heldout=d["max_heldout"])
        else:
            raise ValueError(f"unknown shape source {d['source']!r}")
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"cannot be reopened ({type(e).__name__}: {e})") from None
    if shapes.describe() != d:
        raise ValueError(f"changed since they were described (folder {d.get('folder', d['source'])!r})")
    return shapes
