"""The GPU machine's scripts, checked where no GPU is: they parse, every benchmark and script they
name exists, the commands script says it skips without CUDA, and each GPU benchmark script has its
CPU smoke mode (``--device cpu --quick``). A renamed file or a syntax error would otherwise first
show on a lent device, whose minutes are few."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_device_check_names_existing_files():
    text = (REPO / "scripts" / "device_check.sh").read_text()
    benches = re.findall(r"\[(\w+)\]=(benchmarks/\S+\.py)", text)
    assert {name for name, _ in benches} >= {"pack", "space", "batched", "zoo"}
    for _, path in benches:
        assert (REPO / path).is_file(), path
    default = re.search(r"NETSPACE_DEVICE_BENCHES-([\w ]+)\}", text).group(1).split()
    assert set(default) <= {name for name, _ in benches}
    assert "scripts/gpu_commands.sh" in text and (REPO / "scripts" / "gpu_commands.sh").is_file()
    for _, path in benches:  # the CPU smoke mode each script documents
        assert "--quick" in (REPO / path).read_text() and "--device" in (REPO / path).read_text(), path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_commands_skips_without_cuda(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), NETSPACE_DEVICE="cuda")
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_commands.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped: no CUDA" in r.stdout
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_commands.sh")], capture_output=True, text=True,
                       env=dict(env, NETSPACE_DEVICE="tpu"), timeout=60)
    assert r.returncode == 2 and "NETSPACE_DEVICE: expected cuda or cpu" in r.stderr
