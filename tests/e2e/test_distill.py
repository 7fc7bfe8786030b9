"""`raykd distill` end to end: teacher on Serve -> 2 Train workers -> MLflow -> evaluation table; what the
console shows; a worker's error reaching the user; a killed run resuming from its last checkpoint.

    pytest -m slow tests/e2e/test_distill.py

All three join the session cluster and its teacher (tests/e2e/conftest.py); the resumed run starts an embedded
cluster of its own.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import QUICKSTART, TINY_DISTILL, own_cluster_env

pytestmark = pytest.mark.slow

# What Ray prints about its internals when its logs reach the terminal (the console must show none).
RAY_INTERNALS = ("(RayTrainWorker", "(TrainController", "(ServeReplica", "PlacementGroupCleaner", "TrainingReport(",
                 "Checkpoint successfully created", "core_worker", "Started a local Ray instance", "Started Serve",
                 "Token authentication is enabled", "INFO ", "Traceback")


def _runs(tmp_path, experiment="e2e"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def assert_readable_console(proc: subprocess.CompletedProcess, max_lines: int = 40) -> list[str]:
    lines = (proc.stdout + proc.stderr).splitlines()
    noise = [line for line in lines if any(m in line for m in RAY_INTERNALS)]
    assert not noise, "\n".join(noise[:20])
    assert len(lines) <= max_lines, "\n".join(lines)
    assert all(line.startswith("[raykd") for line in proc.stderr.splitlines()), proc.stderr
    return lines


def test_distill_end_to_end(tmp_path, tiny_teacher, teacher_app, distill_cli):
    """The quickstart's shape, small: KD student + hard-label baseline, MLflow run tree, exported student, and a
    console of raykd's own lines (stage lines, one bar per training, the table). With sequence-level KD on: the
    KD student trains on the served teacher's continuations of 24 prompts, the baseline on the data."""
    proc = distill_cli(tmp_path, "run_name=e2e", f"teacher.path={tiny_teacher}", *TINY_DISTILL, "train.max_steps=6",
                       "train.log_every=3", "train.checkpoint_every=3", "mlflow.experiment=e2e",
                       "seqkd.enabled=true", "seqkd.prompt_tokens=8", "seqkd.max_new_tokens=24", "seqkd.max_prompts=24")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "kd student" in proc.stdout and "hard-label student" in proc.stdout and "teacher" in proc.stdout
    assert "seqkd: 24/24 prompts" in proc.stderr
    lines = assert_readable_console(proc)
    bars = [line for line in lines if re.match(r"\[raykd\] train (student|hard-label student) \[#{20}\] 6/6 steps", line)]
    assert len(bars) == 2, "\n".join(lines)  # each training ends its bar at 6/6 ...
    assert "tok/s  teacher wait" in bars[0] and "loss " in bars[0]  # ... with the loss, speed and teacher wait

    client, runs = _runs(tmp_path)
    by_name = {r.info.run_name: r for r in runs}
    main, base = by_name["e2e"], by_name["e2e-hard-only"]
    assert main.info.status == "FINISHED" and base.info.status == "FINISHED"
    assert base.data.tags["mlflow.parentRunId"] == main.info.run_id
    for key in ("loss", "loss_soft", "loss_hard", "temperature", "alpha", "lr", "student_tokens_per_s",
                "teacher_wait_fraction", "eval_kd_student_heldout_loss", "eval_teacher_heldout_loss",
                "eval_hard_label_student_heldout_loss", "eval_kd_student_params"):
        assert key in main.data.metrics, key
    assert [m.step for m in client.get_metric_history(main.info.run_id, "loss")] == [3, 6]
    assert main.data.params["loss.alpha"] == "0.9" and base.data.params["loss.alpha"] == "0.0"
    assert main.data.params["seqkd.enabled"] == "True" and base.data.params["seqkd.enabled"] == "False"
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


# A real failure inside the Train workers: the training blocks hold a token id the student's vocabulary does
# not have, so the embedding lookup raises on every worker (the driver never touches those blocks).
FAILING_DISTILL = textwrap.dedent("""
    import sys

    import raykd.train.loop as loop

    real_loop = loop.train_loop_per_worker

    def loop_with_a_bad_token(config):  # pickled by value into each Train worker
        import raykd.train.batches as batches

        real_batches = batches.step_batches

        def bad_batches(*args, **kwargs):
            for batch in real_batches(*args, **kwargs):
                batch.ids = batch.ids.copy()
                batch.ids[:, 5] = 10**6  # no such token: the embedding lookup fails inside the worker
                yield batch

        batches.step_batches = bad_batches
        return real_loop(config)

    loop.train_loop_per_worker = loop_with_a_bad_token
    from raykd.cli import main

    sys.exit(main(["distill", *sys.argv[1:]]))
""")



