"""Session fixtures of the end-to-end tests: ONE Ray cluster and ONE deployed teacher for the whole run.

Starting Ray, deploying a teacher and building one are what end-to-end tests spend their time on (on a
2-core machine: ~20 s, ~20 s and ~10 s each). So, for every test of tests/e2e/ that needs them:

* `ray_cluster` -- an embedded Ray started once in the pytest process (no dashboard; Ray's worker output
  stays in its log directory). 32 logical CPUs on the 2 cores: logical CPUs cost nothing (no workers are
  prestarted), and a sweep's stopped trials can leave placement groups behind for a while (Ray Train's
  cleaner finds its cluster by address lookup, which fails where several clusters share a machine). In-process tests call raykd's functions
  directly (`run_distill`, `run_capture`, `run_pipeline`, `launch_teacher`): raykd's `init_ray` finds Ray
  initialised and neither starts nor stops it. Yields the cluster's address.
* `cluster_env` -- the environment for a child process (`python -m raykd.cli ...`) that joins that cluster
  through `RAY_ADDRESS`, as a job on a shared cluster does: it starts no Ray of its own, and a teacher
  already deployed under its `teacher.app_name` with the same weights and backend is reused, not redeployed.
* `teacher_app` (function scope; `deploy_teacher(path)` in module-scoped fixtures) -- conftest's `tiny_teacher` (tests/conftest.py) deployed once on the hf backend as the
  Serve app `raykd-teacher` (TeacherConfig defaults: 1 replica, 1 CPU), i.e. exactly the app that a
  `raykd distill teacher.path=<tiny_teacher>` run (default app name, backend hf) finds and reuses. Yields
  `(handle, TeacherConfig)`. Tests that need another backend or other replica counts deploy their own app
  under ANOTHER name and delete it when done (`serve_app` below): an idle vLLM engine polls and slows
  everything else on 2 cores, and redeploying `raykd-teacher` would cost the next test its teacher.
* `distill_cli(tmp_path, *overrides, env=None)` -- runs `raykd distill --config jobs/configs/quickstart.yaml`
  with the given overrides in a child process on the session cluster (MLflow store and raykd cache in
  `tmp_path`), returns the CompletedProcess. `TINY_DISTILL` holds overrides that make the quickstart small.

Tests that must own a cluster keep starting one, sized small: a driver killed with its embedded cluster
(test_distill's resume, test_pipeline), `ray start --head` for `ray job submit` (test_job_submit). Their
child processes get an environment without RAY_ADDRESS (`own_cluster_env`).

Adopting these in a new e2e test: take `cluster_env` (child process) or `ray_cluster` (in-process), and
`teacher_app` when the test only needs "a teacher"; keep step counts to what the test asserts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "jobs" / "configs" / "quickstart.yaml"
TEACHER_APP = "raykd-teacher"  # TeacherConfig's default app_name: what a plain `raykd distill` looks for

# The quickstart's data replaced by the generated text (what the tests' tiny builtin teachers know), no
# task-suite columns (a served teacher would decode ~600 problems).
BUILTIN_DATA = ["data.source=builtin", "data.task_fraction=0", "data.val_fraction=0.1", "data.max_sequences=null",
                "eval.tasks.enabled=false"]
# The quickstart made small: a 1-layer student, 60k characters of text in 64-token blocks, short evaluation.
TINY_DISTILL = [
    "student.num_layers=1", "student.hidden_size=64", "data.builtin_chars=60000", "data.seq_len=64",
    "train.batch_size=8", "train.warmup_steps=2", "eval.max_sequences=8", "eval.gen_tokens=8", "eval.gen_prompts=2",
    *BUILTIN_DATA,
]


def own_cluster_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a child command that starts (and owns) its own embedded cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    import ray

    from raykd.cluster import quiet_ray_loggers

    if ray.is_initialized():  # pragma: no cover - a test left one running
        ray.shutdown()
    # The raylet (and so every worker it starts) inherits the environment of this moment: a cache of the
    # session's own, no idle workers prestarted for 32 logical CPUs.
    session_env = {"RAYKD_CACHE": str(tmp_path_factory.mktemp("ray-cache")), "RAY_prestart_worker_first_driver": "0",
                   "TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "900"}
    saved = {k: os.environ.get(k) for k in session_env}
    os.environ.update(session_env)
    # As raykd does for a cluster it starts itself (raykd/cluster.py init_ray): this process and the children that
    # join the session cluster train with no preemption watcher (a process per run with nothing to watch here).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    try:
        for attempt in range(4):  # a loaded machine can miss Ray's fixed 30 s raylet start-up window
            try:
                ctx = ray.init(address="local", num_cpus=32, include_dashboard=False, log_to_driver=False,
                               logging_level="WARNING")
                break
            except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
                ray.shutdown()
                if "timed out during startup" not in str(e) or attempt == 3:
                    raise
    finally:
        for k, v in saved.items():
            if k in ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",):
                continue  # read by Ray Train in this process too
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    quiet_ray_loggers()
    yield ctx.address_info["gcs_address"]
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()


@pytest.fixture
def cluster_env(ray_cluster, tmp_path) -> dict[str, str]:
    """Environment of a child command that joins the session cluster (per-test MLflow store and cache)."""
    return {**own_cluster_env(tmp_path), "RAY_ADDRESS": ray_cluster}


def deploy_teacher(teacher: Path):
    """`teacher` as the Serve app TEACHER_APP (hf backend, TeacherConfig defaults): deployed by the first caller;
    later ones find it running (a check of its weights, milliseconds) or, if a test replaced it, get it back."""
    from raykd.config import TeacherConfig
    from raykd.models import model_fingerprint
    from raykd.teacher.service import launch_teacher

    cfg = TeacherConfig(path=str(teacher), app_name=TEACHER_APP)
    return launch_teacher(cfg, str(teacher), model_fingerprint(str(teacher))), cfg


@pytest.fixture
def teacher_app(ray_cluster, tiny_teacher):
    return deploy_teacher(tiny_teacher)


@contextlib.contextmanager
def serve_app(name: str):
    """Delete Serve app `name` (and its replicas' processes) on the way out."""
    try:
        yield name
    finally:
        from ray import serve

        with contextlib.suppress(Exception):
            serve.delete(name)


@pytest.fixture
def distill_cli(cluster_env):
    def run(tmp_path: Path, *overrides: str, env: dict | None = None, timeout: int = 900):
        return subprocess.run(
            [sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART), *overrides],
            cwd=tmp_path, env=env or cluster_env, capture_output=True, text=True, timeout=timeout,
        )

    return run
