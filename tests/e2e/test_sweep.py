"""Real sweeps: the `raykd sweep` command in a child process joined to the session cluster and its teacher
(tests/e2e/conftest.py), on conftest's tiny teacher, with the example configs shrunk: 30 steps, reports every 10.
ASHA (interrupted with Ctrl-C, resumed, its best config re-run) and PBT.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raykd.config import DistillConfig, load_config
from tests.sweep.examples import ASHA_YAML, PBT_YAML, ROOT

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------------------------- real sweeps
# The real command in a child process, on the session teacher (conftest's tiny one, app raykd-teacher), with
# the example configs shrunk: 30 steps, reports every 10.
SMALL = ["base.teacher.app_name=raykd-teacher", "base.data.builtin_chars=60000", "base.train.max_steps=30",
         "base.train.checkpoint_every=10",
         "base.train.log_every=10", "base.train.batch_size=4", "base.eval.max_sequences=8"]


def _sweep_cmd(config: Path, tmp_path: Path, teacher: Path, name: str, *extra: str,
               entry: tuple[str, ...] = ("-m", "raykd.cli", "sweep")) -> list[str]:
    return [sys.executable, *entry, "--config", str(config), f"name={name}",
            f"storage_path={tmp_path / 'sweeps'}", f"base.output_dir={tmp_path / 'out'}",
            f"base.teacher.path={teacher}", *SMALL, *extra]


def _mlflow(tmp_path: Path, experiment: str = "raykd-sweeps"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _children(runs, parent):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_asha_sweep_interrupted_resumed_tracked_and_its_best_config_reproduces(tmp_path, tiny_teacher, teacher_app,
                                                                             cluster_env) -> None:
    # Through jobs/sweep.py, the `ray job submit` entrypoint (tests/e2e/test_job_submit.py submits jobs/distill.py).
    # Ctrl-C once a trial has checkpointed; the same command refuses to start over; `--resume` finishes the sweep.
    cmd = _sweep_cmd(ASHA_YAML, tmp_path, tiny_teacher, "asha", "num_samples=3", "asha.grace_period=10",
                     entry=(str(ROOT / "jobs" / "sweep.py"),))
    log = tmp_path / "first.log"
    first = subprocess.Popen(cmd, cwd=tmp_path, env=cluster_env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    exp_dir = tmp_path / "sweeps" / "asha"
    deadline = time.time() + 1200
    while not list(exp_dir.glob("*/checkpoint_*")) and first.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert first.poll() is None, "the sweep ended before it could be interrupted"
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment and stops the trials
    first.wait(timeout=300)
    err = log.read_text()
    assert first.returncode == 130, err[-4000:]
    assert "--resume" in err.splitlines()[-1]

    again = subprocess.run(cmd, cwd=tmp_path, env=cluster_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    proc = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=cluster_env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "resuming sweep asha" in proc.stderr
    assert proc.stderr.count("deploying the shared teacher") == 1
    # Each trial's results continue from its checkpoint: no step is reported twice.
    for progress in exp_dir.glob("*/progress.csv"):
        import csv

        steps = [int(float(row["step"])) for row in csv.DictReader(progress.open())]
        assert steps == sorted(set(steps)), (progress, steps)

    out = tmp_path / "out" / "asha"
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 2 + 3 and sum("**best**" in line for line in table) == 1
    client, runs = _mlflow(tmp_path)
    parents = [r for r in runs if r.info.run_name == "asha"]
    assert len(parents) == 1  # the same parent run, continued
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["scheduler"] == "asha"
    assert {"results.md", "best.yaml", "curves.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = _children(runs, parent)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert any(c.data.tags.get("raykd.resumed") == "true" for c in children)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert steps == sorted(steps) and steps[0] == 10 and steps[-1] == int(child.data.tags["raykd.sweep.final_step"])
        assert client.get_metric_history(child.info.run_id, "loss_hard")  # the training curves of the trial
        values = json.loads(child.data.tags["raykd.sweep.values"])
        assert child.data.params["loss.alpha"] == str(values["loss.alpha"])
    best_trial = parent.data.tags["raykd.sweep.best_trial"]
    best_metric = parent.data.metrics["best_val_loss"]

    # The exported config runs as is with `raykd distill` and lands on the trial's held-out loss.
    best_yaml = out / "best.yaml"
    assert best_trial in best_yaml.read_text().splitlines()[0]
    proc = subprocess.run([sys.executable, "-m", "raykd.cli", "distill", "--config", str(best_yaml)],
                          cwd=tmp_path, env=cluster_env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    _, runs = _mlflow(tmp_path)
    rerun = next(r for r in runs if r.info.run_name == "asha-best")
    replayed = rerun.data.metrics["eval_kd_student_heldout_loss"]
    print(f"best trial {best_trial}: val_loss {best_metric:.5f}; raykd distill best.yaml: {replayed:.5f}")
    assert replayed == pytest.approx(best_metric, abs=0.02)


def test_pbt_sweep_copies_checkpoints_and_records_the_schedule(tmp_path, tiny_teacher, teacher_app, cluster_env) -> None:
    # Synchronous PBT on a population of 2: at step 10 both trials wait for each other, then the worse one
    # continues from the better one's checkpoint with perturbed T/alpha, the other from its own (a pause/restore).
    cmd = _sweep_cmd(PBT_YAML, tmp_path, tiny_teacher, "pbt", "pbt.synch=true", "base.train.max_steps=20",
                     "num_samples=2", "pbt.quantile_fraction=0.5")
    proc = subprocess.run(cmd, cwd=tmp_path, env=cluster_env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-6000:]
    histories = []
    for state in (tmp_path / "sweeps" / "pbt").glob("*/checkpoint_*/sweep_state.json"):
        histories.append(json.loads(state.read_text())["history"])
    exploited = [h for h in histories if len({e["trial_id"] for e in h}) > 1]
    assert exploited, histories
    for h in exploited:
        assert [e["step"] for e in h] == sorted(e["step"] for e in h) and h[0]["step"] == 0
        assert all(set(e["values"]) == {"loss.temperature", "loss.alpha"} for e in h)
        for e in h:
            assert 1.0 <= e["values"]["loss.temperature"] <= 6.0 and 0.1 <= e["values"]["loss.alpha"] <= 0.95
    out = tmp_path / "out" / "pbt"
    schedule = (out / "pbt_schedule.md").read_text()
    assert schedule.startswith("PBT schedules") and "(best)" in schedule and "| 0 |" in schedule
    cfg = load_config(DistillConfig, out / "best.yaml")
    assert cfg.run_name == "pbt-best" and cfg.train.max_steps == 20
    client, runs = _mlflow(tmp_path)
    parent = next(r for r in runs if r.info.run_name == "pbt")
    children = _children(runs, parent)
    assert len(children) == 2  # a PBT restart continues its trial's run, it does not open another
    assert any(c.data.tags.get("raykd.resumed") == "true" for c in children)
