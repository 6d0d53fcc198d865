"""Sweet Home 3D furniture catalogs (netspace_fast.sdf.catalog): the .properties reader, chair selection,
licences, rotation, sign quality, the extracted folder as MeshShapes reads it, bad input, the CLI.

Every catalog here is written by the tests in the real format (a zip with a Latin-1
PluginFurnitureCatalog.properties using \\uXXXX escapes and a line continuation, a folder per model
with OBJ + MTL + a texture, folder names with spaces); nothing needs the Debian package. The chairs
are unions of two closed boxes (seat block, back) with Y up and the back towards -Z, the Sweet Home 3D
convention; one is stored lying on its side (Z up) with the modelRotation that stands it up."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from netspace_fast.cli import cli
from netspace_fast.sdf.catalog import (CHAIR_NAME_OUTLIERS, MAX_AMBIGUOUS, ambiguous_fraction, dump_properties,
                                       extract_chairs, licence_kind, load_model, parse_licence_filter,
                                       parse_properties, read_catalog, select_chairs)
from netspace_fast.sdf.shapes import MeshShapes, reopen_shapes

SIDE_UP = "1 0 0 0 0 1 0 -1 0"  # v' = M v: (x, y, z) -> (x, z, -y): a Z-up model stood up (as Scopia's armchair1)


def box_union_obj(boxes, *, to_file=lambda v: v) -> str:
    """An OBJ (mtllib, usemtl, per-face texture coordinates: every corner of a triangle its own vt, so
    the texture seams split every vertex, and normals) of a union of closed boxes (lo, hi);
    ``to_file`` maps Y-up coordinates to the file's."""
    lines = ["# test chair", "mtllib chair.mtl", "o chair", "usemtl wood"]
    faces = []
    for j, (lo, hi) in enumerate(boxes):
        b = trimesh.creation.box(bounds=[lo, hi])  # 8 vertices, 12 outward triangles
        lines += ["v {:.6f} {:.6f} {:.6f}".format(*v) for v in to_file(np.asarray(b.vertices))]
        lines += ["vn {:.6f} {:.6f} {:.6f}".format(*n) for n in to_file(np.asarray(b.face_normals))]
        for k, f in enumerate(b.faces):
            t = 36 * j + 3 * k  # this triangle's 3 texture coordinates
            lines += [f"vt {(k + c) % 5 / 5:.3f} {c / 3:.3f}" for c in range(3)]
            faces.append(" ".join(f"{8 * j + f[c] + 1}/{t + c + 1}/{12 * j + k + 1}" for c in range(3)))
    lines += [f"f {f}" for f in faces]
    return "\n".join(lines) + "\n"


SEAT_BACK = [([-0.25, 0.0, -0.25], [0.25, 0.45, 0.25]), ([-0.25, 0.40, -0.25], [0.25, 1.0, -0.18])]  # 50 x 100 x 50
NARROW = [([-0.2, 0.0, -0.225], [0.2, 0.45, 0.225]), ([-0.2, 0.40, -0.225], [0.2, 0.9, -0.17])]  # 40 x 90 x 45


def on_side(v):
    """Y-up -> the file's Z-up coordinates (x, -z, y): M^T of SIDE_UP, so that SIDE_UP stands it up."""
    v = np.asarray(v, dtype=np.float64)
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], -1)


MTL = "newmtl wood\nKd 0.6 0.4 0.2\nmap_Kd wood texture.jpg\n"

