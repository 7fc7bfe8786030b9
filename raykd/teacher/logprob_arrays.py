"""vLLM's log-prob outputs -> `TeacherSignals` arrays, for both scoring paths of the vLLM teacher, and the
agreement statistics that compare two teachers' signals.

    rows_from_flat(out.prompt_logprobs, L - 1, k, prompt=True)     # prompt_logprobs path: FlatLogprobs lists
    signals_from_packed([split_packed(out.prompt_token_id_logprobs, k, L - 1)], k, V)   # engine top-k path
    compare_signals(ref, got)                                        # top-1 / shared / |diff| statistics

Pure numpy (no vLLM import): the replica's front end runs these on every reply.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from raykd.signals import TeacherSignals

# A float32 log-softmax cannot resolve probability mass below about one ulp of 1.0 per summed entry.
_F32_ULP = 2.0**-23


def rows_from_flat(flat: Any, n_rows: int, k: int, prompt: bool) -> tuple[np.ndarray, np.ndarray]:
    """`(n_rows, k + 1)` int32 ids and float32 log-probs from a vLLM `FlatLogprobs`.

    Column 0 is the actual token (the next prompt token, or the sampled one), columns 1..k the top-k, most
    likely first: vLLM stores exactly 1 + k entries per position in flat mode (no de-duplication). Prompt
    log-probs start with an empty entry for position 0 (nothing predicts the first token).
    """
    start = flat.start_indices[1] if prompt else 0
    size = len(flat.token_ids) - start
    if size != n_rows * (k + 1) or len(flat.logprobs) - start != size:
        raise RuntimeError(f"vLLM returned {size} log-prob entries for {n_rows} positions; expected "
                           f"{n_rows} x (1 actual token + top_k={k}) (has vLLM's FlatLogprobs layout changed?)")
    # fromiter with a count: one pass over the Python list, no intermediate object array (~30 % faster).
    ids = np.fromiter(itertools.islice(flat.token_ids, start, None), np.int32, size)
    lps = np.fromiter(itertools.islice(flat.logprobs, start, None), np.float32, size)
    return ids.reshape(n_rows, k + 1), lps.reshape(n_rows, k + 1)


def tail_logprob(topk_logprobs: np.ndarray, vocab_size: int) -> np.ndarray:
    """`(N,)` log of the mass outside the top-k, `log(1 - sum exp(topk))`, from `(N, k)` T = 1 log-probs.

    float64 with `expm1` so that a top-k mass close to 1 keeps its digits; floored at k float32 ulps of 1.0,
    the resolution of the float32 log-softmax the log-probs come from (below it the difference is noise).
    -inf when the top-k is the whole vocabulary.
    """
    n, k = topk_logprobs.shape
    if k >= vocab_size:
        return np.full(n, -np.inf, np.float32)
    x = topk_logprobs.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))  # log of the top-k mass, <= 0 up to rounding
    rest = -np.expm1(np.minimum(lse, 0.0))
    return np.log(np.maximum(rest, k * _F32_ULP)).astype(np.float32)


def signals_from_rows(parts: list[tuple[np.ndarray, np.ndarray]], vocab_size: int) -> TeacherSignals:
    """Concatenate per-sequence `rows_from_flat` outputs into TeacherSignals (offsets by sequence)."""
    ids = np.concatenate([p[0] for p in parts])
    lps = np.concatenate([p[1] for p in parts])
    offsets = np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])]).astype(np.int64)
    topk_lp = np.ascontiguousarray(lps[:, 1:])
    return TeacherSignals(
        np.ascontiguousarray(ids[:, 1:]), topk_lp, tail_logprob(topk_lp, vocab_size),
        np.ascontiguousarray(lps[:, 0]), offsets,
    )


def compare_signals(ref: TeacherSignals, got: TeacherSignals) -> dict[str, float]:
    """Agreement of two teachers' signals on the same rows (e.g. transformers vs vLLM on the same weights).

    top1: fraction of rows with the same most likely token; shared: fraction of top-k entries whose id is in
    both top-k lists; median/p99/max: |log-prob difference| over those shared entries; target_*: |difference|
    of the actual next token's log-prob; tail_max: largest |difference| of the tail mass (probability).
    """
    if not np.array_equal(ref.offsets, got.offsets) or ref.topk_ids.shape != got.topk_ids.shape:
        raise ValueError("signals cover different rows or top-k sizes")
    k = ref.top_k
    eq = ref.topk_ids[:, :, None] == got.topk_ids[:, None, :]  # (N, k, k): entry i of ref is entry j of got
    hit, where = eq.any(2), eq.argmax(2)
    diff = np.abs(ref.topk_logprobs - np.take_along_axis(got.topk_logprobs, where, 1))[hit].astype(np.float64)
    target = np.abs(ref.target_logprob.astype(np.float64) - got.target_logprob)
    tail = np.abs(np.exp(ref.tail_logprob.astype(np.float64)) - np.exp(got.tail_logprob.astype(np.float64)))
    return {
        "rows": float(ref.num_rows), "top_k": float(k),
        "top1": float(np.mean(ref.topk_ids[:, 0] == got.topk_ids[:, 0])), "shared": float(hit.mean()),
        "median": float(np.median(diff)), "p99": float(np.quantile(diff, 0.99)), "max": float(diff.max()),
        "target_median": float(np.median(target)), "target_max": float(target.max()),
        "tail_max": float(np.nanmax(tail)) if tail.size else 0.0,
    }


def split_packed(arr: Any, k: int, n_rows: int) -> np.ndarray:
    """Check one request's array: (n_rows, 2k+1) float32, else RuntimeError naming the fallback switch."""
    if not isinstance(arr, np.ndarray) or arr.shape != (n_rows, 2 * k + 1) or arr.dtype != np.float32:
        got = "nothing" if arr is None else f"{type(arr).__name__} {getattr(arr, 'shape', '')}"
        raise RuntimeError(f"vLLM's engine top-k returned {got} for {n_rows} positions at k={k}, expected "
                           f"({n_rows}, {2 * k + 1}) float32 (teacher.vllm.scoring: prompt_logprobs avoids this path)")
    return arr


def signals_from_packed(parts: list[np.ndarray], k: int, vocab_size: int):
    """TeacherSignals from per-sequence (L_b-1, 2k+1) arrays; the tail as the prompt_logprobs path computes it."""
    arr = np.concatenate(parts) if len(parts) > 1 else parts[0]
    lp = np.ascontiguousarray(arr[:, :k])
    ids = np.ascontiguousarray(arr[:, k : 2 * k]).view(np.int32)
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return TeacherSignals(ids, lp, tail_logprob(lp, vocab_size), np.ascontiguousarray(arr[:, 2 * k]), offsets)
