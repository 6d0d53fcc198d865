"""Real chair meshes from Sweet Home 3D furniture catalogs (``.sh3f``), for :class:`.shapes.MeshShapes`.

A ``.sh3f`` file is a zip holding a Java ``.properties`` index (``PluginFurnitureCatalog.properties``:
Latin-1, ``\\uXXXX`` escapes, ``\\`` line continuations, ``#``/``!`` comments; keys ``name#i``,
``model#i``, ``creator#i``, ``category#i``, ``width#i``/``depth#i``/``height#i``, ``modelRotation#i``,
``license#i`` where a model has its own licence, else the catalog's ``license``) and a folder per
model (OBJ + MTL + textures). :func:`extract_chairs` reads one catalog or a folder of them, keeps
the models whose name contains "chair" (minus :data:`CHAIR_NAME_OUTLIERS`) under the licences asked
for (:data:`LICENCES`: ``cc0``, ``cc-by``; a model under any other or an unknown licence is never
kept), and writes each chair's geometry as a binary ``.ply`` plus ``shapes.json`` (who made it, its
licence, how it was read), a folder that :class:`.shapes.MeshShapes` reads (its ``describe()``
then records the attribution).

Each model is read as geometry only (materials and textures ignored), turned by its
``modelRotation`` (a 3x3 matrix, 9 numbers row-major as Sweet Home 3D writes them, applied to column
vectors: v' = M v; after it every model is Y-up with its front towards +Z, the Sweet Home 3D
convention, the procedural chairs' too: on the real chairs the six rotated ones come out upright
with the catalog's proportions and every chair with a tall back has it towards -Z), and its vertices merged by position (texture seams and
normal creases split them: merging makes meshes watertight that are closed but were cut at seams).

Sign quality (:func:`ambiguous_fraction`): the meshes are not all closed, so the signs of their
distances come from generalized winding numbers; where a mesh has holes, open sheets or flipped
faces, the winding number near its surface lies between 0 and 1 and inside/outside is ambiguous.
The fraction of near-surface sample points (the near part of the DeepSDF pool that MeshShapes
draws, on the normalized mesh) whose winding number lies in :data:`AMBIGUOUS_BAND` measures that;
a chair over ``max_ambiguous`` (:data:`MAX_AMBIGUOUS`) is dropped with a warning naming it, or kept
and recorded as ``flagged`` with ``keep_unreliable=True``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..storage import TMP_PREFIX, atomic_write_bytes
from .shapes import NEAR_FRACTION, SHAPES_INDEX, _unique_ids, deepsdf_pool, normalize_mesh

__all__ = [
    "AMBIGUOUS_BAND",
    "CHAIR_NAME_OUTLIERS",
    "LICENCES",
    "MAX_AMBIGUOUS",
    "PROPERTIES_NAMES",
    "CatalogModel",
    "ambiguous_fraction",
    "catalog_files",
    "chair_outlier",
    "dump_properties",
    "escape_property",
    "extract_chairs",
    "licence_kind",
    "load_model",
    "parse_licence_filter",
    "parse_properties",
    "read_catalog",
    "select_chairs",
]

#: the licences a chair may be kept under: Creative Commons Zero / public domain, Creative Commons
#: Attribution (any version; the creator and the licence text are recorded for attribution)
LICENCES = ("cc0", "cc-by")
#: names (case-insensitive, whole name) that contain "chair" but are not a chair to fit, and why
CHAIR_NAME_OUTLIERS = {
    "wheelchair": "a wheelchair (a vehicle: wheels, push handles), not a chair",
    "armchair ottoman": "an armchair and a separate footstool in one model",
    "baby high chair": "a feeding high chair (tray, tall frame), not a chair",
}
#: winding numbers in this closed band mean "inside or outside is ambiguous"
AMBIGUOUS_BAND = (0.2, 0.8)
#: default largest fraction of near-surface points with an ambiguous winding number: over it a
#: mesh's signs are unreliable (dropped, or kept as flagged). A closed mesh measures ~0. On the 56
#: chairs of the Debian sweethome3d-furniture catalogs (outliers aside) 49 measure 0 to 0.024 and
#: the others 0.05, 0.05, 0.07, 0.14, 0.18, 0.18, 0.43: 0.03 lies in the gap, well clear of the
#: measurement's seed-to-seed spread (about +-0.003); 0.05 would split two chairs by chance
MAX_AMBIGUOUS = 0.03
#: the index file of a catalog, first found wins
PROPERTIES_NAMES = ("PluginFurnitureCatalog.properties", "ContributedFurnitureCatalog.properties",
                    "DefaultFurnitureCatalog.properties")


# ---------------------------------------------------------------------------------------------
# Java .properties (java.util.Properties.load: Latin-1 bytes, escapes, continuations)

_WS = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_HEX = set("0123456789abcdefABCDEF")


def _continues(line: str) -> bool:
    """An odd number of trailing backslashes: the last one joins the next line."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _logical_lines(text: str) -> Iterable[str]:
    lines = re.split(r"\r\n|\r|\n", text)
    i = 0
    while i < len(lines):
        line = lines[i].lstrip(_WS)
        i += 1
        if not line or line[0] in "#!":  # a comment line is never continued
            continue
        while _continues(line):
            line = line[:-1]
            if i >= len(lines):
                break
            line += lines[i].lstrip(_WS)  # a continuation line's leading white space is dropped
            i += 1
        yield line


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
        elif i + 1 == len(s):  # a lone backslash at the very end is dropped
            i += 1
        elif s[i + 1] == "u":
            h = s[i + 2:i + 6]
            if len(h) < 4 or not set(h) <= _HEX:
                raise ValueError(f"malformed \\uxxxx escape {s[i:i + 6]!r}")
            out.append(chr(int(h, 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(s[i + 1], s[i + 1]))
            i += 2
    text = "".join(out)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # \ud83d\ude00: a UTF-16 surrogate pair, as in Java
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def parse_properties(text) -> dict[str, str]:
    """The key -> value mapping of a Java ``.properties`` text (``bytes`` are decoded as Latin-1, as
    ``java.util.Properties.load(InputStream)`` does): ``#``/``!`` comment lines, ``key=value``,
    ``key: value`` or ``key value``, ``\\`` at the end of a line continues it (the next line's
    leading white space dropped), escapes ``\\t \\n \\r \\f \\uXXXX`` and ``\\x`` -> x. A later key
    wins. A malformed ``\\u`` escape is a ValueError naming the line."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("latin-1")
    if not isinstance(text, str):
        raise TypeError(f"text: expected str or bytes, got {type(text).__name__}")
    out: dict[str, str] = {}
    for line in _logical_lines(text):
        j = 0
        while j < len(line) and line[j] not in "=:" + _WS:
            j += 2 if line[j] == "\\" else 1
        j = min(j, len(line))
        k = j
        while k < len(line) and line[k] in _WS:
            k += 1
        if k < len(line) and line[k] in "=:":
            k += 1
            while k < len(line) and line[k] in _WS:
                k += 1
        try:
            out[_unescape(line[:j])] = _unescape(line[k:])
        except ValueError as e:
            raise ValueError(f"properties line {line[:60]!r}: {e}") from None
    return out


def escape_property(s: str, *, key: bool = False) -> str:
    """``s`` written for a ``.properties`` file in ASCII (as ``Properties.store`` does): backslash,
    separators and comment characters escaped, control and non-ASCII characters as ``\\uXXXX``
    (UTF-16 units), spaces escaped in a key and at the start of a value."""
    out = []
    for i, c in enumerate(s):
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif c in "\t\n\r\f":
            out.append("\\" + "tnrf"["\t\n\r\f".index(c)])
        elif c in "=:#!":
            out.append("\\" + c)
        elif c == " " and (key or i == 0):
            out.append("\\ ")
        elif o < 0x20 or o > 0x7E:
            units = c.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{int.from_bytes(units[k:k + 2], 'big'):04X}" for k in range(0, len(units), 2))
        else:
            out.append(c)
    return "".join(out)


def dump_properties(items: dict[str, str]) -> str:
    """``key=value`` lines that :func:`parse_properties` reads back as ``items``."""
    return "".join(f"{escape_property(k, key=True)}={escape_property(v)}\n" for k, v in items.items())


# ---------------------------------------------------------------------------------------------
# licences

_NOT_PLAIN_BY = re.compile(r"share\s*-?\s*alike|non\s*-?\s*commercial|no\s*-?\s*deriv|\bcc[- ]by[- ](sa|nc|nd)\b")


def licence_kind(text: str | None) -> str | None:
    """``"cc0"`` (Creative Commons Zero, public domain), ``"cc-by"`` (Creative Commons Attribution,
    no ShareAlike / NonCommercial / NoDerivatives term) or None (anything else, or no text)."""
    if not text:
        return None
    t = " ".join(text.lower().split())
    if _NOT_PLAIN_BY.search(t):
        return None
    if re.search(r"public domain|\bcc-?0\b|creative commons zero", t):
        return "cc0"
    if re.search(r"creative commons attribution|\bcc[- ]by\b", t):
        return "cc-by"
    return None


def parse_licence_filter(spec) -> frozenset[str]:
    """``"cc0"``, ``"cc0,cc-by"`` (or a list of names) as a set of :data:`LICENCES`; an unknown or
    empty name is a ValueError naming ``license``."""
    if isinstance(spec, str):
        names = [s.strip().lower() for s in spec.split(",")]
    elif isinstance(spec, Iterable):
        names = [str(s).strip().lower() for s in spec]
    else:
        raise TypeError(f"license: expected a string such as 'cc0,cc-by', got {type(spec).__name__}")
    bad = [n for n in names if n not in LICENCES]
    if bad or not names:
        raise ValueError(f"license: unknown licence {', '.join(map(repr, bad)) or 'list (empty)'}; expected a "
                         f"comma-separated list of {', '.join(LICENCES)}")
    return frozenset(names)


# ---------------------------------------------------------------------------------------------
# catalogs


@dataclass(frozen=True)
class CatalogModel:
    """One piece of furniture of a catalog. ``model``: its path inside the zip (as written, may start
    with ``/``); ``rotation``: the ``modelRotation`` text (None: no rotation); ``licence``: the kind
    (:func:`licence_kind`) of ``licence_text`` (the model's ``license#i``, else the catalog's);
    ``width``/``depth``/``height``: its size in the catalog (cm; x, z, y of the rotated model)."""

    catalog: str
    index: int
    id: str | None
    name: str
    category: str | None
    creator: str | None
    licence: str | None
    licence_text: str | None
    model: str
    rotation: str | None
    width: float | None
    depth: float | None
    height: float | None

    @property
    def label(self) -> str:
        """How messages name it: ``catalog.sh3f:/path/model.obj ('Name')``."""
        return f"{Path(self.catalog).name}:{self.model} ({self.name!r})"

    def rotation_matrix(self) -> np.ndarray | None:
        """The 3x3 ``modelRotation`` (rows as written), None without one; a ValueError naming the
        model if it is not 9 finite numbers."""
        if self.rotation is None:
            return None
        try:
            m = np.array([float(v) for v in self.rotation.replace(",", " ").split()], dtype=np.float64)
        except ValueError:
            m = np.array([])
        if m.shape != (9,) or not np.isfinite(m).all():
            raise ValueError(f"{self.label}: modelRotation {self.rotation!r}: expected 9 numbers (a 3x3 matrix)")
        return m.reshape(3, 3)


def _number(v: str | None) -> float | None:
    try:
        x = float(v) if v is not None else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _open_catalog(path: Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a Sweet Home 3D furniture catalog (not a zip file)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a Sweet Home 3D furniture catalog (unreadable zip: {e})") from None


def read_catalog(path) -> list[CatalogModel]:
    """The models of the catalog ``path`` (a ``.sh3f`` zip), in index order. Not a zip, or a zip
    without :data:`PROPERTIES_NAMES`, is a ValueError naming the file. Entries without a name or a
    model are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sources: catalog {str(path)!r} does not exist")
    with _open_catalog(path) as z:
        names = set(z.namelist())
        prop = next((n for n in PROPERTIES_NAMES if n in names), None)
        if prop is None:
            raise ValueError(f"{path}: not a Sweet Home 3D furniture catalog (no {PROPERTIES_NAMES[0]} in the zip)")
        try:
            props = parse_properties(z.read(prop))
        except ValueError as e:
            raise ValueError(f"{path}: {prop}: {e}") from None
    indices = sorted({int(m.group(1)) for k in props if (m := re.fullmatch(r"name#(\d+)", k))})
    out = []
    for i in indices:
        def get(key: str, i=i) -> str | None:
            v = props.get(f"{key}#{i}")
            return v if v not in (None, "") else None

        name, model = get("name"), get("model")
        if name is None or model is None:
            continue
        text = get("license") or props.get("license") or None
        out.append(CatalogModel(catalog=str(path), index=i, id=get("id"), name=name, category=get("category"),
                                creator=get("creator"), licence=licence_kind(text), licence_text=text, model=model,
                                rotation=get("modelRotation"), width=_number(get("width")),
                                depth=_number(get("depth")), height=_number(get("height"))))
    return out


def catalog_files(sources) -> list[Path]:
    """``sources`` (a catalog, a folder of ``*.sh3f`` catalogs, or a list of either) as catalog paths."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not isinstance(sources, Iterable):
        raise TypeError(f"sources: expected a catalog or folder path, got {type(sources).__name__}")
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if not p.exists():
            raise FileNotFoundError(f"sources: {str(p)!r} does not exist")
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() == ".sh3f")
            if not found:
                raise ValueError(f"sources: folder {str(p)!r} has no Sweet Home 3D catalogs (*.sh3f)")
            files += found
        else:
            files.append(p)
    if not files:
        raise ValueError("sources: no catalog given")
    return files


def chair_outlier(name: str) -> str | None:
    """Why a model named ``name`` (containing "chair") is not kept as a chair, None if it is one."""
    return CHAIR_NAME_OUTLIERS.get(" ".join(name.lower().split()))


def select_chairs(models: Iterable[CatalogModel]) -> tuple[list[CatalogModel], list[tuple[CatalogModel, str]]]:
    """(chairs, outliers): the models whose name contains "chair" (any case), minus the
    :data:`CHAIR_NAME_OUTLIERS` (returned apart with the reason)."""
    chairs, outliers = [], []
    for m in models:
        if "chair" in m.name.lower():
            why = chair_outlier(m.name)
            (outliers.append((m, why)) if why else chairs.append(m))
    return chairs, outliers


# ---------------------------------------------------------------------------------------------
# geometry


def load_model(model: CatalogModel):
    """The geometry of ``model`` as one trimesh (materials and textures ignored), turned by its
    rotation (faces reversed if the matrix mirrors) and with its vertices merged by position. A
    model that cannot be read is a ValueError naming it."""
    import trimesh

    member = model.model.lstrip("/")
    suffix = Path(member).suffix.lower().lstrip(".")
    if suffix not in ("obj", "ply", "off", "stl"):
        raise ValueError(f"{model.label}: unsupported model format {suffix or '(none)'!r}")
    with _open_catalog(Path(model.catalog)) as z:
        try:
            data = z.read(member)
        except KeyError:
            raise ValueError(f"{model.label}: model file {member!r} is not in the catalog") from None
        except (zipfile.BadZipFile, OSError, RuntimeError) as e:
            raise ValueError(f"{model.label}: cannot read {member!r} ({e})") from None
    kw = {"skip_materials": True} if suffix == "obj" else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mesh = trimesh.load(io.BytesIO(data), file_type=suffix, force="mesh", process=True, **kw)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for a bad file
        raise ValueError(f"{model.label}: unreadable mesh ({type(e).__name__}: {e})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{model.label}: empty mesh (no triangles)")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"{model.label}: mesh has non-finite vertex coordinates")
    rot = model.rotation_matrix()
    v, f = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    if rot is not None:
        v = v @ rot.T
        if np.linalg.det(rot) < 0:
            f = f[:, ::-1]
    mesh = trimesh.Trimesh(v, f, process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    mesh.remove_unreferenced_vertices()
    if float(mesh.area) <= 0.0:
        raise ValueError(f"{model.label}: empty mesh (zero surface area)")
    return mesh


def ambiguous_fraction(mesh, *, n: int = 20_000, seed: int = 0) -> float:
    """The fraction of near-surface points whose generalized winding number lies in
    :data:`AMBIGUOUS_BAND` (libigl's fast winding number): the near part of a DeepSDF pool of ``n``
    points (surface points plus Gaussian noise) on the mesh normalized as MeshShapes does. ~0 for a
    closed, consistently oriented mesh."""
    import igl
    import trimesh

    m = normalize_mesh(trimesh.Trimesh(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces),
                                       process=False))
    v = m.vertices
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA3B1]))
    surf = trimesh.sample.sample_surface(m, max(n // 2, 1000), seed=int(rng.integers(0, 2**31)))[0]
    pts = deepsdf_pool(np.asarray(surf, dtype=np.float64), n, rng)[:int(round(n * NEAR_FRACTION))]
    w = igl.fast_winding_number(np.ascontiguousarray(v), np.ascontiguousarray(m.faces, dtype=np.int64),
                                np.ascontiguousarray(pts))
    lo, hi = AMBIGUOUS_BAND
    return float(np.mean((w >= lo) & (w <= hi)))


def _proportion_error(extent: np.ndarray, model: CatalogModel) -> float | None:
    """How far the rotated mesh's bounding box (x, y, z) is from the catalog's width, height, depth
    in proportion: max/min of the per-axis ratios, minus 1 (0: same proportions)."""
    size = np.array([model.width or 0, model.height or 0, model.depth or 0], dtype=np.float64)
    if (size <= 0).any() or (extent <= 0).any():
        return None
    r = extent / size
    return float(r.max() / r.min() - 1)


# ---------------------------------------------------------------------------------------------
# extraction


def _check_out_dir(out: Path) -> list[str]:
    """Files of a previous extraction in ``out`` (to replace); other content is a ValueError."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise NotADirectoryError(f"out: {str(out)!r} is not a folder")
    present = {p.name for p in out.iterdir() if not p.name.startswith(TMP_PREFIX)}  # a killed write's leftovers
    previous: list[str] = []
    if SHAPES_INDEX in present:
        try:
            previous = [r["file"] for r in json.loads((out / SHAPES_INDEX).read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError, KeyError):
            raise ValueError(f"out: {str(out / SHAPES_INDEX)!r} is not a shape index written by extract_chairs") \
                from None
    other = sorted(present - set(previous) - {SHAPES_INDEX})
    if other:
        raise ValueError(f"out: folder {str(out)!r} is neither empty nor a previous extraction (it holds "
                         f"{', '.join(other[:3])}{', ...' if len(other) > 3 else ''})")
    return previous


def extract_chairs(sources, out_dir, *, license="cc0,cc-by", max_ambiguous: float = MAX_AMBIGUOUS,  # noqa: A002
                   keep_unreliable: bool = False, samples: int = 20_000, seed: int = 0,
                   on_drop: Callable[[CatalogModel, str], None] | None = None) -> list[dict]:
    """Write the chairs of ``sources`` (a ``.sh3f`` catalog, a folder of them, or a list) into
    ``out_dir`` as binary ``.ply`` meshes plus ``shapes.json``; return its records, sorted by file.

    Kept: models whose name contains "chair" minus :data:`CHAIR_NAME_OUTLIERS`, under a licence of
    ``license`` (``"cc0"`` or ``"cc0,cc-by"``), that load, and whose :func:`ambiguous_fraction` is at
    most ``max_ambiguous`` (over it: dropped with a warning naming the model, or with
    ``keep_unreliable`` kept with ``flagged: true``). Every chair not kept is passed to ``on_drop``
    with the reason. A record: file, name, id, category, creator, licence (cc0 / cc-by),
    licence_text, catalog (file name), model (path in the zip), rotation (the 9 numbers applied, or
    None), size_cm (catalog width, height, depth), extent (bounding box x, y, z after rotation, model
    units), proportion_error (:func:`_proportion_error`), vertices, faces, watertight (after
    merging), ambiguous_fraction, flagged.

    ``out_dir`` must be new, empty, or a previous extraction (replaced: its meshes that are not
    written again are deleted). ValueError (one line, naming the argument or the model): sources
    without chairs, a file that is not a catalog, a licence filter that leaves nothing or names an
    unknown licence, no chair left after loading or after the sign check."""
    import trimesh  # noqa: F401 - fail here, not halfway, if it is missing

    allowed = parse_licence_filter(license)
    if isinstance(max_ambiguous, bool) or not isinstance(max_ambiguous, (int, float)) \
            or not 0.0 <= float(max_ambiguous) <= 1.0:
        raise ValueError(f"max_ambiguous: expected a fraction in [0, 1], got {max_ambiguous!r}")
    out = Path(out_dir)
    previous = _check_out_dir(out)
    files = catalog_files(sources)
    models = [m for f in files for m in read_catalog(f)]

    def drop(m: CatalogModel, why: str) -> None:
        if on_drop is not None:
            on_drop(m, why)

    chairs, outliers = select_chairs(models)
    for m, why in outliers:
        drop(m, f"name outlier: {why}")
    if not chairs:
        raise ValueError(f"sources: no chair in {', '.join(f.name for f in files)} (no model named '...chair...'"
                         f"{' apart from outliers' if outliers else ''})")
    licensed = []
    for m in chairs:
        if m.licence in allowed:
            licensed.append(m)
        else:
            drop(m, f"licence {m.licence or 'unknown'} ({m.licence_text or 'none given'}) is not in "
                    f"{','.join(sorted(allowed))}")
    if not licensed:
        found = Counter(m.licence or "unknown" for m in chairs)
        raise ValueError(f"license: no chair is under {','.join(sorted(allowed))} (the {len(chairs)} chairs found "
                         f"are under: {', '.join(f'{k} {v}' for k, v in sorted(found.items()))})")
    loaded = []
    for m in licensed:
        try:
            loaded.append((m, load_model(m)))
        except ValueError as e:
            warnings.warn(f"{e}; skipped", stacklevel=2)
            drop(m, f"unreadable: {str(e).removeprefix(m.label + ': ')}")
    if not loaded:
        raise ValueError(f"sources: none of the {len(licensed)} chairs could be loaded")
    names = _unique_ids([f"{Path(m.catalog).stem}-{Path(m.model).stem}" for m, _ in loaded])
    kept = []
    for (m, mesh), stem in zip(loaded, names):
        amb = ambiguous_fraction(mesh, n=samples, seed=seed)
        flagged = amb > max_ambiguous
        if flagged:
            what = "kept, flagged" if keep_unreliable else "dropped (keep_unreliable keeps it, flagged)"
            warnings.warn(f"{m.label}: signs unreliable: {amb:.1%} of near-surface points have winding numbers in "
                          f"[{AMBIGUOUS_BAND[0]}, {AMBIGUOUS_BAND[1]}] (max_ambiguous {max_ambiguous:g}); {what}",
                          stacklevel=2)
            if not keep_unreliable:
                drop(m, f"signs unreliable: {amb:.1%} of near-surface points ambiguous (> {max_ambiguous:g})")
                continue
        rot = m.rotation_matrix()
        extent = np.asarray(mesh.extents, dtype=np.float64)
        pe = _proportion_error(extent, m)
        rec = {"file": f"{stem}.ply", "name": m.name, "id": m.id, "category": m.category, "creator": m.creator,
               "licence": m.licence, "licence_text": m.licence_text, "catalog": Path(m.catalog).name,
               "model": m.model, "rotation": None if rot is None else [float(x) for x in rot.ravel()],
               "size_cm": [m.width, m.height, m.depth], "extent": [round(float(x), 6) for x in extent],
               "proportion_error": None if pe is None else round(pe, 4), "vertices": int(len(mesh.vertices)),
               "faces": int(len(mesh.faces)), "watertight": bool(mesh.is_watertight),
               "ambiguous_fraction": round(amb, 4), "flagged": bool(flagged)}
        kept.append((rec, mesh))
    if not kept:
        raise ValueError(f"max_ambiguous: the signs of all {len(loaded)} chairs are unreliable (ambiguous fraction "
                         f"over {max_ambiguous:g}); raise max_ambiguous or keep them flagged (keep_unreliable)")
    kept.sort(key=lambda rm: rm[0]["file"])
    out.mkdir(parents=True, exist_ok=True)
    for rec, mesh in kept:
        atomic_write_bytes(out / rec["file"], mesh.export(file_type="ply", encoding="binary", vertex_normal=False,
                                                          include_attributes=False))
    records = [rec for rec, _ in kept]
    for old in set(previous) - {r["file"] for r in records}:
        (out / old).unlink(missing_ok=True)
    atomic_write_bytes(out / SHAPES_INDEX, (json.dumps(records, indent=1, ensure_ascii=False) + "\n").encode())
    return records
