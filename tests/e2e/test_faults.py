"""Faults without a human: a SIGKILLed Train worker is replaced by Ray Train (train.max_failures) and the run
finishes on its own, bit for bit as an uninterrupted run, every sample consumed exactly once; SIGTERM to a
driver ends it cleanly (exit 143, MLflow run KILLED, no process left), its embedded cluster listens on
loopback only, and the same command resumes the run from its last checkpoint, every sample trained once.

    pytest -m slow tests/e2e/test_faults.py

The first test runs `run_distill` in-process on the session cluster and its teacher (tests/e2e/conftest.py);
the second runs `raykd distill` with its own embedded cluster in a child process, as a laptop run does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import QUICKSTART, TINY_DISTILL

pytestmark = pytest.mark.slow

STEPS, EVERY = 40, 10


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _assert_every_sample_once(trace: Path, n_train: int, steps: int, resumed: int) -> None:
    """The batch trace (RAYKD_BATCH_TRACE, 2 workers, 8 rows each) of a run interrupted and resumed at step
    `resumed`: every (step, worker) has the blocks of the seeded order (raykd/data/order.py), and every step
    before `resumed` was trained exactly once (after it, the interrupted run's last steps may repeat)."""
    from raykd.data.order import batch_indices

    seen: dict[tuple[int, int], list[list[int]]] = {}
    for f in trace.glob("rank*.jsonl"):
        for line in f.read_text().splitlines():
            if line.endswith("}"):  # a line the kill cut short is not a consumed batch
                r = json.loads(line)
                seen.setdefault((r["step"], r["rank"]), []).append(r["index"])
    assert sorted(seen) == [(s, r) for s in range(steps) for r in range(2)]
    for r in range(2):
        order = batch_indices(n_train, 8, 2, r, 0, 0)
        for s in range(steps):
            expected = next(order).tolist()
            assert all(got == expected for got in seen[(s, r)]), (s, r)
        assert all(len(seen[(s, r)]) == 1 for s in range(resumed))


def _train_workers() -> list:
    """Ray Train worker processes of this session's cluster (descendants of this process: the raylet's workers),
    by the process title Ray gives them; the run under test is the only training at that moment."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline() and p.cmdline()[0].startswith("ray::RayTrainWorker"):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _kill_a_worker_after_a_checkpoint(run_dir: Path, trace: Path, killed: dict, stop: threading.Event) -> None:
    """Wait until Ray Train has registered a checkpoint and the trace shows training past it, then SIGKILL one
    Train worker, remembering its pid and the last step it had traced."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not stop.is_set():
        traced = [json.loads(line)["step"] for f in trace.glob("rank*.jsonl") for line in _read(f).splitlines()
                  if line.endswith("}")]
        if "checkpoint_" in _read(snapshot) and traced and max(traced) > EVERY:
            workers = _train_workers()
            if workers:
                victim = workers[0]
                killed.update(pid=victim.pid, after_step=max(traced))
                os.kill(victim.pid, signal.SIGKILL)
                return
        time.sleep(0.05)


def _cfg(tmp_path: Path, name: str, teacher: Path):
    from raykd.config import DistillConfig, load_config

    return load_config(DistillConfig, str(QUICKSTART), [
        f"run_name={name}", f"teacher.path={teacher}", *TINY_DISTILL, f"train.max_steps={STEPS}",
        f"train.checkpoint_every={EVERY}", f"train.log_every={EVERY}", "train.max_inflight=1", "signals.cache=false",
        "eval.baseline=false", "train.max_failures=2", f"output_dir={tmp_path}/out", f"train.storage_path={tmp_path}/runs",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "mlflow.experiment=faults"])


def test_a_killed_train_worker_is_replaced_and_the_run_ends_as_an_uninterrupted_one(tmp_path, tiny_teacher,
                                                                                  teacher_app, monkeypatch, capfd):
    import psutil
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from raykd.distill import run_distill

    trace = tmp_path / "trace"
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker_after_a_checkpoint,
                              args=(tmp_path / "runs" / "killed", trace, killed, stop), daemon=True)
    monkeypatch.setenv("RAYKD_BATCH_TRACE", str(trace))
    killer.start()
    try:
        hit = run_distill(_cfg(tmp_path, "killed", tiny_teacher))  # no human: it must come back on its own
    finally:
        stop.set()
        killer.join()
    monkeypatch.delenv("RAYKD_BATCH_TRACE")
    # The fault hit what it meant to: a Train worker of this run, mid-training, after a registered checkpoint.
    assert killed, "the run finished before a worker could be killed"
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    err = capfd.readouterr().err
    assert "resuming from step " in err, err[-3000:]
    resumed = int(err.split("resuming from step ")[1].split()[0])
    assert EVERY <= resumed <= killed["after_step"] < STEPS, (resumed, killed)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(hit["run_id"])
    assert run.info.status == "FINISHED"
    n_train = int(run.data.metrics["data_train_blocks"])
    # Exactly once: the steps before the checkpoint were trained once, the rest at least once (those between
    # the checkpoint and the kill were trained again after it), each with the blocks of the seeded order.
    _assert_every_sample_once(trace, n_train, STEPS, resumed)

    # The same config without the fault: the final weights are the same, bit for bit (fp32 on CPU).
    clean = run_distill(_cfg(tmp_path, "clean", tiny_teacher))
    a = load_file(str(Path(hit["student_dir"]) / "model.safetensors"))
    b = load_file(str(Path(clean["student_dir"]) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _loopback(ip: str) -> bool:
    """127.0.0.0/8 (also as an IPv4-mapped IPv6 address, ::ffff:127.0.0.1) or ::1."""
    import ipaddress

    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def _listening(pids: list[int]) -> list[tuple[str, str, int]]:
    import psutil

    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return out


def test_sigterm_ends_a_driver_cleanly_and_the_same_command_resumes(tmp_path, tiny_teacher):
    """`raykd distill` on an embedded cluster (a laptop run) gets SIGTERM mid-training (a preemption): while it
    runs nothing of it listens outside 127.0.0.0/8; then it exits 143 with one line, the MLflow run is KILLED,
    and no process of its cluster is left (Ray and Serve shut down). The same command, on a new embedded
    cluster, finds the latest registered checkpoint damaged (its weights truncated: a copy cut short), says so in
    one line, continues that MLflow run from the previous checkpoint and trains every sample of the
    uninterrupted run exactly once (2 workers; the batch trace of raykd/train/batches.py). A driver SIGKILLed
    with no clean-up at all resumes in tests/e2e/test_pipeline.py."""
    import psutil
    from mlflow.tracking import MlflowClient

    from .conftest import own_cluster_env
    from .test_distill import assert_readable_console

    steps, every, log_every = 60, 10, 5
    cmd = [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART), "run_name=preempted",
           f"teacher.path={tiny_teacher}", *TINY_DISTILL, f"train.max_steps={steps}", f"train.checkpoint_every={every}",
           f"train.log_every={log_every}", "eval.baseline=false", "mlflow.experiment=faults"]
    env = {**own_cluster_env(tmp_path), "RAYKD_BATCH_TRACE": str(tmp_path / "trace")}  # every step's blocks
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    snapshot = tmp_path / "cache" / "runs" / "preempted" / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 600
    try:
        # Stop once Ray Train has *registered* two checkpoints (its snapshot names them).
        while time.time() < deadline and driver.poll() is None and _read(snapshot).count('"checkpoint_dir_name"') < 3:
            time.sleep(0.2)  # (the latest is named twice: in the list and as the latest)
        assert driver.poll() is None, "the run ended early:\n" + _read(tmp_path / "driver.log")[-4000:]
        tree = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)] + [driver.pid]
        listening = _listening(tree)
        os.kill(driver.pid, signal.SIGTERM)
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        log.close()
    output = _read(tmp_path / "driver.log")
    assert driver.returncode == 143, output[-4000:]
    assert output.splitlines()[-1] == "raykd: stopped by SIGTERM; the same command resumes from the last checkpoint"
    assert "Traceback" not in output
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("faults").experiment_id
    assert [r.info.status for r in client.search_runs([experiment])] == ["KILLED"]
    time.sleep(2)  # Ray's daemons exit on their own once the driver's shutdown reached them
    left = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert left == [], [psutil.Process(p).cmdline()[:2] for p in left if psutil.pid_exists(p)]
    assert listening and {name for name, _, _ in listening} >= {"gcs_server", "raylet"}, listening
    # Ray's and Serve's servers are on loopback. Known exception: torch.distributed's rendezvous store on a Train
    # worker binds every interface (torch has no bind address for it; docs/faults.md).
    outside = [s for s in listening if not _loopback(s[1])]
    assert all(name == "ray::RayTrainWorker" for name, _, _ in outside), outside

    # The latest registered checkpoint is damaged on disk (a copy cut short): truncate its weights.
    registered = json.loads(snapshot.read_text())
    latest = snapshot.parent / registered["latest_checkpoint_result"]["checkpoint_dir_name"]
    latest_step = registered["latest_checkpoint_result"]["metrics"]["step"]
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    # The same command again: it says so in one line and continues the run from the previous checkpoint.
    restart = time.time() * 1000
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    damaged = [x for x in second.stderr.splitlines() if f"checkpoint {latest.name} is damaged" in x]
    assert len(damaged) == 1 and "model.safetensors has 1000 bytes" in damaged[0], second.stderr[-3000:]
    assert "resuming from the previous one" in damaged[0] and f"(step {latest_step - every})" in damaged[0]
    assert "resuming from step" in second.stderr, second.stderr[-3000:]
    resumed_step = int(second.stderr.split("resuming from step ")[1].split()[0])
    assert resumed_step == latest_step - every  # the stopped run had not finished
    assert_readable_console(second)  # an embedded cluster's start (and its teacher's deployment) says nothing either
    runs = client.search_runs([experiment])
    assert len(runs) == 1  # the stopped MLflow run was continued, not duplicated
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags.get("raykd.resumed") == "true"
    # Training went on from the checkpoint: the resumed run's first logged step is the next log step after it,
    # nothing before it was trained again, and the history reaches the end.
    resumed = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss") if m.timestamp >= restart)
    assert resumed[0] == resumed_step + log_every and resumed[-1] == steps, resumed

    # Every sample the uninterrupted run trains on was trained on: the stopped run's steps before the checkpoint
    # and the resumed run's from it cover every (step, worker), each with the blocks of the seeded order
    # (raykd/data/order.py; tests/e2e/test_data.py checks the Ray Data path yields exactly that order).
    n_train = int(runs[0].data.metrics["data_train_blocks"])
    _assert_every_sample_once(tmp_path / "trace", n_train, steps, resumed_step)
