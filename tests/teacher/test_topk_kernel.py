"""The fused top-k kernel the engine-side scoring runs (raykd/teacher/topk_kernel.py), against a float64 reference.

    pytest tests/teacher/test_topk_kernel.py

The reference is exact: float64 log-sum-exp, a stable sort (ties: lower id first). The kernel must give the same
ids and log-probs within 1e-6 at every vocabulary size (vLLM's own float32 log-softmax drifts to ~3e-6 at 32k).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.teacher.topk_kernel import topk_logprobs, topk_packed


def reference(x: np.ndarray, targets: np.ndarray, k: int):
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x64 - m).sum(axis=1, keepdims=True))
    ids = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x64, ids, 1) - lse, ids, np.take_along_axis(x64, targets[:, None], 1)[:, 0] - lse[:, 0]


def check(x: np.ndarray, targets: np.ndarray, k: int, logits=None) -> None:
    lp, ids, tg = topk_logprobs(torch.from_numpy(x) if logits is None else logits, targets, k)
    ref_lp, ref_ids, ref_tg = reference(x, targets, k)
    np.testing.assert_array_equal(ids, ref_ids)
    finite = np.isfinite(ref_lp)
    np.testing.assert_array_equal(np.isfinite(lp), finite)
    np.testing.assert_allclose(lp[finite], ref_lp[finite], atol=1e-6, rtol=2e-7)  # + float32 rounding
    np.testing.assert_allclose(tg, ref_tg, atol=1e-6, rtol=2e-7)


@pytest.mark.parametrize("vocab, rows", [(384, 64), (980, 64), (32000, 8)])
@pytest.mark.parametrize("k", [1, 20, 64])
def test_matches_a_float64_reference(vocab, rows, k):
    rng = np.random.default_rng(vocab + k)
    # teacher-like rows: a few large logits over a wide, skewed tail
    x = (rng.standard_normal((rows, vocab)) * 2 + rng.exponential(1.0, (rows, vocab)) ** 2).astype(np.float32)
    targets = rng.integers(0, vocab, rows)
    check(x, targets, k)


@pytest.mark.parametrize("k", [1, 20, 64])
def test_bfloat16_logits(k):
    rng = np.random.default_rng(k)
    logits = torch.from_numpy((rng.standard_normal((48, 980)) * 4).astype(np.float32)).bfloat16()
    # bf16 keeps 8 mantissa bits: many exact ties among the top logits, broken towards the lower id
    x = logits.float().numpy()
    assert (np.sort(x, 1)[:, -2] == np.sort(x, 1)[:, -1]).any()
    check(x, rng.integers(0, 980, 48), k, logits=logits)


def test_ties_signed_zero_masked_tokens_and_constant_rows():
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((32, 500)) * 2).astype(np.float32) / 2  # many exact ties
    x[0, :3] = [-0.0, 0.0, -0.0]  # -0.0 == 0.0: a tie, not an order
    x[0, 3:] = -5
    x[1, ::3] = -np.inf  # masked tokens
    x[2] = 0.0  # every logit equal: the kernel's sort path
    targets = rng.integers(0, 500, 32)
    targets[1] = 1
    for k in (1, 7, 20, 64):
        check(x, targets, k)


def test_small_vocabulary_and_whole_vocabulary():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 40)).astype(np.float32)
    targets = rng.integers(0, 40, 5)
    for k in (1, 9, 10, 11, 40):  # 4k > V takes the sorted path
        check(x, targets, k)


def test_packed_layout_and_bad_arguments():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((6, 300)).astype(np.float32))
    targets = np.arange(6)
    packed = np.full((6, 2 * 5 + 1), np.nan, np.float32)
    topk_packed(x, targets, 5, packed)
    lp, ids, tg = topk_logprobs(x, targets, 5)
    np.testing.assert_array_equal(packed[:, :5], lp)
    np.testing.assert_array_equal(packed[:, 5:10].view(np.int32), ids)
    np.testing.assert_array_equal(packed[:, 10], tg)
    with pytest.raises(ValueError, match="k=301 must be in"):
        topk_logprobs(x, targets, 301)
    with pytest.raises(ValueError, match="targets must be 6 ids in"):
        topk_logprobs(x, np.full(6, 300), 5)
    with pytest.raises(ValueError, match="packed must be"):
        topk_packed(x, targets, 5, np.empty((6, 10), np.float32))
