"""Two vLLM teacher replicas on Ray Serve: load from two Train-worker-like tasks spreads over both; `raykd distill
teacher.backend=vllm` trains on them end to end (Serve -> 2 Train workers -> MLflow -> evaluation); a replica
killed mid-run is replaced while every batch still reaches its worker exactly once, in order.

    pytest -m slow tests/e2e/test_vllm_serve.py      # a few minutes: 3 engine starts on 2 cores (session cluster)

The workers of the first and last tests are Ray tasks running the trainer's own client (`SignalPrefetcher`,
window 4) against `teacher_handle(app_name)`, exactly as `raykd.train.loop` does. The distill run finds the
app under its `teacher.app_name` with the same weights and backend, and reuses it (one deployment for the module).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from raykd.config import TeacherConfig

from .conftest import TINY_DISTILL, serve_app

pytestmark = pytest.mark.slow

APP = "vllm-serve-test"
TOP_K = 8


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_teacher):
    from raykd.models import model_fingerprint
    from raykd.teacher.service import launch_teacher

    # On the session cluster (tests/e2e/conftest.py): 2 replicas + 2 workers share the 2 physical cores
    # (vLLM threads unpinned: 'nobind'). The app is deleted afterwards: idle engines poll.
    cfg = TeacherConfig(
        path=str(tiny_teacher), backend="vllm", num_replicas=2, num_cpus=1, max_ongoing_requests=8, app_name=APP,
        vllm=dict(dtype="float32", kv_cache_memory_bytes=64 << 20, cpu_threads_bind="nobind"),
    )
    with serve_app(APP):
        yield launch_teacher(cfg, str(tiny_teacher), model_fingerprint(str(tiny_teacher)))


@pytest.fixture(scope="module")
def batches(tiny_teacher):
    """Two workers' shards: 2 x 16 batches of 4 sequences x 48 tokens of held-out text."""
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    ids = np.asarray(tok(generate_corpus(80_000, seed=5)).input_ids, np.int32)
    blocks = ids[: 2 * 16 * 4 * 48].reshape(2, 16, 4, 48)
    return [list(blocks[w]) for w in range(2)]


def run_worker(app_name: str, shard: list[np.ndarray], window: int):
    """What a Train worker does with the teacher: prefetch window over its batches, one result per batch."""
    from raykd.teacher.service import teacher_handle
    from raykd.train.prefetch import SignalPrefetcher

    handle = teacher_handle(app_name)
    prefetch = SignalPrefetcher(lambda b: handle.score.remote(list(b), TOP_K), iter(shard), window)
    got = [(np.array(s.topk_ids), np.array(s.topk_logprobs)) for _, s in prefetch]
    return got, prefetch.requests, prefetch.retries


def start_workers(shards):
    import sys

    import ray
    import ray.cloudpickle

    # Workers cannot import this test module: ship run_worker by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = ray.remote(num_cpus=1)(run_worker)
    return [task.remote(APP, shard, 4) for shard in shards]


def replica_infos(handle, calls: int = 24) -> dict[str, object]:
    """The latest TeacherInfo of every replica reached by `calls` concurrent info requests."""
    infos = []
    for response in [handle.info.remote() for _ in range(calls)]:
        try:
            infos.append(response.result(timeout_s=120))
        except Exception:  # noqa: BLE001 - routed to a replica that just died
            pass
    latest: dict[str, object] = {}
    for info in infos:
        if info.scored_requests >= getattr(latest.get(info.replica), "scored_requests", -1):
            latest[info.replica] = info
    return latest


def test_two_workers_spread_over_two_replicas(app, batches):
    import ray

    before = {r: i.scored_requests for r, i in replica_infos(app).items()}
    results = ray.get(start_workers(batches))
    for (got, requests, retries), shard in zip(results, batches):
        assert len(got) == len(shard) == requests and retries == 0
        assert all(ids.shape == (4 * 47, TOP_K) for ids, _ in got)
    after = replica_infos(app)
    assert len(after) == 2, f"only replicas {list(after)} answered"
    served = {r: i.scored_requests - before.get(r, 0) for r, i in after.items()}
    print("score requests per replica:", served)
    assert sum(served.values()) == 32 and min(served.values()) > 0


def test_distill_with_vllm_teacher(app, tmp_path, tiny_teacher, distill_cli):
    proc = distill_cli(
        tmp_path, "run_name=vllm-e2e", f"teacher.path={tiny_teacher}", "teacher.backend=vllm", f"teacher.app_name={APP}",
        "teacher.num_replicas=2", *TINY_DISTILL, "train.max_steps=4", "train.log_every=2", "train.checkpoint_every=4",
        "eval.baseline=false", "mlflow.experiment=vllm-e2e",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "deploying teacher (vllm, 2 replica(s))" in proc.stderr and "kd student" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("vllm-e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["teacher.backend"] == "vllm"
    assert run.data.tags["raykd.teacher_scoring"] == "engine-topk", run.data.tags  # the fast path is the default
    assert run.data.metrics["loss_soft"] > 0 and "eval_teacher_heldout_loss" in run.data.metrics
    assert (tmp_path / "outputs" / "vllm-e2e" / "student" / "model.safetensors").is_file()


def test_killed_replica_is_replaced_and_no_batch_is_lost_or_doubled(app, batches):
    import psutil
    import ray
    from ray import serve

    reference = [run_worker(APP, shard, 4)[0] for shard in batches]  # deterministic: what each batch must get
    refs = start_workers(batches)
    victim = None
    deadline = time.monotonic() + 300
    # Kill a replica at a moment it is scoring the workers' requests (its in-flight count), so the fault hits
    # requests the workers must get back: proven below by their re-submissions.
    while victim is None and time.monotonic() < deadline and len(ray.wait(refs, num_returns=2, timeout=0)[0]) < 2:
        busy = [i for i in replica_infos(app, 8).values() if i.in_flight > 0]
        victim = max(busy, key=lambda i: i.in_flight, default=None)
    assert victim is not None and victim.pid, "no replica was caught scoring the workers' requests"
    engine_pids = [p.pid for p in psutil.Process(victim.pid).children(recursive=True)]
    assert engine_pids, "the replica should run its vLLM engine in child processes"
    os.kill(victim.pid, signal.SIGKILL)  # a crash, not a graceful shutdown

    results = ray.get(refs, timeout=900)
    retries = 0
    for (got, requests, r), ref, shard in zip(results, reference, batches):
        retries += r
        assert requests == len(shard) and len(got) == len(ref)  # every batch once, none lost, none extra
        for (ids, lps), (ref_ids, ref_lps) in zip(got, ref):  # in order, and identical to a clean run
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_allclose(lps, ref_lps, atol=1e-5)
    print(f"re-submitted after the kill: {retries} batch(es); the replica held {victim.in_flight} just before it")
    assert retries > 0, "the killed replica held none of the workers' requests"

    # Serve replaces the dead replica; its engine processes do not outlive it (no orphaned RAM).
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = serve.status().applications[APP].deployments["Teacher"]
        answering = replica_infos(app, 8)  # the handle learns of the new replica a little after it runs
        if status.replica_states.get("RUNNING", 0) == 2 and len(answering) == 2 and victim.replica not in answering:
            break
        time.sleep(5)
    else:
        pytest.fail(f"replica not replaced: {serve.status().applications[APP].deployments['Teacher']}")
    assert not [p for p in engine_pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
