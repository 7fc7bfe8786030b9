"""Bad input to `raykd distill`: one clear line, exit code 2, no cluster, no MLflow run left behind."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "jobs" / "configs" / "quickstart.yaml"


def _run(tmp_path, *overrides):
    proc = subprocess.run(
        [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART), *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": ""},
    )
    return proc


def _assert_clean_failure(proc, tmp_path, needle):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("raykd: error: ") and needle in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # failed before any run was created
    assert not (tmp_path / "cache" / "teachers").exists() or needle == "vocab"  # no teacher built for bad input


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["loss.alpah=0.3"], "unknown config key 'loss.alpah'"),
        (["loss.alpha=1.2"], "loss.alpha"),
        (["loss.temperature=-2"], "loss.temperature"),
        (["loss.on_policy.fraction=0.5", "loss.on_policy.prompt_tokens=128"], "loss.on_policy.prompt_tokens=128"),
        (["teacher.path=/nonexistent/teacher"], "teacher.path: model path not found: /nonexistent/teacher"),
    ],
)
def test_config_and_path_errors(tmp_path, overrides, needle):
    _assert_clean_failure(_run(tmp_path, *overrides), tmp_path, needle)


def test_empty_dataset(tmp_path, tiny_teacher):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = _run(tmp_path, f"teacher.path={tiny_teacher}", f"data.source={empty}", "data.task_fraction=0")
    _assert_clean_failure(proc, tmp_path, f"data.source: {empty} is empty")
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    proc = _run(tmp_path, f"teacher.path={tiny_teacher}", f"data.source={short}", "data.task_fraction=0")
    _assert_clean_failure(proc, tmp_path, "only 1 sequence(s) of 128 tokens; need at least 2")


def test_teacher_student_vocab_mismatch(tmp_path, tiny_teacher, other_vocab_teacher):
    proc = _run(tmp_path, f"teacher.path={tiny_teacher}", f"student.path={other_vocab_teacher}")
    _assert_clean_failure(proc, tmp_path, "student.path: vocab_size 320 differs from the teacher's 384")


def test_cross_tokenizer_needs_alignable_student_tokens(tmp_path, tiny_teacher, uncased_teacher, other_vocab_teacher):
    """With loss.cross_tokenizer a student of another vocabulary passes the vocabulary check; one whose tokens
    the teacher cannot write (an uncased teacher, a cased student) fails with one line before any cluster."""
    xtok = "loss.cross_tokenizer={}"
    proc = _run(tmp_path, f"teacher.path={uncased_teacher}", f"student.path={other_vocab_teacher}", xtok)
    _assert_clean_failure(proc, tmp_path, "student.path: token ")
    assert "cannot be written by the teacher's tokenizer" in proc.stderr
    proc = _run(tmp_path, f"teacher.path={tiny_teacher}", f"student.path={other_vocab_teacher}", xtok,
                "loss.tail=renormalize")
    _assert_clean_failure(proc, tmp_path, "cross_tokenizer cannot be combined with loss.tail 'renormalize'")


def test_chat_data_errors_name_the_setting_or_the_record(tmp_path, tiny_teacher):
    """Chat data on a tokenizer without a chat template: one line naming data.chat_template; a malformed record:
    one line naming its file, line and problem (before any teacher or cluster work)."""
    good = tmp_path / "chat.jsonl"
    good.write_text('{"question": "What is 2 plus 3?", "answer": "#### 5"}\n' * 40)
    chat = ["data.format=chat", "data.chat_fields={user: question, assistant: answer}"]
    proc = _run(tmp_path, f"teacher.path={tiny_teacher}", f"data.source={good}", "data.task_fraction=0", *chat)
    _assert_clean_failure(proc, tmp_path, "data.chat_template: ")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n')
    proc = _run(tmp_path, f"teacher.path={tiny_teacher}", f"data.source={bad}", "data.task_fraction=0", "data.format=chat")
    _assert_clean_failure(proc, tmp_path, f"{bad}:2: message 1 (assistant) has no 'content' string")



def test_sigterm_ends_the_mlflow_run_killed_and_exits_143(tmp_path, monkeypatch, capsys):
    """SIGTERM (a preemption, `ray job stop`) while the run is RUNNING: the same unwinding as Ctrl-C, run KILLED,
    exit 143 and one line. The command body is replaced by a real MLflow run that receives the signal."""
    import os
    import signal

    import raykd.distill
    from raykd.cli import main
    from raykd.tracking import tracked_run

    uri = f"sqlite:///{tmp_path}/m.db"

    def stopped_while_running(cfg):
        with tracked_run(uri, "stop", cfg.run_name):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(raykd.distill, "run_distill", stopped_while_running)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["distill", "--config", str(QUICKSTART), "run_name=stopped"]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "raykd: stopped by SIGTERM; the same command resumes from the last checkpoint"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("stop").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
