"""Refusing early (raykd/preflight.py): paths a run writes, the MLflow store, RAY_ADDRESS; one line each.

    pytest tests/test_preflight.py
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raykd.config import ConfigError, DistillConfig, MlflowConfig
from raykd.preflight import (check_ray_address, check_tracking_uri, check_writable_dir, distill_write_dirs,
                             preflight)

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _silent_listener():
    """Accepts TCP connections (the kernel's backlog) and never answers: a hung server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@contextlib.contextmanager
def _fake_mlflow_server(artifact_location: str):
    """Answers /health and experiments/get-by-name as an MLflow server does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = b"OK" if self.path == "/health" else json.dumps(
                {"experiment": {"name": "e", "artifact_location": artifact_location}}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_writable_dirs(tmp_path):
    check_writable_dir(tmp_path, "output_dir")
    check_writable_dir(tmp_path / "not" / "yet", "output_dir")  # created by the run
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"^output_dir: .*/f exists and is not a directory$"):
        check_writable_dir(a_file, "output_dir")
    with pytest.raises(ConfigError, match=r"^train.storage_path: .*/f/runs cannot be created: .*/f is a file$"):
        check_writable_dir(a_file / "runs", "train.storage_path")
    assert not (tmp_path / "not").exists()  # a check creates nothing


def test_every_directory_distill_writes_is_checked_by_its_field(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "cache"))
    a_file = tmp_path / "f"
    a_file.write_text("x")
    mlflow = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    preflight(distill_write_dirs(DistillConfig(output_dir=str(tmp_path / "out"))), mlflow)
    for field, override in [("output_dir", {"output_dir": str(a_file)}),
                            ("train.storage_path", {"train": {"storage_path": str(a_file / "x")}}),
                            ("signals.cache_dir", {"signals": {"cache_dir": str(a_file)}})]:
        with pytest.raises(ConfigError, match=rf"^{field}: "):
            preflight(distill_write_dirs(DistillConfig(**override)), mlflow)
    monkeypatch.setenv("RAYKD_CACHE", str(a_file))  # the offline teacher would be built there
    with pytest.raises(ConfigError, match=r"^RAYKD_CACHE: "):
        preflight(distill_write_dirs(DistillConfig()), mlflow)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_sqlite_store_and_its_artifact_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", "e")  # no database yet: fine, nothing created
    assert not (tmp_path / "mlflow.db").exists()
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"^mlflow.tracking_uri sqlite:///.*/f/mlflow.db: .*/f exists and is not a directory"):
        check_tracking_uri(f"sqlite:///{a_file}/mlflow.db", "e")
    with pytest.raises(ConfigError, match=r"directory .*/nodir does not exist \(sqlite does not create it\)$"):
        check_tracking_uri(f"sqlite:///{tmp_path}/nodir/mlflow.db", "e")
    (tmp_path / "mlruns").write_text("x")  # MLflow's default artifact root of a database store
    with pytest.raises(ConfigError, match=r"^MLflow artifact location of experiment 'e' \(.*/mlruns\): .* not a dir"):
        check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", "e")
    (tmp_path / "mlruns").unlink()

    from mlflow.tracking import MlflowClient

    artifacts = tmp_path / "artifacts"
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("e", artifact_location=str(artifacts))
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", "e")
    artifacts.write_text("x")  # the experiment's own location, read from the database
    with pytest.raises(ConfigError, match=r"^MLflow artifact location of experiment 'e' .*artifacts"):
        check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", "e")


def test_tracking_server_that_does_not_answer_is_refused_in_seconds(tmp_path):
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^mlflow.tracking_uri http://127.0.0.1:{port}: does not answer"):
        check_tracking_uri(f"http://127.0.0.1:{port}", "e")
    with _silent_listener() as port, pytest.raises(ConfigError, match=r": no answer within 0.5 s$"):
        check_tracking_uri(f"http://127.0.0.1:{port}", "e", timeout=0.5)
    assert time.monotonic() - start < 10  # not MLflow's minutes of retries
    with _fake_mlflow_server(str(tmp_path / "art")) as uri:
        check_tracking_uri(uri, "e")
    (tmp_path / "art").write_text("x")
    with _fake_mlflow_server(f"file://{tmp_path}/art") as uri, pytest.raises(ConfigError, match="artifact location"):
        check_tracking_uri(uri, "e")
    with _fake_mlflow_server("mlflow-artifacts:/1") as uri:  # proxied by the server: not ours to check
        check_tracking_uri(uri, "e")
    port = _closed_port()
    with pytest.raises(ConfigError, match=rf"^mlflow.tracking_uri postgresql://u@127.0.0.1:{port}/db: .*does not"):
        check_tracking_uri(f"postgresql://u@127.0.0.1:{port}/db", "e")


def test_ray_address(monkeypatch):
    port = _closed_port()
    with pytest.raises(ConfigError, match=rf"^RAY_ADDRESS=127.0.0.1:{port}: 127.0.0.1:{port} does not answer"):
        check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=rf"^RAY_ADDRESS=ray://127.0.0.1:{port}: "):
        check_ray_address(f"ray://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"^RAY_ADDRESS=nonsense: not host:port"):
        check_ray_address("nonsense")
    with _silent_listener() as port:
        check_ray_address(f"127.0.0.1:{port}")
    for address in ("", "auto", "local"):
        check_ray_address(address)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    with pytest.raises(ConfigError, match=r"^RAY_ADDRESS="):
        check_ray_address()


@pytest.mark.parametrize("case", ["output_dir", "tracking_uri"])
def test_cli_refuses_in_one_line_before_anything_starts(tmp_path, case):
    """The command itself: last line `raykd: error: ...`, exit 2, no traceback, no MLflow run, no teacher built."""
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    port = _closed_port()
    env = {**os.environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": ""}
    env.pop("RAY_ADDRESS", None)
    overrides, needle = {
        "output_dir": ([f"output_dir={a_file}"], f"output_dir: {a_file} exists and is not a directory"),
        "tracking_uri": ([f"mlflow.tracking_uri=http://127.0.0.1:{port}"], f"http://127.0.0.1:{port}: does not answer"),
    }[case]
    proc = subprocess.run([sys.executable, "-m", "raykd.cli", "distill", "--config",
                           str(ROOT / "jobs" / "configs" / "quickstart.yaml"), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("raykd: error: ") and needle in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()
