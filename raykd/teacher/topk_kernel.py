"""Fused per-row top-k + log-sum-exp + target log-prob on CPU (numba, a dependency of vLLM): the kernel the
engine-side scoring (raykd/teacher/vllm_topk.py) runs on the LM head's logits inside vLLM's worker.

    lp, ids, target = topk_logprobs(logits, targets, k)   # logits (R, V) float32 / bfloat16 (torch or numpy)
    # lp (R, k) float32 log-probs at T = 1, most likely first; ids (R, k) int32; target (R,) float32
    topk_packed(logits, targets, k, packed)               # the same into packed (R, 2k+1) float32 rows

What it replaces: vLLM's `log_softmax(dtype=float32)` over the full (R, V) matrix, `topk`, a gather and a rank
count (a second full pass) per request. Per row here, with no (R, V) intermediate:

  1. maxima of nb strided groups {c, c+nb, ...}: elementwise maxima of V/nb slices (SIMD), and the row max;
  2. a threshold t that >= k group maxima reach (bisection with vectorised counts), so >= k logits reach it
     and the top-k all lie in those groups; their logits >= t are compacted branch-free;
  3. the candidates narrowed by a second bisection to about k (ties aside);
  4. each candidate's rank = how many candidates beat it (larger value, or equal value and lower id): an
     O(n^2) count that vectorises, no heap and no data-dependent branches; rank < k goes to slot `rank`;
  5. s = sum exp(x - max) with a float32 polynomial exp (numba has no SVML here, so np.exp would not
     vectorise) accumulated in float64; lse = max + log(s); log-prob = logit - lse in float64.

Accuracy: within ~1e-6 of a float64 reference at any V (torch's float32 log_softmax drifts to ~3e-6 at 32k
and ~2.5e-5 at 152k). Ties between exactly equal logits (frequent in bf16) go to the lower id; torch.topk's
order among equal values is unspecified. Compiled on first use and cached on disk (`cache=True`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _i32_as_f32(typingctx, x):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@intrinsic
def _f32_as_i32(typingctx, x):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int32))

    return sig, codegen


@njit(inline="always", fastmath=True)
def _expf(x):
    """exp(x) for float32 x <= 0 (Cephes polynomial; clamped at -87, where exp is ~0 anyway)."""
    x = max(x, np.float32(-87.0))
    n = np.float32(np.int32(x * np.float32(1.4426950408889634) - np.float32(0.5)))  # round (x <= 0)
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    return y * _i32_as_f32((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(fastmath=True, nogil=True, cache=True)
def _strided_max(x, b, nb, bm):
    """bm[c] = max(x[c], x[c + nb], ..., x[c + (b-1) nb]) (in range), nb a multiple of 16; returns
    (row max, min of bm). Every loop is an elementwise max/min of slices, so LLVM vectorises it (a plain
    scalar reduction over floats would not be)."""
    # slices + range indices: no negative-index wraparound checks
    bs = bm[:nb]
    xs = x[:nb]
    for c in range(xs.shape[0]):
        bs[c] = xs[c]
    for c in range(xs.shape[0], nb):  # only when len(x) < nb (a vocabulary below 4k)
        bs[c] = -np.inf
    for q in range(1, b):
        xs = x[q * nb : q * nb + nb]
        for c in range(xs.shape[0]):
            a, y = bs[c], xs[c]
            bs[c] = a if a > y else y
    hi = bm[nb : nb + 16]  # scratch after the group maxima (bm has room: len(x) + 32)
    lo = bm[nb + 16 : nb + 32]
    for c in range(16):
        hi[c] = bs[c]
        lo[c] = bs[c]
    for q in range(16, nb, 16):
        ys = bs[q : q + 16]
        for c in range(16):
            a, y = hi[c], ys[c]
            hi[c] = a if a > y else y
            a = lo[c]
            lo[c] = a if a < y else y
    m, mn = hi[0], lo[0]
    for c in range(1, 16):
        m = m if m > hi[c] else hi[c]
        mn = mn if mn < lo[c] else lo[c]
    return m, mn


@njit(fastmath=True, inline="always")
def _count_ge(a, n, t):
    c = np.int64(0)
    for j in range(n):
        c += np.int64(a[j] >= t)  # a bool cast, not `1 if ... else 0`: that form did not vectorise (3-4x slower)
    return c


@njit(nogil=True, cache=True)
def _threshold(a, n, k, cap, lo, hi):
    """A value t with k <= count(a[:n] >= t), as close to k (<= cap) as bisection in [lo, hi] gets, where
    count(>= lo) >= k and hi = max(a); vectorised counts, no data-dependent branch per element."""
    lo = max(lo, np.float32(-3.0e38))  # -inf logits (masked tokens) would make the midpoint NaN
    if _count_ge(a, n, hi) >= k:
        return hi
    c_lo = _count_ge(a, n, lo)
    for _ in range(48):  # invariant: count(>= lo) = c_lo >= k > count(>= hi)
        if c_lo <= cap:
            break
        mid = lo + (hi - lo) * np.float32(0.5)
        if mid <= lo or mid >= hi:
            break
        c = _count_ge(a, n, mid)
        if c >= k:
            lo = mid
            c_lo = c
        else:
            hi = mid
    return lo


_LOW = np.uint64(0xFFFFFFFF)


@njit(inline="always")
def _key(v, i):
    """uint64 ordered like (v, -i): the float32 bits made order-preserving in the high half, ~id in the low."""
    v = v if v != 0 else np.float32(0.0)  # -0.0 == 0.0: the same key
    u = np.uint64(np.uint32(_f32_as_i32(v)))
    flip = np.uint64(0x80000000) | ((np.uint64(0) - (u >> np.uint64(31))) & _LOW)  # negative: all bits
    return ((u ^ flip) << np.uint64(32)) | (_LOW - np.uint64(i))


@njit(nogil=True, cache=True)
def _row_topk(x, k, out_v, out_i, bm, cv, ci, ck):
    """Top-k of the float32 row x into out_v/out_i (most likely first; ties: lower id first). Returns max."""
    v = x.shape[0]
    nb = (max(4 * k, v // 16) + 15) & ~15  # groups: a multiple of 16 (whole SIMD vectors per slice), >= 4k
    b = (v + nb - 1) // nb
    m, mn = _strided_max(x, b, nb, bm)
    t = _threshold(bm, nb, k, k + (k >> 2) + 2, mn, m)
    n = 0
    for c in range(nb):
        if bm[c] >= t:
            for j in range(c, v, nb):  # branch-free compaction: always write, advance if kept
                xj = x[j]
                cv[n] = xj
                ci[n] = j
                n += np.int64(xj >= t)
    cap = k + (k >> 3) + 4
    if n > cap:  # narrow to about k candidates (ties aside), then compact
        t2 = _threshold(cv, n, k, cap, t, m)
        n2 = 0
        for i in range(n):
            vi = cv[i]
            cv[n2] = vi
            ci[n2] = ci[i]
            n2 += np.int64(vi >= t2)
        n = n2
    for i in range(n):
        ck[i] = _key(cv[i], ci[i])
    if n > 4 * k + 64:  # many exactly equal logits (e.g. an all-zero row): sort rather than O(n^2) ranks
        order = np.argsort(ck[:n])[::-1]
        for r in range(k):
            out_v[r] = cv[order[r]]
            out_i[r] = ci[order[r]]
        return m
    # rank = how many candidates beat i (keys are unique): one vectorised uint64 compare per pair, no branches
    cks = ck[:n]
    for i in range(n):
        ki = cks[i]
        r = np.int64(0)
        for j in range(n):
            r += np.int64(cks[j] > ki)
        if r < k:
            out_v[r] = cv[i]
            out_i[r] = ci[i]
    return m


@njit(fastmath=True, nogil=True, cache=True)
def _sumexp(x, m):
    """sum exp(x - m): float32 exps and partial sums over blocks of 256 (16 SIMD lanes), blocks summed in
    float64 (a float32 sum of 32k terms would drift by ~1e-5 relative)."""
    s = 0.0
    v = x.shape[0]
    for a in range(0, v, 256):
        xs = x[a : min(a + 256, v)]
        p = np.float32(0.0)
        for j in range(xs.shape[0]):
            p += _expf(xs[j] - m)
        s += np.float64(p)
    return s


@njit(nogil=True, cache=True)
def _finish_row(x, r, k, m, hv, hi, targets, out_lp, out_ids, out_tg):
    lse = np.float64(m) + np.log(_sumexp(x, m))
    for j in range(k):
        out_lp[r, j] = np.float32(np.float64(hv[j]) - lse)
        out_ids[r, j] = hi[j]
    out_tg[r] = np.float32(np.float64(x[targets[r]]) - lse)


@njit(nogil=True, cache=True)
def _topk_f32(logits, targets, k, out_lp, out_ids, out_tg):
    v = logits.shape[1]
    hv = np.full(k, -np.inf, np.float32)
    hi = np.zeros(k, np.int32)
    bm = np.empty(max(v, 4 * k + 16) + 32, np.float32)
    cv = np.empty(v + 1, np.float32)
    ci = np.empty(v + 1, np.int32)
    ck = np.empty(v + 1, np.uint64)
    for r in range(logits.shape[0]):
        x = logits[r]
        m = _row_topk(x, k, hv, hi, bm, cv, ci, ck)
        _finish_row(x, r, k, m, hv, hi, targets, out_lp, out_ids, out_tg)


@njit(fastmath=True, nogil=True, cache=True)
def _bf16_to_f32(src, dst):
    for j in range(src.shape[0]):
        dst[j] = _i32_as_f32(np.int32(src[j]) << np.int32(16))


@njit(nogil=True, cache=True)
def _topk_bf16(logits_u16, targets, k, out_lp, out_ids, out_tg):
    v = logits_u16.shape[1]
    hv = np.full(k, -np.inf, np.float32)
    hi = np.zeros(k, np.int32)
    x = np.empty(v, np.float32)
    bm = np.empty(max(v, 4 * k + 16) + 32, np.float32)
    cv = np.empty(v + 1, np.float32)
    ci = np.empty(v + 1, np.int32)
    ck = np.empty(v + 1, np.uint64)
    for r in range(logits_u16.shape[0]):
        _bf16_to_f32(logits_u16[r], x)
        m = _row_topk(x, k, hv, hi, bm, cv, ci, ck)
        _finish_row(x, r, k, m, hv, hi, targets, out_lp, out_ids, out_tg)


def topk_logprobs(logits, targets, k: int):
    """logits (R, V) torch float32/bfloat16 (CPU) or numpy float32; targets (R,) ints in [0, V).

    Returns numpy (lp (R, k) float32, ids (R, k) int32, target (R,) float32): views of one packed array.
    """
    packed = np.empty((len(targets), 2 * k + 1), np.float32)
    topk_packed(logits, targets, k, packed)
    return packed[:, :k], packed[:, k : 2 * k].view(np.int32), packed[:, 2 * k]


def topk_packed(logits, targets, k: int, packed: np.ndarray) -> None:
    """Write rows [k log-probs | k ids as int32 bits | target log-prob] into packed (R, 2k+1) float32."""
    import torch

    if isinstance(logits, torch.Tensor):
        logits = logits.detach().contiguous()
        if logits.dtype == torch.bfloat16:
            arr, fn = logits.view(torch.uint16).numpy(), _topk_bf16
        else:
            arr, fn = logits.to(torch.float32).numpy(), _topk_f32
    else:
        arr, fn = np.ascontiguousarray(logits, np.float32), _topk_f32
    tg = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    tg = np.ascontiguousarray(tg, np.int64)
    r, v = arr.shape
    if not 1 <= k <= v:
        raise ValueError(f"k={k} must be in [1, {v}]")
    if tg.shape != (r,) or (r and (tg.min() < 0 or tg.max() >= v)):
        raise ValueError(f"targets must be {r} ids in [0, {v})")
    if packed.shape != (r, 2 * k + 1) or packed.dtype != np.float32:
        raise ValueError(f"packed must be ({r}, {2 * k + 1}) float32")
    out = (packed[:, :k], packed[:, k : 2 * k].view(np.int32), packed[:, 2 * k])
    if 4 * k > v:  # the group stage needs >= 4k logits; a vocabulary this small is cheap to sort
        _topk_sorted(arr if fn is _topk_f32 else _bf16_as_f32(arr), tg, k, out)
    else:
        fn(arr, tg, k, *out)


def _bf16_as_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _topk_sorted(x: np.ndarray, tg: np.ndarray, k: int, out) -> None:
    """The same outputs by a full stable sort in float64 (small vocabularies only)."""
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x64 - m).sum(axis=1, keepdims=True))
    ids = np.argsort(-x, axis=1, kind="stable")[:, :k]
    res = ((np.take_along_axis(x64, ids, 1) - lse).astype(np.float32), ids.astype(np.int32),
           (np.take_along_axis(x64, tg[:, None], 1) - lse)[:, 0].astype(np.float32))
    for o, r in zip(out, res):
        o[...] = r


def warm_up() -> None:
    """Compile (or load from the on-disk cache) what `topk_packed` runs, for float32 and bfloat16 logits, now
    rather than in the first scoring step (numba compiles per argument layout: the same strided views)."""
    import torch

    for dt in (torch.float32, torch.bfloat16):
        topk_packed(torch.randn((2, 64)).to(dt), np.zeros(2, np.int64), 3, np.empty((2, 7), np.float32))
