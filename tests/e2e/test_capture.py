"""Real Ray + Serve + Train + MLflow: `raykd capture` shards, online == offline, the cache's second epoch.

In-process on the session cluster and its teacher (tests/e2e/conftest.py): `pytest -m slow tests/e2e/test_capture.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import TEACHER_APP, deploy_teacher

pytestmark = pytest.mark.slow

APP = TEACHER_APP  # the session's teacher: capture and training find it by name and reuse it
TOP_K = 8
SEQS = 48


@pytest.fixture(scope="module")
def cluster(ray_cluster, tiny_teacher):
    return deploy_teacher(tiny_teacher)


def _capture_cfg(teacher, out):
    from raykd.config import CaptureConfig

    return CaptureConfig.model_validate({
        "teacher": {"path": str(teacher), "app_name": APP},
        "data": {"builtin_chars": 30_000, "seq_len": 32, "max_sequences": SEQS},
        "top_k": TOP_K, "output_dir": str(out), "sequences_per_shard": 16, "request_sequences": 8, "concurrency": 2,
    })


@pytest.fixture(scope="module")
def captured(cluster, tiny_teacher, tmp_path_factory):
    from raykd.capture import run_capture

    out = tmp_path_factory.mktemp("shards")
    cfg = _capture_cfg(tiny_teacher, out)
    return cfg, run_capture(cfg)


def test_capture_writes_shards_and_resumes(captured):
    from raykd.capture import run_capture

    cfg, summary = captured
    assert summary["sequences"] == SEQS and summary["skipped"] == 0
    assert summary["shards"] == SEQS // 16 and summary["positions"] == SEQS * 31
    assert summary["bytes_per_token"] < 60  # vocab 384: 9-bit ids -> 8*9/8 + 2*8 + 4 = 29 B/token + Parquet pages
    again = run_capture(cfg)
    assert again["skipped"] == SEQS and again["shards"] == 0


def test_online_signals_equal_offline_signals(captured):
    from raykd.capture import capture_prepare, split_range
    from raykd.data.ingest import ingest
    from raykd.signals.store import SignalStore
    from raykd.signals.format import from_ipc, sequence_hash, unpack
    from raykd.teacher.service import teacher_handle

    cfg, summary = captured
    prep = capture_prepare(cfg)
    data = ingest(cfg.data, prep.teacher_path, prep.chat_template, prep.chunks)  # the blocks run_capture scored
    blocks = data.take(*split_range(data, cfg.split)).ids
    some = blocks[[3, 40, 17, 0, 29]]
    handle = teacher_handle(APP)
    offline = SignalStore(summary["output_dir"], fingerprint=prep.fingerprint, top_k=TOP_K, strict=True,
                          exact_k=False, field="signals.offline_path")
    stored, where = offline.get([sequence_hash(s) for s in some])
    assert where == [0, 1, 2, 3, 4]
    online = unpack(from_ipc(handle.score_packed.remote(list(some), TOP_K).result()))  # what training receives
    live = handle.score.remote(list(some), TOP_K).result()  # float32, before packing
    np.testing.assert_array_equal(stored.offsets, online.offsets)
    np.testing.assert_array_equal(stored.topk_ids, online.topk_ids)
    np.testing.assert_allclose(stored.topk_logprobs, online.topk_logprobs, rtol=2.0**-10, atol=1e-6)
    np.testing.assert_allclose(stored.tail_logprob, online.tail_logprob, rtol=2.0**-10, atol=1e-6)
    np.testing.assert_array_equal(stored.topk_ids, live.topk_ids)
    np.testing.assert_allclose(stored.topk_logprobs, live.topk_logprobs, rtol=2.0**-10, atol=1e-6)


def _distill_cfg(teacher, tmp_path, run_name, **signals):
    from raykd.config import DistillConfig

    return DistillConfig.model_validate({
        "run_name": run_name, "output_dir": str(tmp_path / "out"),
        "teacher": {"path": str(teacher), "app_name": APP},
        "student": {"num_layers": 1},
        "data": {"builtin_chars": 30_000, "seq_len": 32, "max_sequences": SEQS},
        "loss": {"top_k": TOP_K},
        # One worker, 8 sequences per step: 6 steps per epoch, two epochs, metrics at the end of each.
        "train": {"num_workers": 1, "batch_size": 8, "max_steps": 12, "log_every": 6, "checkpoint_every": 12,
                  "warmup_steps": 1, "max_inflight": 3, "storage_path": str(tmp_path / "runs")},
        "eval": {"baseline": False, "max_sequences": 4, "gen_tokens": 4, "gen_prompts": 1},
        "mlflow": {"experiment": "signals", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "signals": signals,
    })


def _history(cfg, run_id, key):
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(cfg.mlflow.tracking_uri).get_metric_history(run_id, key)}


def test_second_epoch_hits_the_cache_with_zero_teacher_calls(cluster, tiny_teacher, tmp_path):
    from raykd.distill import run_distill

    cfg = _distill_cfg(tiny_teacher, tmp_path, "cached", cache_dir=str(tmp_path / "signals"))
    run_id = run_distill(cfg)["run_id"]
    misses, hits = _history(cfg, run_id, "signal_cache_misses"), _history(cfg, run_id, "signal_cache_hits")
    requests = _history(cfg, run_id, "signal_teacher_requests")
    assert misses == {6: SEQS, 12: SEQS}  # every sequence scored once, in epoch 1
    assert requests[12] == requests[6] == 6  # epoch 2: zero teacher calls
    assert hits[12] == SEQS
    assert _history(cfg, run_id, "signal_cache_bad_shards")[12] == 0

    # A second run (another trial, or a resumed one) of the same data is served by the cache from step 1.
    cfg2 = _distill_cfg(tiny_teacher, tmp_path, "cached-again", cache_dir=str(tmp_path / "signals"))
    run2 = run_distill(cfg2)["run_id"]
    assert _history(cfg2, run2, "signal_teacher_requests")[12] == 0


def test_training_from_offline_shards_with_the_chunked_loss(captured, tiny_teacher, tmp_path):
    from raykd.distill import run_distill

    _, summary = captured
    cfg = _distill_cfg(tiny_teacher, tmp_path, "offline", cache=False, offline_path=summary["output_dir"],
                       loss_chunk_size=64)
    run_id = run_distill(cfg)["run_id"]
    assert _history(cfg, run_id, "signal_teacher_requests")[12] == 0
    assert _history(cfg, run_id, "signal_cache_hits")[12] == 2 * SEQS
    loss = _history(cfg, run_id, "loss")
    assert np.isfinite(list(loss.values())).all() and loss[12] < loss[6] + 0.5