PROPERTIES = (
    "# PluginFurnitureCatalog.properties, written by the tests: caf\\u00e9\n"
    "! a comment line of the other kind\n"
    "id=Tests#Catalog\n"
    "name=Caf\\u00e9 catalog\n"
    "license=Creative Commons Attribution 3.0 license \\\n"
    "        \\u00a9 Andr\\u00e9 & Jos\xe9\n"
    "provider : tests\n"
    "\n"
    "id#1=Tests#chair\n"
    "name#1=Caf\\u00e9 chair\n"
    "creator#1=Ren\xe9 M\\u00fcller\n"
    "category#1=Living room\n"
    "model#1=/chair folder/chair.obj\n"
    "license#1=Public domain\n"
    "width#1=50\ndepth#1=50\nheight#1=100\n"
    "\n"
    "id#2 Tests#sideChair\n"
    "name#2 Side chair\n"
    "creator#2:Jos\\u00e9\n"
    "model#2=side chair/side chair.obj\n"
    f"modelRotation#2={SIDE_UP}\n"
    "width#2=40\ndepth#2=45\nheight#2=90\n"
    "\n"
    "name#3=Table\nmodel#3=/table/table.obj\ncreator#3=Someone\n"
    "name#4=Wheelchair\nmodel#4=/wheelchair/wheelchair.obj\ncreator#4=Someone\n"
)


def write_catalog(path, properties: str, files: dict[str, str | bytes]):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("PluginFurnitureCatalog.properties", properties.encode("latin-1"))
        z.writestr("LICENSE.TXT", "Creative Commons Attribution 3.0\n")
        for name, data in files.items():
            z.writestr(name, data)
    return path


def box_obj(lo, hi) -> str:
    return box_union_obj([(lo, hi)])


@pytest.fixture
def catalog(tmp_path):
    (tmp_path / "cat").mkdir()
    return write_catalog(tmp_path / "cat" / "Tests.sh3f", PROPERTIES, {
        "chair folder/chair.obj": box_union_obj(SEAT_BACK),
        "chair folder/chair.mtl": MTL,
        "chair folder/wood texture.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
        "chair folder/LICENSE.txt": "CC0",
        "side chair/side chair.obj": box_union_obj(NARROW, to_file=on_side),
        "side chair/chair.mtl": MTL,
        "table/table.obj": box_obj([-0.5, 0.0, -0.5], [0.5, 0.75, 0.5]),
        "wheelchair/wheelchair.obj": box_obj([-0.3, 0.0, -0.3], [0.3, 0.9, 0.3]),
    })


def broken_cube() -> trimesh.Trimesh:
    """A unit cube with one side (2 triangles) removed and two other sides' triangles flipped."""
    b = trimesh.creation.box()
    f = np.asarray(b.faces).copy()
    n = np.asarray(b.face_normals)
    keep = ~np.isclose(n[:, 1], 1.0)          # drop the top (+y)
    flip = np.isclose(n[:, 0], 1.0) | np.isclose(n[:, 2], -1.0)  # flip +x and -z
    f[flip] = f[flip][:, ::-1]
    return trimesh.Trimesh(b.vertices, f[keep], process=False)


def broken_obj() -> str:
    m = broken_cube()
    return "".join("v {} {} {}\n".format(*v) for v in m.vertices) + "".join(
        "f {} {} {}\n".format(*(f + 1)) for f in m.faces)


def second_catalog(folder):
    """A cc0 catalog: a broken chair (open, flipped faces) and a chair whose model is missing."""
    props = ("license=Creative Commons Zero\n"
             "name#1=Broken chair\nmodel#1=/broken/broken.obj\ncreator#1=B\n"
             "name#2=Ghost chair\nmodel#2=/ghost/ghost.obj\ncreator#2=G\n")
    return write_catalog(folder / "Second.sh3f", props, {"broken/broken.obj": broken_obj()})


# ---------------------------------------------------------------------------------------------
# .properties


def test_properties_escapes_continuations_comments_separators():
    text = ("# comment = not a key\n"
            "   ! indented comment\n"
            "a=b\n"
            "c:d\n"
            "e f\n"
            "g   =   h i  \n"
            "j\t:\tk\n"
            "l\n"
            "caf\\u00e9=\\u00e9t\\u00e9\n"
            "key\\ with\\ spaces=v\\=w\\:x\\#y\n"
            "tabs=a\\tb\\nc\n"
            "long=one \\\n"
            "     two \\\n"
            "\t three\n"
            "backslash=ends\\\\\n"
            "next=line\n"
            "# comment \\\n"
            "after=comment\n"
            "a=later wins\n")
    p = parse_properties(text)
    assert p == {"a": "later wins", "c": "d", "e": "f", "g": "h i  ", "j": "k", "l": "", "café": "été",
                 "key with spaces": "v=w:x#y", "tabs": "a\tb\nc", "long": "one two three", "backslash": "ends\\",
                 "next": "line", "after": "comment"}


