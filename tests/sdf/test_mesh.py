"""Shapes out (netspace_fast/sdf/mesh.py): the batched SDF grid against per-network modules, marching
cubes on an analytic sphere MLP (closed, the right radius and volume), an SDF with no zero crossing
(an empty mesh, recorded, not a crash), and ``interpolate_shapes`` on an SDF run (meshes, PNG, CSV)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import trimesh

from netspace_fast.prep import pack_preps
from netspace_fast.sdf import mesh as sdf_mesh
from netspace_fast.sdf.mesh import (MESH_FIELDS, PART_SHARE, decode_meshes, grid_points, interpolate_shapes, mesh_from_grid,
                                    mesh_stats, meshes_from_preps, sdf_grid, write_mesh)
from netspace_fast.sdf.space import SdfSpace, train_sdf_space

from sdf_helpers import constant_mlp, sphere_mlp, write_sphere_zoo

W = 1024


def _preps(models):
    with torch.no_grad():
        return pack_preps(models, W).detach()


def test_grid_points_order():
    p = grid_points(3, 2.0)
    assert p.shape == (27, 3)
    assert p[0].tolist() == [-2.0, -2.0, -2.0] and p[1].tolist() == [-2.0, -2.0, 0.0]
    assert p[3].tolist() == [-2.0, 0.0, -2.0]
    assert p[-1].tolist() == [2.0, 2.0, 2.0]


def test_sdf_grid_is_batched_and_matches_modules(monkeypatch):
    models = [sphere_mlp(0.3), sphere_mlp(0.5, (0.2, 0.0, 0.0)), constant_mlp(0.25)]
    calls = []
    real = sdf_mesh.batched_forward

    def counting(spec, preps, x, **kw):
        calls.append((preps.shape[0], x.shape[0]))
        return real(spec, preps, x, **kw)

    monkeypatch.setattr(sdf_mesh, "batched_forward", counting)
    grid = sdf_grid(_preps(models), resolution=10, chunk=2, point_chunk=400)
    # 3 networks in chunks of 2, 1000 points in chunks of 400: 2 x 3 calls, never one per network and point chunk
    assert sorted(calls) == sorted([(2, 400), (2, 400), (2, 200), (1, 400), (1, 400), (1, 200)])
    pts = grid_points(10)
    with torch.no_grad():
        ref = torch.stack([m(pts)[:, 0] for m in models]).reshape(3, 10, 10, 10)
    assert torch.allclose(grid, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grid[2], torch.full((10, 10, 10), 0.25))


@pytest.mark.parametrize("radius,center", [(0.5, (0.0, 0.0, 0.0)), (0.35, (0.2, -0.1, 0.1))])
def test_sphere_mesh_is_closed_with_the_right_radius(radius, center):
    res = 40
    (mesh,) = meshes_from_preps(_preps([sphere_mlp(radius, center)]), resolution=res)
    stats = mesh_stats(mesh)
    assert stats["non_empty"] and stats["watertight"]
    dist = np.linalg.norm(mesh.vertices - np.array(center), axis=1)
    cell = 2.0 / (res - 1)
    assert abs(dist.mean() - radius) < 0.01 and np.abs(dist - radius).max() < 0.25 * cell
    # outward normals: a positive volume, that of the ball (marching cubes cuts a little off)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.03)


def test_components_count_separate_pieces_and_the_largest_share_is_by_area():
    one = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    s = mesh_stats(one)
    assert s["components"] == 1 and s["largest_part"] == pytest.approx(1.0)
    small = trimesh.creation.icosphere(subdivisions=2, radius=0.2)
    small.apply_translation([0.7, 0.0, 0.0])
    two = trimesh.util.concatenate([one, small])
    s = mesh_stats(two)
    # spheres of radii 0.4 and 0.2: areas 4:1, the same tessellation
    assert s["components"] == 2 and s["largest_part"] == pytest.approx(0.8, abs=1e-6)
    # a small box inside the large sphere shares no vertex with it: a third piece, whatever the face order
    three = trimesh.util.concatenate([two, trimesh.creation.box(extents=(0.1, 0.1, 0.1))])
    assert mesh_stats(three)["components"] == 3 and mesh_stats(three)["parts"] == 3
    assert mesh_stats(two)["parts"] == 2 and mesh_stats(one)["parts"] == 1
    # a speck (under PART_SHARE of the area) is a component, not a part
    speck = trimesh.creation.icosphere(subdivisions=1, radius=0.01)
    speck.apply_translation([0.0, 0.8, 0.0])
    specked = mesh_stats(trimesh.util.concatenate([one, speck]))
    assert specked["components"] == 2 and specked["parts"] == 1 and specked["largest_part"] > 1 - PART_SHARE
    perm = np.random.default_rng(0).permutation(len(three.faces))
    shuffled = trimesh.Trimesh(three.vertices, three.faces[perm], process=False)
    assert mesh_stats(shuffled)["components"] == 3


def test_no_zero_crossing_is_an_empty_mesh(tmp_path):
    meshes = meshes_from_preps(_preps([constant_mlp(0.3), constant_mlp(-0.2)]), resolution=8)
    for m in meshes:
        assert mesh_stats(m) == {"vertices": 0, "faces": 0, "non_empty": False, "watertight": False,
                                 "components": 0, "parts": 0, "largest_part": 0.0}
    write_mesh(tmp_path / "empty.ply", meshes[0])
    back = trimesh.load(tmp_path / "empty.ply", force="mesh")
    assert len(back.vertices) == 0
    # a non-finite SDF grid too
    assert len(mesh_from_grid(torch.full((4, 4, 4), float("nan"))).faces) == 0
    with pytest.raises(ValueError, match="volume"):
        mesh_from_grid(torch.zeros(4, 4))


def test_write_mesh_round_trip(tmp_path):
    (mesh,) = meshes_from_preps(_preps([sphere_mlp(0.4)]), resolution=20)
    write_mesh(tmp_path / "s.ply", mesh)
    back = trimesh.load(tmp_path / "s.ply", force="mesh")
    assert len(back.faces) == len(mesh.faces) and back.is_watertight


@pytest.fixture(scope="module")
def sphere_run(tmp_path_factory):
    """A tiny SDF run on the sphere zoo (one epoch), then its weights (last checkpoint and best)
    replaced by a decoder that outputs the given network whatever the embedding (scale 0, bias = that
    network's PRep): the decoded shapes are known."""
    base = tmp_path_factory.mktemp("sdfrun")
    write_sphere_zoo(base / "zoo")
    run = train_sdf_space(base / "run", base / "zoo", "sdf-tiny", epochs=1, progress=False)

    def set_decoder_output(model):
        space = SdfSpace.load(base / "run")
        with torch.no_grad():
            space.decoder.scalelayer.scale.zero_()
            space.decoder.scalelayer.bias.copy_(_preps([model])[0])
        run.save_best(space.encoder, space.decoder, {"epoch": 1, "score": 0.0})
        params = list(space.encoder.parameters()) + list(space.decoder.parameters())
        run.save_checkpoint(space.encoder, space.decoder, torch.optim.Adam(params), run.state())

    return base / "run", set_decoder_output


def test_interpolate_shapes_writes_meshes_png_csv(sphere_run, tmp_path):
    run_dir, set_decoder_output = sphere_run
    set_decoder_output(sphere_mlp(0.45))
    res = interpolate_shapes(run_dir, "sphere-a", "sphere-b", 5, tmp_path / "out", resolution=20)
    names = ["input_a"] + [f"step_{i:03d}" for i in range(5)] + ["input_b"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [n + ".ply" for n in names] + ["interpolation.png", "interpolation.csv"])
    png = (tmp_path / "out" / "interpolation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    rows = list(csv.DictReader(open(tmp_path / "out" / "interpolation.csv")))
    assert tuple(rows[0].keys()) == MESH_FIELDS
    assert [r["shape"] for r in rows] == names
    assert [r["alpha"] for r in rows] == ["0.0", "0.0", "0.25", "0.5", "0.75", "1.0", "1.0"]
    assert rows[0]["id"] == "sphere-a" and rows[-1]["id"] == "sphere-b"
    assert all(r["non_empty"] == "True" and r["watertight"] == "True" for r in rows)
    # the decoded ends against their inputs on the grid: identical for A (same 0.45 sphere), not for B
    assert [r["within_0.01"] != "" for r in rows] == [False, True, False, False, False, True, False]
    assert float(rows[1]["within_0.01"]) == 1.0 and float(rows[5]["within_0.01"]) < 0.5
    # every decoded step is the 0.45 sphere; the inputs are the zoo's own spheres (0.45 and 0.30)
    for name in names:
        m = trimesh.load(tmp_path / "out" / f"{name}.ply", force="mesh")
        r = np.linalg.norm(m.vertices - m.vertices.mean(0), axis=1).mean()
        assert r == pytest.approx(0.30 if name == "input_b" else 0.45, abs=0.02), name
    assert len(res.decoded_rows) == 5 and "5 of 5 decoded steps" in res.summary_lines()[-1]


def test_decode_meshes_of_embeddings(sphere_run):
    run_dir, set_decoder_output = sphere_run
    set_decoder_output(sphere_mlp(0.35, (0.1, 0.1, 0.0)))
    space = SdfSpace.load(run_dir)
    z = torch.randn(2, space.decoder.config.embed)
    meshes = decode_meshes(run_dir, z, resolution=20)
    assert len(meshes) == 2 and all(mesh_stats(m)["watertight"] for m in meshes)
    assert np.linalg.norm(meshes[0].vertices - [0.1, 0.1, 0.0], axis=1).mean() == pytest.approx(0.35, abs=0.01)
    with pytest.raises(ValueError, match="z: expected embeddings"):
        decode_meshes(space, z[0], resolution=8)


def test_interpolate_shapes_records_empty_meshes(sphere_run, tmp_path):
    run_dir, set_decoder_output = sphere_run
    set_decoder_output(constant_mlp(0.5))  # no zero crossing anywhere
    res = interpolate_shapes(run_dir, "sphere-a", "sphere-c", 3, tmp_path / "out", resolution=12)
    assert [r["non_empty"] for r in res.rows] == [True, False, False, False, True]
    rows = list(csv.DictReader(open(tmp_path / "out" / "interpolation.csv")))
    assert [r["non_empty"] for r in rows] == ["True", "False", "False", "False", "True"]
    assert (tmp_path / "out" / "interpolation.png").stat().st_size > 1_000
    assert "0 of 3 decoded steps" in res.summary_lines()[-1]


def test_interpolate_shapes_bad_input(sphere_run, tmp_path):
    run_dir, _ = sphere_run
    with pytest.raises(ValueError, match="no instance 'nope'"):
        interpolate_shapes(run_dir, "sphere-a", "nope", 3, tmp_path / "o")
    with pytest.raises(ValueError, match="steps"):
        interpolate_shapes(run_dir, "sphere-a", "sphere-b", 1, tmp_path / "o")
    with pytest.raises(ValueError, match="resolution"):
        interpolate_shapes(run_dir, "sphere-a", "sphere-b", 3, tmp_path / "o", resolution=1)
    with pytest.raises(ValueError, match="which"):
        interpolate_shapes(run_dir, "sphere-a", "sphere-b", 3, tmp_path / "o", which="first")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        interpolate_shapes(run_dir, "sphere-a", "sphere-b", 2, tmp_path / "file", resolution=8)
    with pytest.raises(ValueError, match="not a run folder"):
        interpolate_shapes(tmp_path, "sphere-a", "sphere-b", 2, None)


def test_png_shows_evenly_spaced_steps():
    """Long interpolations (netspace interpolate defaults to 100 steps) keep every .ply but show at most
    ``max_panels`` shapes in the PNG: both inputs, both ends and evenly spaced steps."""
    assert sdf_mesh._shown_steps(5, 10) == [0, 1, 2, 3, 4]
    shown = sdf_mesh._shown_steps(100, 10)
    assert len(shown) == 10 and shown[0] == 0 and shown[-1] == 99
    gaps = [b - a for a, b in zip(shown, shown[1:])]
    assert max(gaps) - min(gaps) <= 1


def test_netspace_interpolate_cli_on_an_sdf_run(sphere_run, tmp_path):
    """``netspace interpolate`` hands an SDF run to interpolate_shapes and prints its summary."""
    from click.testing import CliRunner

    from netspace_fast.cli import cli

    run_dir, set_decoder_output = sphere_run
    set_decoder_output(sphere_mlp(0.45))
    r = CliRunner().invoke(cli, ["interpolate", str(run_dir), "--a", "sphere-a", "--b", "sphere-b", "--steps", "5",
                                 "--out", str(tmp_path / "cli"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "5 of 5 decoded steps give a non-empty closed mesh" in r.output
    assert (tmp_path / "cli" / "interpolation.png").is_file() and (tmp_path / "cli" / "step_004.ply").is_file()
