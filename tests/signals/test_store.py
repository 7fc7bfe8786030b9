"""Signal stores: hits, misses, persistence, and untrusted shards (reported in a cache, errors offline)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raykd.config import SignalsConfig
from raykd.signals.store import SignalStore, SignalStoreError, cache_directory, write_shard
from raykd.signals.format import sequence_hash
from raykd.train.signal_source import SignalSource
from tests.signals.fakes import FP, K, CountingTeacher, assert_same, batches, packed, store, unpack_reference


def test_cache_directory_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path))
    assert cache_directory(SignalsConfig(), FP, 20, "hf-float32") == tmp_path / "signals" / FP / "hf-float32" / "k20"
    assert cache_directory(SignalsConfig(cache_dir=str(tmp_path / "x")), FP, 5, "vllm-bfloat16") == \
        tmp_path / "x" / FP / "vllm-bfloat16" / "k5"


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
