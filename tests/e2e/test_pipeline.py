"""The three-stage pipeline end to end on a real local Ray cluster, killed mid-stage and resumed (slow).

The pipeline runs as `python -m raykd.cli pipeline` in its own process group; once the instruction stage
has written a Ray Train checkpoint the whole group is SIGKILLed (no clean-up code runs: the MLflow runs
stay RUNNING, like a lost node). Running the same command again must:
* reuse the completed general stage (no second child run, its student directory untouched),
* continue the instruction stage's MLflow run and restore its Ray Train checkpoint,
* finish the domain stage, and leave one parent run with three children, plots, eval tables, the final
  student as an MLflow model and a registered version tagged with the lineage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.pipeline.tiny_pipeline import tiny_pipeline, write_yaml

pytestmark = pytest.mark.slow


def _launch(config: Path, log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "raykd.cli", "pipeline", "--config", str(config)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=config.parent,
    )


def _checkpoint_steps(runs: Path, pattern: str) -> list[int]:
    steps = []
    for state in runs.glob(f"{pattern}/checkpoint_*/state.json"):
        try:
            steps.append(json.loads(state.read_text())["step"])
        except (ValueError, OSError):  # being written
            pass
    return steps


@pytest.mark.timeout(1200)
def test_pipeline_killed_mid_stage_resumes_and_registers(tiny_teacher, tmp_path):
    from mlflow.tracking import MlflowClient

    tree = tiny_pipeline(tiny_teacher, tmp_path, name="e2e", instruction_steps=30)
    config = write_yaml(tree, tmp_path / "pipeline.yaml")
    # Its own embedded cluster (no RAY_ADDRESS), cache and MLflow store.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAYKD_CACHE": str(tmp_path / "cache")}
    runs = tmp_path / "runs"

    first = _launch(config, tmp_path / "first.log", env)
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and first.poll() is None:
            if any(s >= 8 for s in _checkpoint_steps(runs, "e2e-instruction-*")):
                break
            time.sleep(0.2)
        assert first.poll() is None, "the pipeline ended before it could be interrupted:\n" + (tmp_path / "first.log").read_text()[-3000:]
        killed_at = max(_checkpoint_steps(runs, "e2e-instruction-*"))
        assert killed_at < 30
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    general_student = tmp_path / "out" / "e2e" / "e2e-general" / "student" / "model.safetensors"
    assert general_student.is_file()
    mtime = general_student.stat().st_mtime_ns
    time.sleep(5)  # let the killed cluster's processes go

    restart = time.time() * 1000
    second = _launch(config, tmp_path / "second.log", env)
    assert second.wait(timeout=1200) == 0, (tmp_path / "second.log").read_text()[-5000:]
    log = (tmp_path / "second.log").read_text()
    assert "stages[0] (general): completed by an earlier run" in log
    restored = [int(x.split("step ")[1].split("/")[0]) for x in log.splitlines() if "resuming from its Ray Train checkpoint" in x]
    assert restored and 4 <= restored[0] < 30, "\n".join(x for x in log.splitlines() if "resum" in x or "checkpoint" in x)
    assert general_student.stat().st_mtime_ns == mtime  # not retrained

    client = MlflowClient(tree["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("pipelines")
    parents = client.search_runs([exp.experiment_id], "tags.`raykd.job` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {}
    for c in children:
        by_stage.setdefault(c.data.tags["raykd.stage"], []).append(c)
    assert sorted(by_stage) == ["domain", "general", "instruction"]
    assert all(len(v) == 1 and v[0].info.status == "FINISHED" for v in by_stage.values())
    instruction = by_stage["instruction"][0]
    assert instruction.data.tags.get("raykd.resumed") == "true"
    # The resumed training logged steps after the checkpoint into the same run: its first step there is the
    # next log step after the checkpoint (nothing before it trained again), and its history reaches the end.
    history = client.get_metric_history(instruction.info.run_id, "loss_hard")
    resumed = sorted(m.step for m in history if m.timestamp >= restart)
    assert resumed[0] == restored[0] + 2 and resumed[-1] == max(m.step for m in history) == 30, resumed
    for c in (v[0] for v in by_stage.values()):
        arts = {a.path for a in client.list_artifacts(c.info.run_id, "plots")}
        assert arts == {"plots/loss.png", "plots/schedules.png"}
        assert {"eval", "config", "student"} <= {a.path for a in client.list_artifacts(c.info.run_id)}
        assert "eval_student_domain_loss" in c.data.metrics and "eval_teacher_general_loss" in c.data.metrics
    assert by_stage["general"][0].data.tags["raykd.lineage.parent_student"] == "derived from the teacher"
    assert by_stage["domain"][0].data.tags["raykd.lineage.parent_student"].endswith("e2e-instruction/student")
    assert "eval_domain_gain" in by_stage["domain"][0].data.metrics

    tags = client.get_run(parent.info.run_id).data.tags
    assert tags["raykd.completed_stages"] == "general,instruction,domain"
    assert tags["raykd.lineage"] == "general → instruction → domain"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {
        "plots/eval_progress.png", "plots/stages_curves.png"}
    assert any(k.startswith("retention_") for k in client.get_run(parent.info.run_id).data.metrics)

    version = client.get_model_version("e2e-student", tags["raykd.registered_version"])
    assert version.tags["raykd.lineage"] == "general → instruction → domain"
    assert version.tags["raykd.stage.1.instruction.run_id"] == instruction.info.run_id
    assert version.tags["raykd.pipeline_run_id"] == parent.info.run_id

    import mlflow

    mlflow.set_tracking_uri(tree["mlflow"]["tracking_uri"])
    generator = mlflow.transformers.load_model(f"models:/e2e-student/{version.version}")
    out = generator("Tom had 5 apples.", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("Tom had 5 apples.")
