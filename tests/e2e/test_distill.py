"""`raykd distill` end to end: teacher on Serve -> 2 Train workers -> MLflow -> evaluation table; what the
console shows; a worker's error reaching the user. (A stopped run resuming from its last checkpoint:
tests/e2e/test_faults.py; a SIGKILLed one: tests/e2e/test_pipeline.py.)

    pytest -m slow tests/e2e/test_distill.py

Both join the session cluster and its teacher (tests/e2e/conftest.py).
"""

import re
import subprocess
import sys
import textwrap

import pytest

from .conftest import QUICKSTART, TINY_DISTILL

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
