"""The trainer's signal source: cache, then offline shards, then the teacher; nothing scored twice."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest

from raykd.signals.format import to_ipc
from raykd.signals.store import SignalStore, SignalStoreError, write_shard
from raykd.train.signal_source import SignalSource
from tests.signals.fakes import FP, K, CountingTeacher, assert_same, batches, packed, store, unpack_reference


def test_source_second_epoch_hits_the_cache_with_zero_teacher_calls(tmp_path):
    data = batches(16)
    teacher = CountingTeacher()
    source = SignalSource(teacher, top_k=K, fingerprint=FP, cache=store(tmp_path))
    epoch1 = [source.submit(data[i : i + 4]).result() for i in range(0, 16, 4)]
    assert teacher.calls == 4 and source.counters()["signal_cache_misses"] == 16
    perm = np.random.default_rng(1).permutation(16)  # epoch 2 visits the sequences in another order
    epoch2 = [source.submit(data[perm[i : i + 4]]).result() for i in range(0, 16, 4)]
    assert teacher.calls == 4, "second epoch must not query the teacher"
    c = source.counters()
    assert (c["signal_cache_hits"], c["signal_cache_misses"], c["signal_teacher_requests"]) == (16, 16, 4)
    for i in range(0, 16, 4):  # cached signals are exactly what the live teacher gave (same packed bytes)
        assert_same(epoch2[i // 4], unpack_reference(data[perm[i : i + 4]]))
    assert_same(epoch1[0], unpack_reference(data[:4]))


def test_source_partial_hit_sends_only_the_missing_sequences(tmp_path):
    data = batches(8)
    teacher = CountingTeacher()
    cache = store(tmp_path)
    cache.put(packed(data[[1, 4, 6]]))
    source = SignalSource(teacher, top_k=K, fingerprint=FP, cache=cache)
    got = source.submit(data).result()
    assert (teacher.calls, teacher.sequences) == (1, 5)
    assert_same(got, unpack_reference(data))
    assert len(store(tmp_path)) == 8  # the five new ones were cached too


def test_source_never_sends_a_sequence_that_is_already_in_flight(tmp_path):
    """A prefetch window spanning an epoch boundary: batch 2 repeats sequences batch 1 has not received yet."""
    data = batches(8)
    teacher = CountingTeacher()
    source = SignalSource(teacher, top_k=K, fingerprint=FP, cache=store(tmp_path))
    first = source.submit(data[:6])
    second = source.submit(data[[5, 6, 0, 7]])  # 5 and 0 are in flight
    assert teacher.sequences == 8
    assert_same(first.result(), unpack_reference(data[:6]))
    assert_same(second.result(), unpack_reference(data[[5, 6, 0, 7]]))
    assert (teacher.calls, teacher.sequences) == (2, 8)


def test_source_sees_shards_written_by_another_worker(tmp_path):
    data = batches(8)
    a = SignalSource(CountingTeacher(), top_k=K, fingerprint=FP, cache=store(tmp_path))
    teacher_b = CountingTeacher()
    b = SignalSource(teacher_b, top_k=K, fingerprint=FP, cache=store(tmp_path))  # opened before a writes
    a.submit(data).result()
    b.submit(data[::2]).result()
    assert teacher_b.calls == 0


def test_offline_store_serves_without_teacher_and_truncates_larger_k(tmp_path):
    data = batches(6)
    write_shard(tmp_path, packed(data, top_k=12))
    offline = SignalStore(tmp_path, fingerprint=FP, top_k=K, strict=True, exact_k=False, field="signals.offline_path")
    source = SignalSource(None, top_k=K, fingerprint=FP, offline=offline)
    got = source.submit(data[[3, 1]]).result()
    ref = unpack_reference(data[[3, 1]])
    np.testing.assert_array_equal(got.topk_ids, ref.topk_ids)
    np.testing.assert_allclose(got.tail_logprob, ref.tail_logprob, atol=2e-3)  # tail = float16 tail + dropped mass
    with pytest.raises(SignalStoreError, match="signals.offline_path: 1 of 2 sequences .*raykd capture"):
        source.submit(np.stack([data[0], batches(1, seed=9)[0]]))


def test_teacher_reply_from_other_weights_is_rejected(tmp_path):
    def other_teacher(sequences, top_k):
        f: Future = Future()
        f.set_result(to_ipc(packed(sequences, fingerprint="cccccccccccccccc")))
        return f

    cache = store(tmp_path)
    source = SignalSource(other_teacher, top_k=K, fingerprint=FP, cache=cache)
    with pytest.raises(ValueError, match="another teacher|expected"):
        source.submit(batches(2)).result()
    assert len(cache) == 0
