"""Faults without a human: a SIGKILLed Train worker is replaced by Ray Train (train.max_failures) and the run
finishes on its own, bit for bit as an uninterrupted run, every sample consumed exactly once; an embedded
cluster listens on loopback only.

    pytest -m slow tests/e2e/test_faults.py

The first test runs `run_distill` in-process on the session cluster and its teacher (tests/e2e/conftest.py);
the second starts raykd's own embedded cluster in a child process, as a laptop run does.
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

STEPS, EVERY = 80, 10


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


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

    from raykd.data.order import batch_indices
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
    resumed = int(err.split("resuming from step ")[1].split()[0])
    assert EVERY <= resumed <= killed["after_step"] < STEPS, (resumed, killed)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(hit["run_id"])
    assert run.info.status == "FINISHED"
    n_train = int(run.data.metrics["data_train_blocks"])
    # Exactly once: the steps before the checkpoint were trained once, the rest at least once (those between
    # the checkpoint and the kill were trained again after it), each with the blocks of the seeded order.
    seen: dict[tuple[int, int], list[list[int]]] = {}
    for f in trace.glob("rank*.jsonl"):
        for line in f.read_text().splitlines():
            if line.endswith("}"):  # a line the SIGKILL cut short is not a consumed batch
                r = json.loads(line)
                seen.setdefault((r["step"], r["rank"]), []).append(r["index"])
    assert sorted(seen) == [(s, r) for s in range(STEPS) for r in range(2)]
    for r in range(2):
        order = batch_indices(n_train, 8, 2, r, 0, 0)
        for s in range(STEPS):
            expected = next(order).tolist()
            assert all(got == expected for got in seen[(s, r)]), (s, r)
        assert all(len(seen[(s, r)]) == 1 for s in range(resumed))

    # The same config without the fault: the final weights are the same, bit for bit (fp32 on CPU).
    clean = run_distill(_cfg(tmp_path, "clean", tiny_teacher))
    a = load_file(str(Path(hit["student_dir"]) / "model.safetensors"))
    b = load_file(str(Path(clean["student_dir"]) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


LIST_SOCKETS = """
import json, sys
import psutil
from raykd.cluster import init_ray, shutdown_ray

started = init_ray(2)
tree = [psutil.Process()] + psutil.Process().children(recursive=True)
listening = []
for p in tree:
    try:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                listening.append([p.name(), c.laddr.ip, c.laddr.port])
    except psutil.Error:
        pass
shutdown_ray(started)
print(json.dumps({"started": started, "processes": len(tree), "listening": listening}))
"""


def test_an_embedded_cluster_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_prestart_worker_first_driver"] = "0"
    proc = subprocess.run([sys.executable, "-c", LIST_SOCKETS], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["started"] and found["processes"] >= 3 and found["listening"], found  # GCS, raylet, ... listen
    outside = [s for s in found["listening"] if not (s[1].startswith("127.") or s[1] == "::1")]  # loopback only
    assert not outside, outside
