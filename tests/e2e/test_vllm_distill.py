"""`raykd distill teacher.backend=vllm` with a teacher path the engine cannot use fails before any cluster starts,
with one line. (The run that trains on vLLM replicas end to end is tests/e2e/test_vllm_serve.py's.)

    pytest -m slow tests/e2e/test_vllm_distill.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import QUICKSTART

pytestmark = pytest.mark.slow


def distill(tmp_path: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART), *overrides],
        cwd=tmp_path, env={**env, "RAYKD_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
        timeout=timeout,
    )


def test_teacher_vllm_cannot_load_fails_before_the_cluster(tmp_path, tiny_teacher):
    bad = tmp_path / "bad-teacher"
    bad.mkdir()
    for f in tiny_teacher.iterdir():
        if f.name != "config.json":
            (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tiny_teacher / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    proc = distill(tmp_path, f"teacher.path={bad}", "teacher.backend=vllm", "data.builtin_chars=20000",
                   "data.seq_len=64")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "teacher.path" in last and "NoSuchModelForCausalLM is not in its model registry" in last, proc.stderr[-2000:]
    assert "Started a local Ray instance" not in proc.stderr and "deploying teacher" not in proc.stderr
