"""End to end on an embedded Ray: teacher on Serve -> 2 Train workers -> MLflow; kill and resume.

Slow (a minute or two each on 2 cores): `pytest -m slow tests/e2e/test_distill.py`.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "jobs" / "configs" / "quickstart.yaml"
pytestmark = pytest.mark.slow


def tiny_overrides(teacher: Path, run_name: str, steps: int) -> list[str]:
    return [
        f"run_name={run_name}", f"teacher.path={teacher}", "student.num_layers=1", "student.hidden_size=64",
        "data.builtin_chars=60000", "data.seq_len=64", f"train.max_steps={steps}", "train.batch_size=8",
        "train.log_every=5", "train.checkpoint_every=5", "train.warmup_steps=2", "eval.max_sequences=8",
        "eval.gen_tokens=8", "eval.gen_prompts=2", "mlflow.experiment=e2e",
    ]


def _env(tmp_path):
    return {**os.environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "PYTHONUNBUFFERED": "1"}


def _runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("e2e")
    return client, client.search_runs([exp.experiment_id])


def test_distill_end_to_end(tmp_path, tiny_teacher):
    proc = subprocess.run(
        [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART),
         *tiny_overrides(tiny_teacher, "e2e", 10)],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "kd student" in proc.stdout and "hard-label student" in proc.stdout and "teacher" in proc.stdout

    client, runs = _runs(tmp_path)
    by_name = {r.info.run_name: r for r in runs}
    main, base = by_name["e2e"], by_name["e2e-hard-only"]
    assert main.info.status == "FINISHED" and base.info.status == "FINISHED"
    assert base.data.tags["mlflow.parentRunId"] == main.info.run_id
    for key in ("loss", "loss_soft", "loss_hard", "temperature", "alpha", "lr", "student_tokens_per_s",
                "teacher_wait_fraction", "eval_kd_student_heldout_loss", "eval_teacher_heldout_loss",
                "eval_hard_label_student_heldout_loss", "eval_kd_student_params"):
        assert key in main.data.metrics, key
    assert len(client.get_metric_history(main.info.run_id, "loss")) == 2  # steps 5 and 10
    assert main.data.params["loss.alpha"] == "0.5" and base.data.params["loss.alpha"] == "0.0"
    artifacts = {a.path for a in client.list_artifacts(main.info.run_id)}
    assert {"student", "eval_table.txt", "training_curves.png"} <= artifacts

    # The exported student is a plain HF directory that loads and generates.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student_dir = tmp_path / "outputs" / "e2e" / "student"
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    tok = AutoTokenizer.from_pretrained(student_dir)
    ids = tok("the", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5 and model.config.num_hidden_layers == 1


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def test_killed_run_resumes_from_last_checkpoint(tmp_path, tiny_teacher):
    cmd = [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART),
           *tiny_overrides(tiny_teacher, "resume", 400), "eval.baseline=false", "train.checkpoint_every=20"]
    ckpt_root = tmp_path / "cache" / "runs" / "resume"
    first_log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=first_log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 600
    # Kill once Ray Train has *registered* a checkpoint (its snapshot names it), not when the checkpoint folder
    # first appears: a run killed in between has nothing to resume from and rightly starts again.
    snapshot = ckpt_root / "checkpoint_manager_snapshot.json"
    while time.time() < deadline and first.poll() is None and "checkpoint_" not in _read(snapshot):
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended early:\n" + (tmp_path / "first.log").read_text()[-4000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    first_log.close()
    assert "step 400/400" not in (tmp_path / "first.log").read_text()

    second = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    log = second.stderr
    assert "resuming from step" in log, log[-3000:]
    resumed_step = int(log.split("resuming from step ")[1].split()[0])
    assert 20 <= resumed_step < 400
    assert f"step {resumed_step + 5}/400" in log or f"step {resumed_step + 20}/400" in log
    assert "step 5/400" not in log  # nothing before the checkpoint was trained again
    client, runs = _runs(tmp_path)
    assert len(runs) == 1  # the killed MLflow run was continued, not duplicated
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags.get("raykd.resumed") == "true"
