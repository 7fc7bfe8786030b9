"""A deterministic numpy teacher behind the Serve deployment's `score_packed` contract (a future whose
`.result()` is packed IPC bytes), and helpers for the signal store and signal source tests. The real
deployment is exercised in tests/e2e/test_capture.py (slow).
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np

from raykd.signals import TeacherSignals, signals_from_logprobs
from raykd.signals.format import pack, sequence_hash, to_ipc, unpack
from raykd.signals.store import SignalStore


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


def unpack_reference(sequences) -> TeacherSignals:
    return unpack(packed(sequences))