def test_an_error_inside_a_worker_reaches_the_console(tmp_path, tiny_teacher, teacher_app, cluster_env):
    script = tmp_path / "failing_distill.py"
    script.write_text(FAILING_DISTILL)
    proc = subprocess.run(
        [sys.executable, str(script), "--config", str(QUICKSTART), "run_name=fails", f"teacher.path={tiny_teacher}",
         *TINY_DISTILL, "train.max_steps=4", "eval.baseline=false", "mlflow.experiment=e2e",
         "train.max_failures=0"],  # the error is in the code, not a lost worker: no restarts to wait through
        cwd=tmp_path, env=cluster_env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1
    # The worker's own exception and the line of raykd's loop that raised it, not just "training failed".
    assert "IndexError: index out of range in self" in proc.stderr, proc.stderr[-4000:]
    assert re.search(r'File ".*raykd/train/loop\.py", line \d+, in train_loop_per_worker', proc.stderr), proc.stderr[-4000:]
    assert "raykd: Ray's logs of this run (workers, teacher replicas): " in proc.stderr.splitlines()[-1]
    _, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def test_killed_run_resumes_from_last_checkpoint(tmp_path, tiny_teacher, teacher_app, cluster_env):
    """A run on the session cluster, its driver SIGKILLed after the first registered checkpoint (Ray ends a dead
    driver's job: its Train controller and workers go with it); the same command, on a new embedded cluster (the
    old one lost, as a machine is), continues the MLflow run from that checkpoint and trains none of the earlier
    steps again."""
    cmd = [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART), "run_name=resume",
           f"teacher.path={tiny_teacher}", *TINY_DISTILL, "train.max_steps=40", "train.log_every=5",
           "train.checkpoint_every=10", "eval.baseline=false", "mlflow.experiment=e2e"]
    env = {**cluster_env, "RAYKD_BATCH_TRACE": str(tmp_path / "trace")}  # every step's blocks
    ckpt_root = tmp_path / "cache" / "runs" / "resume"
    first_log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=first_log, stderr=subprocess.STDOUT,
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

    restart = time.time() * 1000
    own = {**own_cluster_env(tmp_path), "RAYKD_BATCH_TRACE": str(tmp_path / "trace")}  # same stores, no RAY_ADDRESS
    second = subprocess.run(cmd, cwd=tmp_path, env=own, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resuming from step" in second.stderr, second.stderr[-3000:]
    resumed_step = int(second.stderr.split("resuming from step ")[1].split()[0])
    assert 10 <= resumed_step < 40  # the killed run had not finished
    assert_readable_console(second)  # an embedded cluster's start (and its teacher's deployment) says nothing either

    client, runs = _runs(tmp_path)
    assert len(runs) == 1  # the killed MLflow run was continued, not duplicated
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags.get("raykd.resumed") == "true"
    # Training went on from the checkpoint: the resumed run's first logged step is the next log step after it,
    # nothing before it was trained again, and the history reaches the end.
    resumed = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss") if m.timestamp >= restart)
    assert resumed[0] == resumed_step + 5 and resumed[-1] == 40, resumed

    # Every sample the uninterrupted run trains on was trained on: the killed run's steps before the checkpoint
    # and the resumed run's from it cover every (step, worker), each with the blocks of the seeded order
    # (raykd/data/order.py; tests/e2e/test_data.py checks the Ray Data path yields exactly that order).
    from raykd.data.order import batch_indices

    n_train = int(runs[0].data.metrics["data_train_blocks"])
    seen: dict[tuple[int, int], list[list[int]]] = {}
    for f in (tmp_path / "trace").glob("rank*.jsonl"):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # the line the SIGKILL cut short
                continue
            seen.setdefault((r["step"], r["rank"]), []).append(r["index"])
    assert sorted(seen) == [(s, r) for s in range(40) for r in range(2)]
    for r in range(2):
        order = batch_indices(n_train, 8, 2, r, 0, 0)
        for s in range(40):
            expected = next(order).tolist()
            assert all(got == expected for got in seen[(s, r)]), (s, r)
        assert len(seen[(resumed_step, r)]) >= 1 and all(len(seen[(s, r)]) == 1 for s in range(resumed_step))