def test_properties_bytes_are_latin1_and_bad_escape_names_the_line():
    assert parse_properties(b"k=caf\xe9 \\u00a9\r\nm=n\r") == {"k": "café ©", "m": "n"}
    with pytest.raises(ValueError, match=r"properties line 'bad=\\\\u00zz'.*malformed"):
        parse_properties("ok=1\nbad=\\u00zz\n")


@given(st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
                       st.text(st.characters(exclude_categories=("Cs",)), max_size=12), max_size=5))
def test_properties_round_trip(items):
    text = dump_properties(items)
    assert text.isascii()
    assert parse_properties(text) == items
    assert parse_properties(text.encode("latin-1")) == items


# ---------------------------------------------------------------------------------------------
# catalogs, chairs, licences


def test_read_catalog_models_licences_and_chairs(catalog):
    models = read_catalog(catalog)
    assert [m.name for m in models] == ["Café chair", "Side chair", "Table", "Wheelchair"]
    chair, side = models[0], models[1]
    assert (chair.creator, chair.licence, chair.licence_text) == ("René Müller", "cc0", "Public domain")
    assert chair.model == "/chair folder/chair.obj" and chair.rotation is None and chair.category == "Living room"
    assert (side.creator, side.licence, side.id) == ("José", "cc-by", "Tests#sideChair")
    assert side.licence_text == "Creative Commons Attribution 3.0 license © André & José"
    np.testing.assert_array_equal(side.rotation_matrix(), [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    assert (side.width, side.depth, side.height) == (40.0, 45.0, 90.0)
    chairs, outliers = select_chairs(models)
    assert [m.name for m in chairs] == ["Café chair", "Side chair"]
    assert [(m.name, why) for m, why in outliers] == [("Wheelchair", CHAIR_NAME_OUTLIERS["wheelchair"])]


def test_licence_kinds_and_filter():
    assert licence_kind("Public domain") == "cc0" and licence_kind("CC0 1.0") == "cc0"
    assert licence_kind("Creative Commons Attribution 3.0 Unported license  © Scopia") == "cc-by"
    assert licence_kind("Creative Commons Attribution-ShareAlike 3.0") is None
    assert licence_kind("CC-BY-NC 4.0") is None and licence_kind("All rights reserved") is None
    assert licence_kind(None) is None
    assert parse_licence_filter(" CC0 , cc-by") == {"cc0", "cc-by"} and parse_licence_filter(["cc0"]) == {"cc0"}
    with pytest.raises(ValueError, match=r"license: unknown licence 'gpl'.*cc0, cc-by"):
        parse_licence_filter("cc0,gpl")


def test_rotation_stands_the_side_chair_up(catalog):
    side = read_catalog(catalog)[1]
    raw = trimesh.load(io.BytesIO(zipfile.ZipFile(catalog).read("side chair/side chair.obj")), file_type="obj",
                       force="mesh")
    assert np.argmax(raw.extents) == 2  # stored lying down: height along z
    assert not raw.is_watertight  # texture seams split its vertices
    m = load_model(side)
    np.testing.assert_allclose(m.extents, [0.4, 0.9, 0.45], atol=1e-6)  # width x, height y, depth z
    assert m.is_watertight and m.is_winding_consistent and m.volume > 0  # seams merged, rotation kept orientation
    top = m.vertices[m.vertices[:, 1] > 0.6]
    assert top[:, 2].mean() < m.bounds.mean(0)[2]  # the back is towards -Z, as the upright chair's


# ---------------------------------------------------------------------------------------------
# sign quality


def test_ambiguous_fraction_closed_vs_broken():
    assert ambiguous_fraction(trimesh.creation.box(), n=4000) < 0.005
    chair = trimesh.util.concatenate([trimesh.creation.box(bounds=b) for b in SEAT_BACK])
    assert ambiguous_fraction(chair, n=4000) < 0.005  # overlapping closed boxes: winding 2, not ambiguous
    assert ambiguous_fraction(broken_cube(), n=4000) > 0.2


# ---------------------------------------------------------------------------------------------
# extraction, shapes.json, MeshShapes


def test_extract_chairs_writes_meshes_and_attribution(catalog, tmp_path):
    out = tmp_path / "chairs"
    drops = []
    recs = extract_chairs(catalog, out, samples=4000, on_drop=lambda m, why: drops.append((m.name, why)))
    assert [r["file"] for r in recs] == ["Tests-chair.ply", "Tests-side_chair.ply"]
    assert drops == [("Wheelchair", "name outlier: " + CHAIR_NAME_OUTLIERS["wheelchair"])]
    index = json.loads((out / "shapes.json").read_text(encoding="utf-8"))
    assert index == recs
    a, b = index
    assert (a["name"], a["creator"], a["licence"]) == ("Café chair", "René Müller", "cc0")
    assert a["catalog"] == "Tests.sh3f"
    assert (b["name"], b["creator"], b["licence"]) == ("Side chair", "José", "cc-by")
    assert b["licence_text"].endswith("© André & José") and b["model"] == "side chair/side chair.obj"
    assert a["rotation"] is None and b["rotation"] == [1.0, 0, 0, 0, 0, 1, 0, -1, 0]
    for r in index:
        assert r["watertight"] and r["ambiguous_fraction"] < 0.005 and not r["flagged"]
        assert r["proportion_error"] < 1e-3 and r["extent"][1] == max(r["extent"])
    assert sorted(p.name for p in out.iterdir()) == ["Tests-chair.ply", "Tests-side_chair.ply", "shapes.json"]

    ms = MeshShapes(out, pool_size=500, heldout_size=100)  # shapes.json is not a mesh
    assert ms.names == ["Tests-chair.ply", "Tests-side_chair.ply"]
    d = ms.describe()
    assert [(x["file"], x["creator"], x["licence"]) for x in d["attribution"]] == [
        ("Tests-chair.ply", "René Müller", "cc0"), ("Tests-side_chair.ply", "José", "cc-by")]
    assert reopen_shapes(json.loads(json.dumps(d))).describe() == d
    assert ms.normalized_mesh(1).is_watertight
    pts, sdf = ms.heldout(1)
    assert np.isfinite(sdf.numpy()).all() and (sdf < 0).any() and (sdf > 0).any()

    # attribution changed: the recorded description no longer matches
    index[0]["creator"] = "Someone else"
    (out / "shapes.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="changed since"):
        reopen_shapes(d)

    # a second extraction replaces the first (cc0 only: one chair), another folder is refused
    recs = extract_chairs(catalog, out, license="cc0", samples=2000)
    assert [r["file"] for r in recs] == ["Tests-chair.ply"]
    assert sorted(p.name for p in out.iterdir()) == ["Tests-chair.ply", "shapes.json"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match=r"out: folder .*other.* neither empty nor a previous extraction.*mine.obj"):
        extract_chairs(catalog, tmp_path / "other")


def test_mesh_folder_without_index_describes_as_before(catalog, tmp_path):
    out = tmp_path / "c"
    extract_chairs(catalog, out, samples=2000)
    (out / "shapes.json").unlink()
    assert "attribution" not in MeshShapes(out).describe()
    (out / "shapes.json").write_text("{not json")
    with pytest.raises(ValueError, match="shapes.json: unreadable shape index"):
        MeshShapes(out)


def test_unreliable_and_unreadable_chairs_are_dropped_with_warnings(catalog, tmp_path):
    second_catalog(catalog.parent)
    drops = []
    with pytest.warns(UserWarning) as w:
        recs = extract_chairs(catalog.parent, tmp_path / "o", samples=4000,
                              on_drop=lambda m, why: drops.append((m.name, why)))
    msgs = [str(x.message) for x in w]
    assert any("Second.sh3f:/ghost/ghost.obj ('Ghost chair')" in s and "not in the catalog" in s for s in msgs)
    assert any("Second.sh3f:/broken/broken.obj ('Broken chair'): signs unreliable" in s and "dropped" in s
               for s in msgs)
    assert [r["name"] for r in recs] == ["Café chair", "Side chair"]
    assert {n for n, _ in drops} == {"Wheelchair", "Ghost chair", "Broken chair"}
    assert next(why for n, why in drops if n == "Broken chair").startswith("signs unreliable")

    with pytest.warns(UserWarning) as w:
        recs = extract_chairs(catalog.parent, tmp_path / "o", samples=4000, keep_unreliable=True)
    assert any("'Broken chair'): signs unreliable" in str(x.message) and "kept, flagged" in str(x.message) for x in w)
    broken = next(r for r in recs if r["name"] == "Broken chair")
    assert broken["flagged"] and broken["ambiguous_fraction"] > MAX_AMBIGUOUS and not broken["watertight"]
    assert broken["licence"] == "cc0" and broken["creator"] == "B"
    attribution = MeshShapes(tmp_path / "o").describe()["attribution"]
    assert next(a for a in attribution if a["name"] == "Broken chair")["flagged"]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="max_ambiguous: the signs of all 1 chairs"):
        extract_chairs(catalog.parent / "Second.sh3f", tmp_path / "p", samples=2000)


def test_bad_inputs(catalog, tmp_path):
    table = write_catalog(tmp_path / "Tables.sh3f", "license=CC0\nname#1=Table\nmodel#1=/t/t.obj\n",
                          {"t/t.obj": box_obj([0, 0, 0], [1, 1, 1])})
    with pytest.raises(ValueError, match=r"sources: no chair in Tables.sh3f"):
        extract_chairs(table, tmp_path / "o1")
    (tmp_path / "text.sh3f").write_text("hello")
    with pytest.raises(ValueError, match=r"text.sh3f: not a Sweet Home 3D furniture catalog \(not a zip file\)"):
        extract_chairs(tmp_path / "text.sh3f", tmp_path / "o2")
    with zipfile.ZipFile(tmp_path / "empty.sh3f", "w") as z:
        z.writestr("readme.txt", "nothing")
    with pytest.raises(ValueError, match=r"empty.sh3f: .*\(no PluginFurnitureCatalog.properties in the zip\)"):
        read_catalog(tmp_path / "empty.sh3f")
    with pytest.raises(FileNotFoundError, match="sources: .*missing.sh3f.* does not exist"):
        extract_chairs(tmp_path / "missing.sh3f", tmp_path / "o3")
    (tmp_path / "nocat").mkdir()
    with pytest.raises(ValueError, match=r"sources: folder .* has no Sweet Home 3D catalogs"):
        extract_chairs(tmp_path / "nocat", tmp_path / "o4")
    cc_by_only = write_catalog(tmp_path / "By.sh3f", "license=Creative Commons Attribution 4.0\n"
                               "name#1=Chair\nmodel#1=/c/c.obj\n", {"c/c.obj": box_union_obj(SEAT_BACK)})
    with pytest.raises(ValueError, match=r"license: no chair is under cc0 \(the 1 chairs found are under: cc-by 1\)"):
        extract_chairs(cc_by_only, tmp_path / "o5", license="cc0")
    with pytest.raises(ValueError, match="license: unknown licence 'cc-by-sa'"):
        extract_chairs(catalog, tmp_path / "o6", license="cc0,cc-by-sa")
    ghost = write_catalog(tmp_path / "Ghost.sh3f", "license=Public domain\nname#1=Chair\nmodel#1=/g/g.obj\n"
                          "name#2=Bad chair\nmodel#2=/b/b.obj\n", {"b/b.obj": "this is not an obj\n"})
    with pytest.warns(UserWarning) as w, pytest.raises(ValueError, match="sources: none of the 2 chairs could be"):
        extract_chairs(ghost, tmp_path / "o7")
    assert [str(x.message) for x in w] == [
        "Ghost.sh3f:/g/g.obj ('Chair'): model file 'g/g.obj' is not in the catalog; skipped",
        "Ghost.sh3f:/b/b.obj ('Bad chair'): empty mesh (no triangles); skipped"]
    bad_rot = write_catalog(tmp_path / "Rot.sh3f", "license=Public domain\nname#1=Chair\nmodel#1=/c/c.obj\n"
                            "modelRotation#1=1 0 0\n", {"c/c.obj": box_union_obj(SEAT_BACK)})
    with pytest.raises(ValueError, match=r"Rot.sh3f:/c/c.obj \('Chair'\): modelRotation '1 0 0': expected 9"):
        load_model(read_catalog(bad_rot)[0])
    with pytest.raises(ValueError, match=r"max_ambiguous: expected a fraction in \[0, 1\]"):
        extract_chairs(catalog, tmp_path / "o8", max_ambiguous=1.5)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 9))  # nothing written on failure


