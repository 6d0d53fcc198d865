"""Runtime settings (netspace_fast/settings.py): the Triton kernels' TF32 choice follows torch's float32
matmul precision unless NETSPACE_TF32 says otherwise (they once used TF32 whatever torch said)."""

from __future__ import annotations

import pytest
import torch

from netspace_fast import settings


@pytest.fixture
def precision():
    before = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_tf32_follows_torch_by_default(precision, monkeypatch):
    monkeypatch.delenv("NETSPACE_TF32", raising=False)
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default: full float32
    assert settings.tf32() is False
    torch.set_float32_matmul_precision("high")
    assert settings.tf32() is True
    torch.backends.cuda.matmul.allow_tf32 = False
    assert settings.tf32() is False
    torch.backends.cuda.matmul.allow_tf32 = True  # the legacy switch too
    assert settings.tf32() is True


def test_tf32_environment_overrides_torch(precision, monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = False
    monkeypatch.setenv("NETSPACE_TF32", "1")
    assert settings.tf32() is True
    torch.set_float32_matmul_precision("high")
    monkeypatch.setenv("NETSPACE_TF32", "0")
    assert settings.tf32() is False
    monkeypatch.setenv("NETSPACE_TF32", "yes")
    with pytest.raises(ValueError, match="NETSPACE_TF32: expected 0 or 1, got 'yes'"):
        settings.tf32()
