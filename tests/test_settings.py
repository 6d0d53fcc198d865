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


# ---------------------------------------------------------------------------------------------
# cuDNN's autotuner: one rule for the GPU program, the CLI and the GPU benchmarks

@pytest.fixture
def autotuner():
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    yield
    torch.backends.cudnn.benchmark = before[0]
    torch.use_deterministic_algorithms(before[1])


def test_cudnn_benchmark_rule(autotuner, monkeypatch):
    monkeypatch.delenv("NETSPACE_CUDNN_BENCHMARK", raising=False)
    torch.backends.cudnn.benchmark = False
    assert settings.cudnn_benchmark() is True and settings.apply_cudnn_benchmark() is True
    assert torch.backends.cudnn.benchmark is True
    monkeypatch.setenv("NETSPACE_CUDNN_BENCHMARK", "0")
    assert settings.apply_cudnn_benchmark() is False and torch.backends.cudnn.benchmark is False
    monkeypatch.setenv("NETSPACE_CUDNN_BENCHMARK", "keep")  # the caller's flag, either way
    for flag in (True, False):
        torch.backends.cudnn.benchmark = flag
        assert settings.cudnn_benchmark() is None and settings.apply_cudnn_benchmark() is flag
    monkeypatch.setenv("NETSPACE_CUDNN_BENCHMARK", "1")
    torch.use_deterministic_algorithms(True)  # reproducible algorithms: no autotuning
    torch.backends.cudnn.benchmark = True
    assert settings.cudnn_benchmark() is False and settings.apply_cudnn_benchmark() is False
    monkeypatch.setenv("NETSPACE_CUDNN_BENCHMARK", "yes")
    with pytest.raises(ValueError, match=r"NETSPACE_CUDNN_BENCHMARK: expected one of \('1', '0', 'keep'\), got 'yes'"):
        settings.cudnn_benchmark()


def test_the_gpu_program_applies_the_rule(autotuner, monkeypatch):
    """Every call of the GPU program (here its CPU rehearsal) sets the flag by the rule; the CPU
    program leaves it alone."""
    from netspace_fast.engine.graphs import GraphCache

    monkeypatch.delenv("NETSPACE_CUDNN_BENCHMARK", raising=False)
    cache = GraphCache()
    x = torch.ones(2)
    torch.backends.cudnn.benchmark = False
    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "0")
    assert torch.equal(cache.call("k", lambda t: t * 2, (x,)), x * 2) and torch.backends.cudnn.benchmark is False
    monkeypatch.setenv("NETSPACE_GPU_REHEARSAL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert torch.equal(cache.call("k", lambda t: t * 2, (x,)), x * 2) and torch.backends.cudnn.benchmark is True


def test_the_cli_applies_the_rule_to_cuda(autotuner, monkeypatch):
    """``--device cuda`` (the shared option's check) sets the flag; an unknown value is one line naming
    the variable."""
    from netspace_fast.cli.base import CliError, check_device

    monkeypatch.delenv("NETSPACE_CUDNN_BENCHMARK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.backends.cudnn.benchmark = False
    assert check_device("cpu") == "cpu" and torch.backends.cudnn.benchmark is False
    assert check_device("cuda") == "cuda" and torch.backends.cudnn.benchmark is True
    monkeypatch.setenv("NETSPACE_CUDNN_BENCHMARK", "2")
    with pytest.raises(CliError, match="^NETSPACE_CUDNN_BENCHMARK: expected one of"):
        check_device("cuda")


def test_gpu_benchmarks_take_the_rule_not_their_own():
    """No benchmark or script sets cuDNN's autotuner itself: each GPU benchmark calls the rule."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("benchmarks", "scripts", "netspace_fast") for p in (root / d).rglob("*.py")]
    setters = [str(p.relative_to(root)) for p in files if "cudnn.benchmark =" in p.read_text()]
    assert setters == ["netspace_fast/settings.py"], setters
    gpu = sorted(str(p.relative_to(root)) for p in (root / "benchmarks").rglob("gpu_bench_*.py"))
    conv = [p for p in gpu if "apply_cudnn_benchmark()" in (root / p).read_text()]
    assert conv == [p for p in gpu if "zoo" in p or "space" in p or "batched_forward" in p] and len(conv) == 3, gpu
