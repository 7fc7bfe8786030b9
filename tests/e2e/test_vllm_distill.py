"""`raykd distill` with `teacher.backend=vllm`, end to end on an embedded Ray: the quickstart config on a very
small teacher for a few steps (teacher on a vLLM Serve replica -> 2 Train workers -> MLflow -> evaluation).

    pytest -m slow tests/e2e/test_vllm_distill.py       # a few minutes on 2 cores

Also: a vLLM teacher path the engine cannot use fails before any cluster starts, with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "jobs" / "configs" / "quickstart.yaml"
pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "PYTHONUNBUFFERED": "1"}


def distill(tmp_path: Path, *overrides: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART), *overrides],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout,
    )


def test_distill_with_vllm_teacher(tmp_path, tiny_teacher):
    proc = distill(
        tmp_path, "run_name=vllm-e2e", f"teacher.path={tiny_teacher}", "teacher.backend=vllm",
        "teacher.vllm.kv_cache_memory_bytes=67108864", "student.num_layers=1", "student.hidden_size=64",
        "data.builtin_chars=60000", "data.seq_len=64", "train.max_steps=6", "train.batch_size=8", "train.log_every=3",
        "train.checkpoint_every=6", "train.warmup_steps=2", "eval.baseline=false", "eval.max_sequences=8",
        "eval.gen_tokens=8", "eval.gen_prompts=2", "mlflow.experiment=vllm-e2e",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "deploying teacher (vllm" in proc.stderr and "kd student" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("vllm-e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["teacher.backend"] == "vllm"
    assert run.data.metrics["loss_soft"] > 0 and "eval_teacher_heldout_loss" in run.data.metrics
    assert (tmp_path / "outputs" / "vllm-e2e" / "student" / "model.safetensors").is_file()


def test_teacher_vllm_cannot_load_fails_before_the_cluster(tmp_path, tiny_teacher):
    bad = tmp_path / "bad-teacher"
    bad.mkdir()
    for f in tiny_teacher.iterdir():
        if f.name != "config.json":
            (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tiny_teacher / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    proc = distill(tmp_path, f"teacher.path={bad}", "teacher.backend=vllm", "data.builtin_chars=20000",
                   "data.seq_len=64", timeout=600)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "teacher.path" in last and "NoSuchModelForCausalLM is not in its model registry" in last, proc.stderr[-2000:]
    assert "Started a local Ray instance" not in proc.stderr and "deploying teacher" not in proc.stderr
