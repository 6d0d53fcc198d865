"""Shape sources of netspace_fast.sdf.shapes: procedural chairs (exact SDF of a union of boxes),
mesh folders (trimesh + libigl, cache), DeepSDF .npz files; bad input names the file.

Tolerances: distances of the box union are compared with a brute-force distance to densely
sampled boundary points, which over-estimates the true distance by at most the sampling gap
(|err| <= 0.02 for 100k boundary points on a unit-size chair, checked one-sided below); mesh SDFs
against the analytic SDF of a cube: 1e-6 (libigl is exact for a triangle mesh of a box)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import trimesh

from netspace_fast.sdf.shapes import (MeshShapes, NpzShapes, ProceduralChairs, box_sdf, deepsdf_pool, make_chair,
                                      open_shapes, union_sdf)


def test_union_sdf_single_box_is_box_sdf():
    rng = np.random.default_rng(0)
    lo, hi = np.array([[-0.3, -0.2, -0.1]]), np.array([[0.3, 0.2, 0.1]])
    p = rng.uniform(-0.6, 0.6, (5000, 3))
    np.testing.assert_allclose(union_sdf(p, lo, hi), box_sdf(p, lo, hi)[:, 0], atol=1e-12)


def test_union_sdf_interior_is_exact_where_min_of_boxes_is_not():
    # two boxes glued along x = 0: at (-0.01, 0, 0) the min of the box SDFs says depth 0.01 (the
    # buried face x = 0), the true depth is 0.1 (the faces y = +-0.1, z = +-0.1)
    lo = np.array([[-1.0, -0.1, -0.1], [0.0, -0.1, -0.1]])
    hi = np.array([[0.0, 0.1, 0.1], [1.0, 0.1, 0.1]])
    p = np.array([[-0.01, 0.0, 0.0], [0.5, 0.05, 0.0], [2.0, 0.0, 0.0]])
    d = union_sdf(p, lo, hi)
    np.testing.assert_allclose(d, [-0.1, -0.05, 1.0], atol=1e-12)
    assert box_sdf(p, lo, hi).min(1)[0] == pytest.approx(-0.01)


def _brute_force_sdf(chair, p, n_surface=100_000):
    surf = chair.surface_points(n_surface, np.random.default_rng(1))
    d = np.empty(len(p))
    for s in range(0, len(p), 64):
        d[s:s + 64] = np.sqrt(((p[s:s + 64, None, :] - surf[None]) ** 2).sum(-1)).min(1)
    inside = box_sdf(p, chair.lo, chair.hi).min(1) < 0
    return np.where(inside, -d, d)


def test_chair_sdf_matches_brute_force_distance_to_its_boundary():
    chair = make_chair(3, arms=True, stretchers=True)
    rng = np.random.default_rng(2)
    surf = chair.surface_points(200, rng)
    p = np.concatenate([surf + rng.normal(0, 0.02, surf.shape), rng.uniform(-1, 1, (50, 3))])
    exact, brute = union_sdf(p, chair.lo, chair.hi), _brute_force_sdf(chair, p)
    assert (np.sign(exact) == np.sign(brute)).mean() > 0.99
    # brute force measures the distance to a finite set of boundary points: never below the truth
    assert np.all(np.abs(brute) >= np.abs(exact) - 1e-9)
    assert np.abs(np.abs(brute) - np.abs(exact)).max() < 0.02
    assert (exact < 0).sum() > 20, "the test must exercise interior points"


def test_chairs_are_seeded_normalized_and_varied():
    a, b = make_chair(7), make_chair(7)
    np.testing.assert_array_equal(a.lo, b.lo)
    assert a.parts[:6] == ("seat", "back", "leg0", "leg1", "leg2", "leg3")
    sizes = {tuple(np.round(make_chair(s).hi[0] - make_chair(s).lo[0], 4)) for s in range(6)}
    assert len(sizes) == 6, "different seeds give different seats"
    assert any("arm_l" in make_chair(s).parts for s in range(20)) and any(
        "arm_l" not in make_chair(s).parts for s in range(20))
    for s in range(5):
        c = make_chair(s)
        corners = np.concatenate([c.lo, c.hi])
        assert np.linalg.norm(corners, axis=1).max() <= 1 / 1.03 + 1e-9
        np.testing.assert_allclose(c.lo.min(0) + c.hi.max(0), 0, atol=1e-12)


def test_surface_points_lie_on_the_boundary():
    c = make_chair(5, arms=True, stretchers=True)
    p = c.surface_points(2000, np.random.default_rng(0))
    assert np.abs(union_sdf(p, c.lo, c.hi)).max() < 1e-9


def test_deepsdf_pool_mix():
    rng = np.random.default_rng(0)
    surf = np.zeros((10, 3))
    p = deepsdf_pool(surf, 50_000, rng)
    near = p[:47_000]
    assert np.abs(p[47_000:]).max() <= 1 and len(p) == 50_000
    # first half std 0.05, second half std sqrt(0.00025) = 0.0158
    assert near[:23_500].std() == pytest.approx(0.05, rel=0.03)
    assert near[23_500:].std() == pytest.approx(0.00025 ** 0.5, rel=0.03)


def test_procedural_sample_interface():
    cs = ProceduralChairs(2, seed=1, pool_size=3000, heldout_size=500)
    assert cs.ids == ["chair-0000", "chair-0001"] and len(cs) == 2
    pts, sdf = cs.sample(1, 100, torch.Generator().manual_seed(0))
    assert pts.shape == (100, 3) and sdf.shape == (100,) and pts.dtype == sdf.dtype == torch.float32
    pts2, _ = cs.sample(1, 100, torch.Generator().manual_seed(0))
    torch.testing.assert_close(pts, pts2, rtol=0, atol=0)
    c = cs.chair(1)
    np.testing.assert_allclose(sdf.numpy(), union_sdf(pts.double().numpy(), c.lo, c.hi), atol=1e-6)
    hp, hs = cs.heldout(0)
    assert hp.shape == (500, 3) and hs.shape == (500,)
    with pytest.raises(IndexError, match="index"):
        cs.sample(2, 10, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        cs.sample(0, 10, 0)


# ---------------------------------------------------------------------------------------------
# meshes


def _cube(path, half=0.5, fmt=None):
    m = trimesh.creation.box(extents=[2 * half] * 3)
    m.export(str(path), file_type=fmt)
    return m


def test_mesh_folder_normalized_sdf_and_cache(tmp_path):
    d = tmp_path / "meshes"
    d.mkdir()
    _cube(d / "a.obj")
    _cube(d / "b.ply")
    _cube(d / "c.off")
    (d / "notes.txt").write_text("not a mesh")
    ms = MeshShapes(d, cache_dir=tmp_path / "cache", pool_size=2000, heldout_size=300)
    assert ms.ids == ["a", "b", "c"] and ms.names == ["a.obj", "b.ply", "c.off"]
    pts, sdf = ms.sample(0, 500, torch.Generator().manual_seed(0))
    # normalized: the cube's corner at radius 1/1.03 -> half side 1/(1.03 sqrt 3)
    h = 1 / (1.03 * 3 ** 0.5)
    exact = box_sdf(pts.double().numpy(), np.array([[-h] * 3]), np.array([[h] * 3]))[:, 0]
    np.testing.assert_allclose(sdf.numpy(), exact, atol=1e-5)
    files = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as z:
        assert set(z.keys()) == {"points", "sdf", "heldout_points", "heldout_sdf"}
    # a second set reads the cache: the same points
    ms2 = MeshShapes(d, cache_dir=tmp_path / "cache", pool_size=2000, heldout_size=300)
    torch.testing.assert_close(ms2.heldout(0)[0], ms.heldout(0)[0], rtol=0, atol=0)


def test_non_watertight_mesh_warns_and_uses_winding_numbers(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    m = trimesh.creation.box(extents=[1, 1, 1])
    m.update_faces(np.arange(len(m.faces)) != 0)  # one triangle missing
    m.export(str(d / "open.obj"))
    ms = MeshShapes(d, pool_size=1000, heldout_size=200)
    with pytest.warns(UserWarning, match="open.obj.*not watertight.*winding"):
        _, sdf = ms.heldout(0)
    pts = ms.heldout(0)[0]
    assert (sdf[pts.abs().max(1).values < 0.2] < 0).all(), "the centre is inside"


def test_bad_meshes_name_the_file(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "broken.obj").write_text("v 0 0 0\n")  # a vertex, no faces
    with pytest.raises(ValueError, match="broken.obj.*empty"):
        MeshShapes(d)
    (d / "broken.obj").unlink()
    (d / "garbage.ply").write_bytes(b"ply\nformat nonsense\n\x00\x01")
    with pytest.raises(ValueError, match="garbage.ply"):
        MeshShapes(d)
    e = tmp_path / "empty"
    e.mkdir()
    (e / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no meshes"):
        MeshShapes(e)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_shapes(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# DeepSDF .npz files


def _npz(path, n_pos=200, n_neg=100, nan_rows=5, seed=0, **extra):
    rng = np.random.default_rng(seed)
    pos = np.concatenate([rng.uniform(-1, 1, (n_pos, 3)), rng.uniform(0, 0.1, (n_pos, 1))], 1).astype(np.float32)
    neg = np.concatenate([rng.uniform(-1, 1, (n_neg, 3)), -rng.uniform(0, 0.1, (n_neg, 1))], 1).astype(np.float32)
    pos[:nan_rows, 3] = np.nan
    buf = io.BytesIO()
    np.savez(buf, pos=pos, neg=neg, **extra)
    path.write_bytes(buf.getvalue())
    return pos, neg


def test_npz_half_pos_half_neg_and_nan_rows_dropped(tmp_path):
    d = tmp_path / "npz"
    d.mkdir()
    _npz(d / "s1.npz")
    _npz(d / "s0.npz", seed=1)
    ns = open_shapes(d)
    assert isinstance(ns, NpzShapes) and ns.ids == ["s0", "s1"]
    pts, sdf = ns.sample(0, 1000, torch.Generator().manual_seed(0))
    assert pts.shape == (1000, 3) and torch.isfinite(sdf).all()
    assert (sdf[:500] >= 0).all() and (sdf[500:] < 0).all()
    hp, hs = ns.heldout(0)
    assert torch.isfinite(hs).all() and len(hs) == int(195 * 0.1) + int(100 * 0.1)
    # held-out rows are never drawn for training
    train = ns.sample(0, 20_000, torch.Generator().manual_seed(1))[0]
    held = {tuple(r) for r in hp.tolist()}
    assert not any(tuple(r) in held for r in train.tolist())


def test_npz_without_pos_neg_names_the_file(tmp_path):
    d = tmp_path / "npz"
    d.mkdir()
    np.savez(d / "bad.npz", points=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"bad.npz.*'pos' and 'neg'.*points"):
        NpzShapes(d)
    np.savez(d / "bad.npz", pos=np.zeros((3, 3), np.float32), neg=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"bad.npz.*'pos'.*\(n, 4\)"):
        NpzShapes(d)
    (d / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz.*unreadable"):
        NpzShapes(d)


def test_warning_free_for_watertight_mesh(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    _cube(d / "cube.obj")
    ms = MeshShapes(d, pool_size=500, heldout_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms.heldout(0)


def test_reopen_shapes_from_a_description():
    from netspace_fast.sdf.shapes import reopen_shapes

    chairs = ProceduralChairs(3, seed=4, pool_size=200, heldout_size=20)
    again = reopen_shapes(chairs.describe())
    assert again.describe() == chairs.describe() and again.ids == chairs.ids
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(chairs.sample(1, 50, g1), again.sample(1, 50, g2)))
    with pytest.raises(ValueError, match="cannot be reopened.*unknown shape source 'voxels'"):
        reopen_shapes({"source": "voxels"})
    with pytest.raises(ValueError, match="cannot be reopened.*KeyError"):
        reopen_shapes({"source": "procedural", "n": 3})
    with pytest.raises(ValueError, match="description: expected"):
        reopen_shapes(["procedural"])
