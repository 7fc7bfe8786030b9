"""Several teachers' sparse distributions combined into one: a weighted mixture on the union of their top-k.

    ids, logprobs, tail = mixture_topk([ids_a, ids_b], [lp_a, lp_b], [tail_a, tail_b], [0.7, 0.3], vocab_size=V)
    signals = mix_signals([signals_a, signals_b], [0.7, 0.3], vocab_size=V)      # TeacherSignals, k = k_a + k_b

Teacher i gives, per row, its top-k_i ids `I_i` with log-probs at T = 1 and `tail_i` = log of its mass outside
`I_i` (raykd/signals/teacher_signals.py). The ensemble target is the mixture in probability space

    q(u) = sum_i w_i p_i(u)

on K = sum_i k_i outcomes: the union U of the `I_i`, padded with the smallest token ids outside U when the
teachers' top-k overlap (|U| < K), so every row has the same K distinct ids. Where teacher i gave no
probability for u (u not in `I_i`) its tail mass is spread uniformly over the V - k_i tokens it covers,
p_i(u) = exp(tail_i) / (V - k_i) -- the same uniform-tail assumption raykd/loss/distributions.py makes to
temper the tail. The tail is never dropped: what teacher i's tail puts outside the K outcomes,
exp(tail_i) (V - K) / (V - k_i), goes to the mixture's own tail, so

    sum_u q(u) + q_tail = sum_i w_i        (= 1 for weights summing to 1: a normalised target)

and with one teacher (w = 1) the mixture is that teacher's distribution (its K = k ids, unchanged). The
output rows are sorted most likely first, like a teacher's. Ids of the padding carry only tail shares.
The loss (raykd/loss/kd.py) then treats the mixture like one teacher's top-K signals with their tail.

Pure numpy: no torch, Ray or I/O. Computed in float64, returned as float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raykd.signals.teacher_signals import TeacherSignals


def check_weights(weights: Sequence[float], n: int) -> np.ndarray:
    """`weights` as float64 (n,): finite, >= 0, not all 0. ValueError otherwise."""
    w = np.asarray(weights, np.float64)
    if w.shape != (n,):
        raise ValueError(f"{w.size} weights for {n} teachers")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"ensemble weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError("ensemble weights must not all be 0")
    return w


def union_ids(ids: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """(N, K) distinct ids per row, K = sum k_i: each teacher's top-k in order, later repeats replaced by the
    smallest ids that no teacher listed in that row (in increasing order)."""
    cand = np.concatenate([np.asarray(a, np.int64) for a in ids], axis=1)  # (N, K)
    n, k = cand.shape
    if k > vocab_size:
        raise ValueError(f"{k} ensemble outcomes exceed the vocabulary ({vocab_size})")
    eq = cand[:, :, None] == cand[:, None, :]  # (N, K, K)
    dup = (eq & np.tril(np.ones((k, k), bool), -1)[None]).any(-1)  # an earlier column holds the same id
    if not dup.any():
        return cand
    # Free ids: the smallest ones not in the row. Among the first min(V, 2K) ids at least K - |U| are free.
    r = min(vocab_size, 2 * k)
    used = np.zeros((n, r), bool)
    rows, cols = np.nonzero(cand < r)
    used[rows, cand[rows, cols]] = True
    free = np.argsort(used, axis=1, kind="stable")  # False (free) first, each group in increasing id order
    slot = np.clip(np.cumsum(dup, axis=1) - 1, 0, r - 1)
    return np.where(dup, np.take_along_axis(free, slot, axis=1), cand)


def mixture_topk(
    ids: Sequence[np.ndarray],  # per teacher (N, k_i) int
    logprobs: Sequence[np.ndarray],  # per teacher (N, k_i), log-probs at T = 1
    tails: Sequence[np.ndarray],  # per teacher (N,), log mass outside its top-k (-inf: none)
    weights: Sequence[float],  # per teacher, >= 0
    vocab_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mixture sum_i w_i p_i on K = sum k_i ids: (ids (N, K) int32, log-probs (N, K), tail (N,)) float32,
    rows sorted most likely first. See the module docstring for the tail."""
    w = check_weights(weights, len(ids))
    if not (len(ids) == len(logprobs) == len(tails)):
        raise ValueError("ids, logprobs and tails must list the same teachers")
    out_ids = union_ids(ids, vocab_size)  # (N, K)
    n, k_all = out_ids.shape
    q = np.zeros((n, k_all))
    q_tail = np.zeros(n)
    for w_i, ids_i, lp_i, tail_i in zip(w, ids, logprobs, tails):
        ids_i = np.asarray(ids_i, np.int64)
        k_i = ids_i.shape[1]
        p_top = np.exp(np.asarray(lp_i, np.float64))  # (N, k_i)
        t = np.exp(np.asarray(tail_i, np.float64))  # (N,)
        match = out_ids[:, :, None] == ids_i[:, None, :]  # (N, K, k_i)
        inside = (match * p_top[:, None, :]).sum(-1)
        rest = vocab_size - k_i  # tokens teacher i's tail covers
        share = t / rest if rest > 0 else np.zeros(n)
        q += w_i * np.where(match.any(-1), inside, share[:, None])
        if rest > 0:
            q_tail += w_i * t * (vocab_size - k_all) / rest
    order = np.argsort(-q, axis=1, kind="stable")
    with np.errstate(divide="ignore"):
        lp = np.log(np.take_along_axis(q, order, axis=1))
        tail = np.log(q_tail)
    return (np.take_along_axis(out_ids, order, axis=1).astype(np.int32), lp.astype(np.float32),
            tail.astype(np.float32))


def mix_signals(parts: Sequence[TeacherSignals], weights: Sequence[float], vocab_size: int) -> TeacherSignals:
    """Several teachers' signals of the SAME sequences -> one TeacherSignals of their mixture (k = sum k_i).

    The target log-prob is the mixture's, log sum_i w_i p_i(target). Extras (hidden states, attention maps)
    do not mix and are not carried."""
    if not parts:
        raise ValueError("mix_signals needs at least one teacher's signals")
    first = parts[0]
    for p in parts[1:]:
        if not np.array_equal(p.offsets, first.offsets):
            raise ValueError("the teachers' signals cover different sequences (offsets differ)")
    w = check_weights(weights, len(parts))
    ids, lp, tail = mixture_topk([p.topk_ids for p in parts], [p.topk_logprobs for p in parts],
                                 [p.tail_logprob for p in parts], w, vocab_size)
    targets = np.stack([np.asarray(p.target_logprob, np.float64) for p in parts])  # (M, N)
    with np.errstate(divide="ignore"):
        target = np.log((w[:, None] * np.exp(targets)).sum(0))
    return TeacherSignals(ids, lp, tail, target.astype(np.float32), np.asarray(first.offsets, np.int64))
