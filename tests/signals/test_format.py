"""The packed signal format: round trip, bit widths, size budget, KD loss from the packed form, validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from raykd.signals.format import (
    FORMAT_VERSION,
    SignalFormatError,
    bytes_per_token,
    from_ipc,
    id_bits,
    pack,
    pack_ids,
    read_meta,
    sequence_hash,
    to_ipc,
    unpack,
    unpack_ids,
)
from raykd.signals import TeacherSignals, signals_from_logprobs

FP = "0123456789abcdef"


def _teacher_logprobs(n: int, vocab: int, seed: int) -> np.ndarray:
    """Peaked, LM-like distributions: Zipf prior plus per-row noise, as float64 log-softmax rows."""
    rng = np.random.default_rng(seed)
    prior = -1.1 * np.log(np.arange(1, vocab + 1))[rng.permutation(vocab)]
    logits = prior + rng.normal(0, 2.5, (n, vocab))
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def _signals(lengths: list[int], vocab: int, k: int, seed: int = 0) -> TeacherSignals:
    n = sum(lengths)
    if vocab > 5000:  # building from full (n, vocab) rows is slow at 128k: draw the top-k directly
        rng = np.random.default_rng(seed)
        ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(n)]).astype(np.int32)
        lp = np.log(np.sort(rng.dirichlet(np.full(k + 1, 0.3), n), axis=1)[:, ::-1])
        return TeacherSignals(ids, lp[:, :k].astype(np.float32), lp[:, k].astype(np.float32),
                              lp[:, 0].astype(np.float32), np.concatenate([[0], np.cumsum(lengths)]))
    lp = _teacher_logprobs(n, vocab, seed)
    targets = np.random.default_rng(seed + 1).integers(0, vocab, n)
    return signals_from_logprobs(lp, targets, np.concatenate([[0], np.cumsum(lengths)]), k)


@pytest.mark.parametrize("vocab,bits", [(1, 1), (2, 1), (3, 2), (300, 9), (4096, 12), (4097, 13), (128256, 17), (1 << 20, 20)])
def test_id_bits(vocab, bits):
    assert id_bits(vocab) == bits


@pytest.mark.parametrize("bits", [1, 5, 9, 12, 17, 20, 31])
def test_pack_ids_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    ids = rng.integers(0, 1 << bits, 1001, dtype=np.int64)
    ids[:2] = [0, (1 << bits) - 1]  # extremes
    blob = pack_ids(ids, bits)
    assert len(blob) == (1001 * bits + 7) // 8
    bitstring = "".join(format(int(i), f"0{bits}b") for i in ids)  # the wire layout: MSB first, zero-padded
    bitstring += "0" * (-len(bitstring) % 8)
    assert blob == int(bitstring, 2).to_bytes(len(bitstring) // 8, "big")
    np.testing.assert_array_equal(unpack_ids(blob, 1001, bits), ids)


@pytest.mark.parametrize("vocab,k", [(300, 5), (4096, 20), (128256, 20), (50, 50)])
def test_round_trip(vocab, k):
    sig = _signals([7, 1, 12, 3], vocab, k, seed=vocab)
    sig.extras["hidden"] = np.arange(sig.num_rows * 3, dtype=np.float32).reshape(sig.num_rows, 3)
    hashes = [sequence_hash(np.arange(i, i + 9)) for i in range(4)]
    batch = pack(sig, vocab_size=vocab, teacher_fingerprint=FP, seq_hashes=hashes)
    assert batch.num_rows == 4
    back = unpack(from_ipc(to_ipc(batch)), expect_fingerprint=FP, expect_top_k=k)
    np.testing.assert_array_equal(back.topk_ids, sig.topk_ids)
    np.testing.assert_array_equal(back.offsets, sig.offsets)
    # float16: relative error <= 2^-11 on every finite value; -inf (k = vocab tail) survives exactly.
    for name in ("topk_logprobs", "tail_logprob", "target_logprob"):
        a, b = getattr(sig, name), getattr(back, name)
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
        fin = np.isfinite(a)
        np.testing.assert_allclose(b[fin], a[fin], rtol=2.0**-11, atol=1e-7)
    np.testing.assert_array_equal(back.extras["hidden"], sig.extras["hidden"])
    assert from_ipc(to_ipc(batch)).column("seq_hash").to_pylist() == hashes
    meta = read_meta(batch.schema)
    assert (meta.version, meta.teacher_fingerprint, meta.top_k, meta.vocab_size) == (FORMAT_VERSION, FP, k, vocab)


def test_slices_and_concatenation_unpack_like_the_whole():
    sig = _signals([5, 6, 7, 8], 4096, 20)
    table = pa.Table.from_batches([pack(sig, vocab_size=4096, teacher_fingerprint=FP)])
    whole = unpack(table)
    part = unpack(pa.concat_tables([table.slice(2, 2), table.slice(0, 1)]))
    rows = np.r_[11:18, 18:26, 0:5]
    np.testing.assert_array_equal(part.topk_ids, whole.topk_ids[rows])
    np.testing.assert_array_equal(part.topk_logprobs, whole.topk_logprobs[rows])
    np.testing.assert_array_equal(part.offsets, [0, 7, 15, 20])


def test_bytes_per_token_at_k20_is_under_100():
    sig = _signals([127] * 4, 128256, 20)
    batch = pack(sig, vocab_size=128256, teacher_fingerprint=FP, seq_hashes=[bytes(16)] * 4)
    # 20 * 17 / 8 + 20 * 2 + 2 + 2 = 86.5 per position, plus per-sequence overhead.
    assert 86.5 <= bytes_per_token(batch) < 88
    assert len(to_ipc(batch)) / sig.num_rows < 100
    assert sig.nbytes() / sig.num_rows == pytest.approx(168, abs=0.1)  # unpacked int32/float32 arrays


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_kd_loss_from_packed_within_1e3(tail, T):
    torch = pytest.importorskip("torch")
    from raykd.loss.kd import kl_topk

    vocab, k = 4096, 20
    lp = _teacher_logprobs(512, vocab, seed=3)
    sig = signals_from_logprobs(lp, np.zeros(512, np.int64), np.array([0, 512]), k)
    back = unpack(pack(sig, vocab_size=vocab, teacher_fingerprint=FP))
    rng = np.random.default_rng(4)
    for noise in (0.3, 1.0, 3.0):  # student close to / far from the teacher
        student = torch.as_tensor(lp + rng.normal(0, noise, lp.shape), dtype=torch.float32)

        def loss(s: TeacherSignals) -> float:
            return kl_topk(student, torch.as_tensor(s.topk_ids), torch.as_tensor(s.topk_logprobs),
                           torch.as_tensor(s.tail_logprob), T, tail=tail).item()

        exact, packed = loss(sig), loss(back)
        assert abs(packed - exact) <= 1e-3 * abs(exact), (noise, exact, packed)


def test_validation_rejects_inconsistent_data():
    sig = _signals([4, 4], 300, 5)
    batch = pack(sig, vocab_size=300, teacher_fingerprint=FP)
    with pytest.raises(SignalFormatError, match="another|expected"):
        unpack(batch, expect_fingerprint="ffffffffffffffff")
    with pytest.raises(SignalFormatError, match="top_k"):
        unpack(batch, expect_top_k=6)
    # A blob one byte short (a torn write that still parses as Arrow) is caught.
    cols = {name: batch.column(name) for name in batch.schema.names}
    short = cols["topk_logprobs"].to_pylist()
    short[1] = short[1][:-1]
    cols["topk_logprobs"] = pa.array(short, pa.binary())
    with pytest.raises(SignalFormatError, match="topk_logprobs"):
        unpack(pa.RecordBatch.from_arrays(list(cols.values()), schema=batch.schema))
    bad_version = batch.schema.with_metadata({**batch.schema.metadata, b"raykd.version": b"99"})
    with pytest.raises(SignalFormatError, match="version 99"):
        unpack(batch.cast(bad_version))
    with pytest.raises(SignalFormatError, match="not a raykd"):
        unpack(pa.record_batch({"x": [1]}))
    with pytest.raises(SignalFormatError, match="IPC"):
        from_ipc(to_ipc(batch)[:-40])
    with pytest.raises(ValueError, match="outside"):
        pack(sig, vocab_size=100, teacher_fingerprint=FP)


def test_sequence_hash_depends_on_every_token_and_not_on_dtype():
    a = np.arange(64, dtype=np.int64)
    b = a.copy()
    b[-1] += 1
    assert sequence_hash(a) == sequence_hash(a.astype(np.int32)) != sequence_hash(b)
    assert len(sequence_hash(a)) == 16


def test_format_module_is_pure():
    code = "import sys, raykd.signals.format, raykd.signals.store; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow', 'vllm', 'transformers'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
