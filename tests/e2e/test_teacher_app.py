"""A teacher app's life on a cluster (raykd/teacher/service.py `launch_teacher`), hf backend, session cluster:
reused when a run asks for the same weights, backend and dtype; replaced when a run asks for other weights
under the same app name; scaled out by Serve under load when `teacher.autoscaling` is set.

    pytest -m slow tests/e2e/test_teacher_app.py     # ~1 min: three replica starts
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from raykd.config import TeacherConfig

from .conftest import serve_app

pytestmark = pytest.mark.slow

APP = "teacher-app-test"


def _replicas(handle, calls: int = 16) -> dict[str, object]:
    """TeacherInfo per replica reached by `calls` concurrent info requests."""
    infos = [r.result(timeout_s=120) for r in [handle.info.remote() for _ in range(calls)]]
    return {i.replica: i for i in infos}


def test_a_teacher_app_is_reused_replaced_and_autoscaled(ray_cluster, tiny_teacher, other_vocab_teacher):
    from ray import serve

    from raykd.models import model_fingerprint
    from raykd.teacher.service import DEPLOYMENT_NAME, launch_teacher

    def running() -> int:
        return serve.status().applications[APP].deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0)

    # Serve's default look-back is 30 s; one replica kept, a second one added when more than one request per
    # replica waits, at once (no upscale delay).
    cfg = TeacherConfig(path=str(tiny_teacher), app_name=APP, num_cpus=0.5, max_ongoing_requests=4,
                        autoscaling=dict(min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=0))
    fingerprint = model_fingerprint(str(tiny_teacher))
    with serve_app(APP):
        handle = launch_teacher(cfg, str(tiny_teacher), fingerprint)
        (first,) = _replicas(handle, 4).values()
        assert running() == 1 and first.fingerprint == fingerprint

        # Reused: the same weights, backend and dtype find the running replica; nothing is redeployed.
        again = launch_teacher(cfg, str(tiny_teacher), fingerprint)
        assert list(_replicas(again, 4)) == [first.replica]

        # Autoscaled: with requests kept in flight, Serve adds the second replica and both answer.
        seqs = [np.arange(64, dtype=np.int32) % 200 for _ in range(4)]
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                for r in [handle.score.remote(seqs, 8) for _ in range(8)]:
                    r.result(timeout_s=120)

        pump = threading.Thread(target=load, daemon=True)
        pump.start()
        try:
            deadline = time.monotonic() + 240
            while running() < 2 and time.monotonic() < deadline:
                time.sleep(1)
            assert running() == 2, serve.status().applications[APP].deployments[DEPLOYMENT_NAME]
            deadline = time.monotonic() + 60  # the handle learns of the new replica a moment after it runs
            while len(_replicas(handle)) < 2 and time.monotonic() < deadline:
                time.sleep(1)
        finally:
            stop.set()
            pump.join(timeout=120)
        served = _replicas(handle)
        assert len(served) == 2 and sum(i.scored_requests > 0 for i in served.values()) == 2, served

        # Replaced: other weights under the same app name are deployed in place of the running ones.
        other = TeacherConfig(path=str(other_vocab_teacher), app_name=APP, num_cpus=0.5)
        other_fp = model_fingerprint(str(other_vocab_teacher))
        replaced = launch_teacher(other, str(other_vocab_teacher), other_fp)
        now = _replicas(replaced, 4)
        assert {i.fingerprint for i in now.values()} == {other_fp} and not set(now) & set(served)
        assert all(i.model_path == str(other_vocab_teacher) for i in now.values())
        assert running() == 1  # a fixed num_replicas again
