"""`raykd distill` with `teacher.backend=vllm`, end to end on the session cluster (tests/e2e/conftest.py): the
quickstart config on a very small teacher for a few steps (teacher on a vLLM Serve replica -> 2 Train workers ->
MLflow -> evaluation). The vLLM app has a name of its own and is deleted afterwards.

    pytest -m slow tests/e2e/test_vllm_distill.py       # a minute or two on 2 cores

Also: a vLLM teacher path the engine cannot use fails before any cluster starts, with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import QUICKSTART, TINY_DISTILL, serve_app

pytestmark = pytest.mark.slow


def test_distill_with_vllm_teacher(tmp_path, tiny_teacher, distill_cli):
    with serve_app("raykd-vllm-e2e") as app:
        proc = distill_cli(
            tmp_path, "run_name=vllm-e2e", f"teacher.path={tiny_teacher}", "teacher.backend=vllm",
            f"teacher.app_name={app}", "teacher.vllm.kv_cache_memory_bytes=67108864", *TINY_DISTILL,
            "train.max_steps=4", "train.log_every=2", "train.checkpoint_every=4", "eval.baseline=false",
            "mlflow.experiment=vllm-e2e",
        )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "deploying teacher (vllm" in proc.stderr and "kd student" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("vllm-e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["teacher.backend"] == "vllm"
    assert run.data.tags["raykd.teacher_scoring"] == "engine-topk", run.data.tags  # the fast path is the default
    assert run.data.metrics["loss_soft"] > 0 and "eval_teacher_heldout_loss" in run.data.metrics
    assert (tmp_path / "outputs" / "vllm-e2e" / "student" / "model.safetensors").is_file()


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
