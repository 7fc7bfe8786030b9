"""Teacher signals for a student of another tokenizer (`loss.cross_tokenizer`), on the Train worker.

    submit = cross_submit(pair, source.submit)     # in raykd/train/loop.py, around the signal source's submit
    pending = submit(batch_ids)                     # (B, L) student ids -> the teacher scores its own tokens
    sig = pending.result()                          # CrossSignals: the teacher's rows + the aligned row pairs
    sig.take_sequences([0, 2])                      # micro-batches, like TeacherSignals
    t_rows, s_rows = sig.aligned_rows()             # (M,), (M,) batch-wide: teacher row ~ student row

Each student sequence's text is tokenized by the teacher (raykd/train/tokenizer_pair.py), the teacher scores
those tokens through the ordinary signal source (cache, Serve; the wire format is unchanged), and the
byte offsets of both tokenizations give the row pairs (raykd/data/token_alignment.py). The loss
(raykd/loss/row_loss.py -> raykd/loss/cross_tokenizer.py) compares only the paired rows.

Cache: signals are cached under the hash of the sequence the teacher scored, i.e. the teacher's tokens of
the text; that sequence is a function of the text window, the student tokenizer and the teacher tokenizer,
and the signals depend on nothing else, so the key holds exactly what the student tokenizer contributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raykd.signals.teacher_signals import TeacherSignals


@dataclass
class CrossSignals:
    signals: TeacherSignals  # the teacher's rows of its own tokens, sequence b = student sequence b
    pairs: list[tuple[np.ndarray, np.ndarray]]  # per sequence: (teacher rows, student rows), local indices
    student_rows: int  # rows per student sequence (L - 1)
    vmap: np.ndarray  # (V_t,) teacher id -> student id, -1 none
    only: np.ndarray  # (V_s,) bool: student tokens no teacher token maps onto
    teacher_vocab: int
    cross_tokenizer = True  # what raykd/loss/row_loss.py looks for

    def take_sequences(self, order: list[int] | np.ndarray) -> "CrossSignals":
        order = [int(i) for i in order]
        return CrossSignals(self.signals.take_sequences(order), [self.pairs[i] for i in order], self.student_rows,
                            self.vmap, self.only, self.teacher_vocab)

    def aligned_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Batch-wide (teacher rows into `signals`, student rows into the flattened (B * (L-1)) rows)."""
        offsets = np.asarray(self.signals.offsets)
        t = [tr + offsets[b] for b, (tr, _) in enumerate(self.pairs)]
        s = [sr + b * self.student_rows for b, (_, sr) in enumerate(self.pairs)]
        empty = np.zeros(0, np.int64)
        return np.concatenate(t or [empty]).astype(np.int64), np.concatenate(s or [empty]).astype(np.int64)

    @property
    def num_aligned(self) -> int:
        return int(sum(len(s) for _, s in self.pairs))


class _Pending:
    def __init__(self, inner: Any, pairs, student_rows: int, pair_info):
        self.inner, self.pairs, self.student_rows, self.pair_info = inner, pairs, student_rows, pair_info

    def result(self) -> CrossSignals:
        vmap, only, vocab = self.pair_info
        return CrossSignals(self.inner.result(), self.pairs, self.student_rows, vmap, only, vocab)


def cross_submit(pair: Any, submit, max_len: int | None = None, teacher_vocab: int | None = None):
    """Wrap a SignalSource's `submit(batch)` so that it takes student token ids (B, L) (module doc). A text the
    teacher writes in more than `max_len` tokens (its max_model_len) is cut there: later rows go unaligned.
    `teacher_vocab`: the teacher model's output size (may exceed its tokenizer's)."""
    info = (pair.vmap, pair.only, max(len(pair.t_keys), teacher_vocab or 0))

    def go(batch: np.ndarray) -> _Pending:
        views = [pair.teacher_view(seq) for seq in np.asarray(batch)]
        if max_len is not None:
            views = [v.truncate(max_len) for v in views]
        pairs = [v.rows() for v in views]
        inner = submit([v.teacher_ids for v in views])  # ragged: the teacher's tokens of each text
        return _Pending(inner, pairs, int(np.asarray(batch).shape[1]) - 1, info)

    return go