# ---------------------------------------------------------------------------------------------
# CLI


def _one_line_error(r, code: int, contains: str) -> None:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], r.stderr


def test_cli_extract_chairs(catalog, tmp_path):
    second_catalog(catalog.parent)
    out = tmp_path / "cli"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the command prints its drops as lines; nothing escapes as a warning
        r = CliRunner().invoke(cli, ["shapes", "extract-chairs", str(catalog.parent), "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert any(ln.startswith("dropped Tests.sh3f:/wheelchair/wheelchair.obj ('Wheelchair'): name outlier")
               for ln in lines)
    assert any("('Ghost chair'): unreadable" in ln for ln in lines)
    assert any("('Broken chair'): signs unreliable" in ln for ln in lines)
    assert lines[-1].startswith("kept 2 of 5 chairs (cc-by 1, cc0 1): written to")
    assert len(json.loads((out / "shapes.json").read_text())) == 2

    r = CliRunner().invoke(cli, ["shapes", "extract-chairs", str(catalog), "--out", str(tmp_path / "c0"),
                                 "--license", "cc0", "--max-ambiguous", "0.1"])
    assert r.exit_code == 0, r.output
    assert "dropped Tests.sh3f:side chair/side chair.obj ('Side chair'): licence cc-by" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("kept 1 of 3 chairs (cc0 1)")

    r = CliRunner().invoke(cli, ["shapes", "extract-chairs", str(catalog.parent), "--out", str(tmp_path / "k"),
                                 "--keep-unreliable"])
    assert r.exit_code == 0, r.output
    assert "flagged Second.sh3f:/broken/broken.obj ('Broken chair')" in r.stdout and "1 flagged" in r.stdout

    _one_line_error(CliRunner().invoke(cli, ["shapes", "extract-chairs", str(catalog), "--out", str(tmp_path / "x"),
                                             "--license", "gpl"]), 2, "--license: unknown licence 'gpl'")
    _one_line_error(CliRunner().invoke(cli, ["shapes", "extract-chairs", str(tmp_path / "nope"), "--out",
                                             str(tmp_path / "x")]), 2, "SOURCE: ")
    (tmp_path / "t.sh3f").write_text("not a zip")
    _one_line_error(CliRunner().invoke(cli, ["shapes", "extract-chairs", str(tmp_path / "t.sh3f"), "--out",
                                             str(tmp_path / "x")]), 1, "not a Sweet Home 3D furniture catalog")
    r = CliRunner().invoke(cli, ["shapes", "extract-chairs", "--help"])
    assert r.exit_code == 0 and f"default: {MAX_AMBIGUOUS}" in " ".join(r.output.split())
