"""The memorization audit (netspace_fast/explore/audit.py, `netspace audit`): its nearest-network
search finds a copy exactly, every kind of generated network and both baselines get a row, and bad
arguments are refused before anything runs."""

from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner

from netspace_fast.cli import cli
from netspace_fast.explore.audit import AUDIT_FIELDS, _Reference, audit, predictions
from netspace_fast.explore.common import open_explorer, trim
from netspace_fast.explore.export import save_embedding


def test_a_copy_is_found_exactly(single_run):
    """A training network audited against the training set: distance 0, agreement 1, itself as the
    nearest by both measures; a perturbed copy is no longer at distance 0."""
    ex = open_explorer(single_run)
    x, _ = ex.images("test")
    ids = [e["id"] for e in ex.zoo.instances("train")]
    ref = _Reference(ex, "lenetlike", ids, x, chunk=2)
    spec = ex.space.specs[0]
    p = torch.stack([trim(q, spec) for q in ex.preps(ids)])
    rows = ref.match(p, predictions(spec, p, x))
    for i, r in zip(ids, rows):
        assert r["nearest_l2"] == i and r["l2_distance"] == 0 and r["l2_ratio"] == 0
        assert r["agreement"] == 1.0 and r["agreement_with_nearest_l2"] == 1.0
    moved = p[:1] + 0.5 * ref.median / p[0].numel() ** 0.5 * torch.randn_like(p[:1])
    r = ref.match(moved, predictions(spec, moved, x))[0]
    assert r["nearest_l2"] == ids[0] and 0.3 < r["l2_ratio"] < 0.7


def test_audit_single(single_run, tmp_path):
    ex = open_explorer(single_run)
    z = ex.space.encode(ex.preps([ex.zoo.instances("train")[0]["id"]]))
    save_embedding(tmp_path / "e.safetensors", z[0])
    a = audit(single_run, out=tmp_path / "audit", steps=3, embeddings=[tmp_path / "e.safetensors"], images=64)
    kinds = [r["kind"] for r in a.rows]
    n_test = len(ex.zoo.instances("test"))
    assert kinds.count("decoded") == kinds.count("noise_baseline") == kinds.count("average_baseline") == n_test
    assert kinds.count("interpolation") == 0  # one test network: nothing to interpolate between
    assert kinds.count("embedding") == 1
    for r in a.rows:
        assert 0.0 <= r["agreement"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        assert r["nearest_l2"] in {e["id"] for e in ex.zoo.instances("train")}
    dec = next(r for r in a.rows if r["kind"] == "decoded")
    assert 0.0 <= dec["agreement_with_input"] <= 1.0
    with open(a.files["csv"]) as f:
        assert tuple(next(csv.reader(f))) == AUDIT_FIELDS
    assert a.files["png"].stat().st_size > 0 and "| decoded | 1 |" in a.files["summary"].read_text()
    b = audit(single_run, split="train", steps=2, images=64)  # 3 train networks: an interpolation too
    assert [r["kind"] for r in b.rows].count("interpolation") == 2


def test_audit_multi_unseen(multi_run, tmp_path):
    """A Multi space over every architecture of its zoo: the test split's VanillaCNN and ResNet8 have no
    training networks of their own, so they are matched by predictions only."""
    a = audit(multi_run, steps=0, images=32)
    rows = [r for r in a.rows if r["kind"] == "decoded"]
    assert len(rows) == 2
    for r in rows:
        if r["arch"] in ("vanillacnn", "resnet8"):
            assert r["nearest_l2"] is None and r["nearest_agreement"] is not None


@pytest.mark.parametrize("kw, message", [({"split": "holdout"}, "split: expected"),
                                         ({"steps": -1}, "steps: expected an int >= 0"),
                                         ({"images": 0}, "images: expected a positive int"),
                                         ({"chunk": 0}, "chunk: expected a positive int")])
def test_audit_bad_arguments(single_run, kw, message):
    with pytest.raises(ValueError, match=message):
        audit(single_run, **kw)


def test_audit_cli(single_run, tmp_path):
    r = CliRunner().invoke(cli, ["audit", str(single_run), "--out", str(tmp_path / "a"), "--images", "32"])
    assert r.exit_code == 0, r.output
    assert "agreement with the nearest training network" in r.output and (tmp_path / "a" / "audit.csv").is_file()
    r = CliRunner().invoke(cli, ["audit", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 1 and r.output.startswith("error: ")
