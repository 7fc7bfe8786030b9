"""Signal stores and the trainer's signal source: hits, misses, persistence, and untrusted shards.

The teacher here is a deterministic numpy function behind the same `score_packed` contract as the Serve
deployment (a future whose `.result()` is packed IPC bytes); the real deployment is exercised in
tests/test_capture.py (slow).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raykd.config import SignalsConfig
from raykd.signal_cache import SignalSource, SignalStore, SignalStoreError, cache_directory, take_sequences, write_shard
from raykd.signal_format import pack, sequence_hash, to_ipc
from raykd.signals import TeacherSignals, signals_from_logprobs

VOCAB, K, FP = 300, 8, "aaaaaaaaaaaaaaaa"


def score(sequences: list[np.ndarray], top_k: int = K) -> TeacherSignals:
    """A deterministic 'teacher': each position's distribution depends on the current token only."""
    rows, targets, offsets = [], [], [0]
    for seq in sequences:
        seq = np.asarray(seq, np.int64)
        logits = np.sin(np.outer(seq[:-1] + 1, np.arange(1, VOCAB + 1)) * 0.37) * 6
        rows.append(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))
        targets.append(seq[1:])
        offsets.append(offsets[-1] + len(seq) - 1)
    return signals_from_logprobs(np.concatenate(rows), np.concatenate(targets), np.array(offsets), top_k)


def packed(sequences, fingerprint: str = FP, top_k: int = K):
    return pack(score(sequences, top_k), vocab_size=VOCAB, teacher_fingerprint=fingerprint,
                seq_hashes=[sequence_hash(s) for s in sequences])


class CountingTeacher:
    """`score_packed` with a call counter (what the deployment would count)."""

    def __init__(self):
        self.calls = 0
        self.sequences = 0

    def __call__(self, sequences: list[np.ndarray], top_k: int) -> Future:
        self.calls += 1
        self.sequences += len(sequences)
        f: Future = Future()
        f.set_result(to_ipc(packed(sequences, top_k=top_k)))
        return f


def batches(n: int = 12, length: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, length)).astype(np.int32)


def assert_same(a: TeacherSignals, b: TeacherSignals) -> None:
    np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.topk_logprobs, b.topk_logprobs)
    np.testing.assert_array_equal(a.tail_logprob, b.tail_logprob)


def store(path: Path, **kw) -> SignalStore:
    return SignalStore(path, fingerprint=FP, top_k=K, vocab_size=VOCAB, **kw)


def test_cache_directory_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path))
    assert cache_directory(SignalsConfig(), FP, 20) == tmp_path / "signals" / FP / "k20"
    assert cache_directory(SignalsConfig(cache_dir=str(tmp_path / "x")), FP, 5) == tmp_path / "x" / FP / "k5"


def test_put_get_counts_and_persists(tmp_path):
    data = batches()
    s = store(tmp_path)
    assert s.get([sequence_hash(x) for x in data]) == (None, [])
    assert (s.hits, s.misses) == (0, 12)
    s.put(packed(data[:8]))
    s.put(packed(data[:8]))  # already there: no new shard
    assert len(list(tmp_path.glob("*.parquet"))) == 1
    found, where = s.get([sequence_hash(x) for x in data[::-1]])  # reversed order: found keep the asked order
    assert where == list(range(4, 12))
    expected = unpack_reference(data[7::-1])
    assert_same(found, expected)
    assert (s.hits, s.misses) == (8, 16)
    fresh = store(tmp_path)  # another process / a resumed run
    assert len(fresh) == 8 and not fresh.problems


def unpack_reference(sequences) -> TeacherSignals:
    from raykd.signal_format import unpack

    return unpack(packed(sequences))


def test_take_sequences_reorders():
    sig = score(batches(4, 6))
    out = take_sequences(sig, [2, 0])
    np.testing.assert_array_equal(out.topk_ids, np.concatenate([sig.topk_ids[10:15], sig.topk_ids[0:5]]))
    np.testing.assert_array_equal(out.offsets, [0, 5, 10])


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


# ------------------------------------------------------------------------------------------ untrusted shards
def _good_cache(tmp_path) -> tuple[np.ndarray, Path]:
    data = batches(8)
    s = store(tmp_path)
    s.put(packed(data[:4]))
    path = s.put(packed(data[4:]))
    return data, path


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) * 2 // 3]))
    elif how == "garbage":
        path.write_bytes(b"not parquet at all" * 10)
    else:  # one flipped bit in the middle of a data page: caught by the page CRC
        pf = pq.ParquetFile(path)
        col = pf.metadata.row_group(0).column(pf.schema_arrow.names.index("topk_logprobs"))
        raw[col.data_page_offset + col.total_compressed_size // 2] ^= 0x10
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "garbage", "bitflip"])
def test_damaged_cache_shard_is_reported_and_never_used(tmp_path, caplog, how):
    data, bad = _good_cache(tmp_path)
    _damage(bad, how)
    teacher = CountingTeacher()
    with caplog.at_level(logging.WARNING, logger="raykd.signals"):
        cache = store(tmp_path)
        source = SignalSource(teacher, top_k=K, fingerprint=FP, cache=cache)
        got = source.submit(data).result()
    assert_same(got, unpack_reference(data))  # the damaged shard's sequences came from the teacher
    assert teacher.sequences == 4
    assert len(cache.problems) == 1 and str(bad) in cache.problems[0]
    assert str(bad) in caplog.text
    assert source.counters()["signal_cache_bad_shards"] == 1


def test_foreign_teacher_entry_is_reported_and_never_used(tmp_path, caplog):
    data = batches(4)
    foreign = write_shard(tmp_path, packed(data, fingerprint="bbbbbbbbbbbbbbbb"))  # copied in by mistake
    teacher = CountingTeacher()
    with caplog.at_level(logging.WARNING, logger="raykd.signals"):
        cache = store(tmp_path)
        got = SignalSource(teacher, top_k=K, fingerprint=FP, cache=cache).submit(data).result()
    assert teacher.sequences == 4
    assert_same(got, unpack_reference(data))
    assert "another teacher (bbbbbbbbbbbbbbbb" in cache.problems[0] and str(foreign) in caplog.text


@pytest.mark.parametrize("how", ["truncated", "foreign"])
def test_offline_problems_are_errors_naming_the_file(tmp_path, how):
    data = batches(4)
    path = write_shard(tmp_path, packed(data, fingerprint="bbbbbbbbbbbbbbbb" if how == "foreign" else FP))
    if how == "truncated":
        _damage(path, "truncated")
    with pytest.raises(SignalStoreError, match=f"signals.offline_path: {path}"):
        SignalStore(tmp_path, fingerprint=FP, top_k=K, strict=True, exact_k=False, field="signals.offline_path")


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
