"""`raykd mlm-distill` end to end on the session cluster (tests/e2e/conftest.py): tiny BERT built offline, served
by Ray Serve (its app deleted afterwards), student + baseline, MLflow run."""

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import serve_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mlm_distill_command_end_to_end(tmp_path, cluster_env):
    """The real job: tiny BERT built offline, served by Ray Serve, student + baseline, MLflow run."""
    cmd = [sys.executable, "-m", "raykd.cli", "mlm-distill", "--config", str(ROOT / "jobs" / "configs" / "mlm.yaml"),
           "teacher.build.steps=30", "teacher.build.corpus_chars=30000", "teacher.build.vocab_size=400",
           "data.builtin_chars=30000", "train.max_steps=6", "train.log_every=3", "eval.max_sequences=8"]
    with serve_app("raykd-mlm-teacher"):
        proc = subprocess.run(cmd, cwd=tmp_path, env=cluster_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kd student" in proc.stdout and "hard-label student" in proc.stdout and "teacher" in proc.stdout
    assert (tmp_path / "outputs" / "mlm" / "student" / "model.safetensors").is_file()
