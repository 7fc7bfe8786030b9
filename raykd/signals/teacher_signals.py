"""Teacher signals: the sparse top-k teacher distribution of every scored position, as compact arrays.

For a batch of B token sequences where sequence b has length L_b, the teacher scores the next-token
distribution after every prefix `x[:j+1]`, j = 0 .. L_b - 2, i.e. `L_b - 1` rows per sequence, aligned
with the student's `logits[:, :-1]` and labels `x[:, 1:]`. Rows of all sequences are concatenated:

    topk_ids       (N, k) int32    teacher's k most likely next tokens, most likely first
    topk_logprobs  (N, k) float32  their log-probabilities at T = 1 (softmax over the full vocabulary)
    tail_logprob   (N,)   float32  log of the probability mass outside the top-k (-inf when k = V)
    target_logprob (N,)   float32  log-prob of the actual next token (teacher held-out loss for free)
    offsets        (B+1,) int64    rows of sequence b are offsets[b]:offsets[b+1]
    extras         name -> array   optional (hidden states, attentions), first dim indexed like rows

Plain numpy so it crosses Ray Serve and the object store without per-token Python objects. Arrays that
come back through Serve are read-only: consumers copy before writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

@dataclass
class TeacherSignals:
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    tail_logprob: np.ndarray
    target_logprob: np.ndarray
    offsets: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, k = self.topk_ids.shape
        if self.topk_logprobs.shape != (n, k):
            raise ValueError(f"topk_logprobs shape {self.topk_logprobs.shape} != topk_ids shape {(n, k)}")
        for name in ("tail_logprob", "target_logprob"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} shape {getattr(self, name).shape} != ({n},)")
        if self.offsets.ndim != 1 or self.offsets[0] != 0 or self.offsets[-1] != n:
            raise ValueError(f"offsets must run from 0 to {n}, got {self.offsets[:1]}..{self.offsets[-1:]}")

    @property
    def num_rows(self) -> int:
        return int(self.topk_ids.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[1])

    @property
    def num_sequences(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def nbytes(self) -> int:
        arrays = [self.topk_ids, self.topk_logprobs, self.tail_logprob, self.target_logprob, self.offsets]
        return int(sum(a.nbytes for a in arrays) + sum(a.nbytes for a in self.extras.values()))

    def truncate_k(self, k: int) -> "TeacherSignals":
        """Keep the k most likely entries; the dropped mass moves into the tail."""
        if k > self.top_k:
            raise ValueError(f"cannot truncate top-{self.top_k} signals to k={k}")
        if k == self.top_k:
            return self
        dropped = np.logaddexp.reduce(self.topk_logprobs[:, k:].astype(np.float64), axis=1)
        tail = np.logaddexp(self.tail_logprob.astype(np.float64), dropped).astype(np.float32)
        return TeacherSignals(
            self.topk_ids[:, :k], self.topk_logprobs[:, :k], tail, self.target_logprob, self.offsets, self.extras
        )

    def take_sequences(self, order: list[int] | np.ndarray) -> "TeacherSignals":
        """The sequences `order` (in that order), as new TeacherSignals."""
        offsets = np.asarray(self.offsets)
        counts = np.diff(offsets)[np.asarray(order, np.int64)]
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order] or [np.zeros(0, np.int64)])
        return TeacherSignals(
            self.topk_ids[rows], self.topk_logprobs[rows], self.tail_logprob[rows], self.target_logprob[rows],
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), {name: a[rows] for name, a in self.extras.items()},
        )

    @staticmethod
    def concat(parts: list["TeacherSignals"]) -> "TeacherSignals":
        if not parts:
            raise ValueError("concat needs at least one TeacherSignals")
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += p.num_rows
        extras = {name: np.concatenate([p.extras[name] for p in parts]) for name in parts[0].extras}
        return TeacherSignals(
            np.concatenate([p.topk_ids for p in parts]),
            np.concatenate([p.topk_logprobs for p in parts]),
            np.concatenate([p.tail_logprob for p in parts]),
            np.concatenate([p.target_logprob for p in parts]),
            np.concatenate(offsets),
            extras,
        )


def signals_from_logprobs(
    logprobs: np.ndarray,  # (N, V) float, full log-softmax at T = 1
    targets: np.ndarray,  # (N,) int, actual next tokens
    offsets: np.ndarray,  # (B+1,)
    top_k: int,
) -> TeacherSignals:
    """Reference builder from a full log-prob matrix (tests and small teachers)."""
    lp = np.asarray(logprobs, np.float64)
    k = min(top_k, lp.shape[1])
    ids = np.argsort(-lp, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(lp, ids, axis=1)
    rest = lp.copy()
    np.put_along_axis(rest, ids, -np.inf, axis=1)
    with np.errstate(divide="ignore"):
        tail = np.logaddexp.reduce(rest, axis=1) if k < lp.shape[1] else np.full(lp.shape[0], -np.inf)
    target = np.take_along_axis(lp, np.asarray(targets, np.int64)[:, None], axis=1)[:, 0]
    return TeacherSignals(
        ids.astype(np.int32), top.astype(np.float32), tail.astype(np.float32), target.astype(np.float32),
        np.asarray(offsets, np.int64),
    )
