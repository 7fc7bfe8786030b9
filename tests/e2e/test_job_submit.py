"""`ray job submit --working-dir .` of jobs/distill.py to a real `ray start --head` cluster.

    pytest -m slow tests/e2e/test_job_submit.py

jobs/sweep.py is the same three lines around `raykd sweep` as jobs/distill.py is around `raykd distill`, and a
submitted job reaches its cluster the way tests/e2e/test_sweep.py's sweeps do (a child process joining a running
cluster through RAY_ADDRESS): test_sweep.py runs jobs/sweep.py itself (the interrupted and resumed sweep).

The cluster keeps Ray's token authentication on, as a KubeRay cluster does: `ray start` and every client
get `RAY_AUTH_MODE=token` and the token in `RAY_AUTH_TOKEN` (on Kubernetes it comes from the Secret
raykd-ray-auth). The tracking URI reaches the job only through `--runtime-env-json`, and the test reads the
finished run back from that MLflow store. Teardown stops exactly the processes this fixture started
(never `ray stop`, which would stop every Ray cluster on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from .conftest import BUILTIN_DATA

ROOT = Path(__file__).resolve().parents[2]

# Small enough for a 2-core machine: a 2-layer 64-wide teacher trained for a few steps, a 3-step student.
TINY = [
    "teacher.build.vocab_size=384", "teacher.build.hidden_size=64", "teacher.build.num_heads=1",
    "teacher.build.num_layers=2", "teacher.build.intermediate_size=128", "teacher.build.corpus_chars=30000",
    "teacher.build.max_steps=10", "teacher.build.seq_len=64", "student.hidden_size=64",
    "data.builtin_chars=20000", "data.seq_len=32", "train.num_workers=1", "train.batch_size=4",
    "train.max_steps=3", "train.warmup_steps=1", "train.checkpoint_every=3", "train.log_every=1",
    "eval.max_sequences=4", "eval.gen_tokens=4", "eval.gen_prompts=1", *BUILTIN_DATA,
    "teacher.build.corpus=builtin", "teacher.build.task_fraction=0",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalCluster:
    """A `ray start --head --block` process group with token auth; `env` is what a client needs."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.env.pop("RAY_ADDRESS", None)
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> None:
        gcs, dash, agent, agent_grpc, runtime_env, metrics, client = _free_ports(7)
        self.address = f"http://127.0.0.1:{dash}"
        self.temp_dir = tempfile.mkdtemp(prefix="rkd-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
        argv = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=4", "--num-gpus=0",
            f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
            f"--ray-client-server-port={client}", f"--temp-dir={self.temp_dir}", "--object-store-memory=300000000",
            "--disable-usage-stats",
        ]
        self.log = open(self.root / "ray-start.log", "ab")
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def ready(self, timeout_s: float) -> bool:
        """True once a trivial job runs: the dashboard, its job agent and a worker are all up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            r = self.ray("job", "submit", "--address", self.address, "--", "python", "-c", "print('ready')",
                         timeout=120, check=False)
            if r.returncode == 0 and "ready" in r.stdout:
                return True
            time.sleep(3)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        # The whole process group at once: `ray start --block`, its GCS, raylet, agents and workers (all started in
        # the group this fixture made). A graceful SIGTERM teardown waits on them one by one (~30 s here) and
        # leaves nothing the test reads.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # session logs; the start log stays in the test's tmp

    def job_status(self, submission_id: str) -> str:
        """The job's status from the job API (`ray job status` prints prose), with the bearer token."""
        import requests

        r = requests.get(f"{self.address}/api/jobs/{submission_id}", timeout=60,
                         headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()["status"]

    def ray(self, *args: str, timeout: float, check: bool = True, env: dict | None = None, cwd: Path = ROOT):
        r = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], cwd=cwd, env=env or self.env,
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"ray {' '.join(args[:3])} failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
        return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # A loaded 2-core machine can be slow enough for the raylet to give up on its agents (a fixed 15 s
    # wait in Ray 2.60): try a fresh cluster again then, with the imports warm in the page cache.
    root = tmp_path_factory.mktemp("cluster")
    for attempt in range(4):
        c = LocalCluster(root)
        c.start()
        if c.ready(timeout_s=300):
            break
        c.stop()
    else:
        pytest.fail(f"ray start --head did not come up; see {root / 'ray-start.log'}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Where the jobs keep their MLflow store, raykd cache, checkpoints and outputs."""
    return tmp_path_factory.mktemp("store")


def _runtime_env(store: Path) -> str:
    # TOKENIZERS_PARALLELISM is one of the variables raykd's own driver runtime env sets (raykd/cluster.py):
    # a job that sets it too must still start.
    return json.dumps({"env_vars": {
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "RAYKD_CACHE": str(store / "cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }})


def _submit(cluster: LocalCluster, store: Path, submission_id: str, script: str, args: list[str]) -> str:
    r = cluster.ray(
        "job", "submit", "--address", cluster.address, "--submission-id", submission_id, "--working-dir", ".",
        "--runtime-env-json", _runtime_env(store), "--", "python", script, *args, timeout=1500, check=False,
    )
    status = cluster.job_status(submission_id)
    assert r.returncode == 0 and status == "SUCCEEDED", f"{status}\n{r.stdout[-8000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def _finished_runs(store: Path, experiment: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} in the store the runtime env named"
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}


@pytest.mark.slow
def test_token_auth_is_on(cluster):
    r = cluster.ray("job", "list", "--address", cluster.address, timeout=120,
                    check=False, env={**cluster.env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert r.returncode != 0 and "token" in (r.stdout + r.stderr).lower()
    assert cluster.ray("job", "list", "--address", cluster.address, timeout=120).returncode == 0


@pytest.mark.slow
def test_working_dir_upload_skips_ignored_files(tmp_path):
    """What `--working-dir .` uploads: Ray's own packaging, honouring .gitignore and its default excludes."""
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    probe = tmp_path / "repo"
    (probe / "raykd").mkdir(parents=True)
    (probe / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    (probe / "raykd" / "x.py").write_text("x = 1\n")
    for junk in ("outputs/student/model.safetensors", "mlflow.db", ".raykd/signals/a.npy", ".git/objects/ab",
                 "mlruns/0/meta.yaml", "raykd/__pycache__/x.pyc"):
        (probe / junk).parent.mkdir(parents=True, exist_ok=True)
        (probe / junk).write_bytes(b"0" * 1024)
    excludes = get_runtime_env_default_excludes()
    create_package(str(probe), tmp_path / "probe.zip", include_gitignore=True, excludes=excludes)
    assert sorted(zipfile.ZipFile(tmp_path / "probe.zip").namelist()) == [".gitignore", "raykd/x.py"]

    create_package(str(ROOT), tmp_path / "repo.zip", include_gitignore=True, excludes=excludes)
    names = zipfile.ZipFile(tmp_path / "repo.zip").namelist()
    size_mib = (tmp_path / "repo.zip").stat().st_size / 2**20
    print(f"--working-dir . uploads {len(names)} files, {size_mib:.2f} MiB zipped")
    assert not [n for n in names if n.split("/")[0] in ("outputs", ".git", ".raykd", "mlruns") or n == "mlflow.db"]
    assert size_mib < 20, f"the working-dir package is {size_mib:.1f} MiB: something large is not ignored"


@pytest.mark.slow
def test_submit_distill_job(cluster, store):
    out = _submit(cluster, store, "raykd-distill-test", "jobs/distill.py", [
        "--config", "jobs/configs/quickstart.yaml", "run_name=submitted", "eval.baseline=false",
        f"output_dir={store}/outputs", f"train.storage_path={store}/runs", *TINY,
    ])
    assert "Job 'raykd-distill-test' succeeded" in out and "kd student" in out  # the evaluation table
    runs = _finished_runs(store, "raykd-quickstart")
    assert runs.get("submitted") == "FINISHED", runs
    assert (store / "outputs" / "submitted" / "student" / "model.safetensors").is_file()
