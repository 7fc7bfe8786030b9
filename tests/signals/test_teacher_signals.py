"""TeacherSignals: construction, truncation, concatenation, taking sequences."""

import numpy as np
import pytest

from raykd.signals import TeacherSignals, signals_from_logprobs
from tests.signals.fakes import batches, score


def _lp(n=6, v=12, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, v)) * 2
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def test_from_logprobs_mass_conserved():
    lp = _lp()
    sig = signals_from_logprobs(lp, np.arange(6) % 12, np.array([0, 2, 6]), 4)
    total = np.logaddexp(np.logaddexp.reduce(sig.topk_logprobs.astype(np.float64), axis=1), sig.tail_logprob)
    np.testing.assert_allclose(total, 0.0, atol=1e-5)
    assert (np.diff(sig.topk_logprobs, axis=1) <= 0).all()  # most likely first
    np.testing.assert_allclose(sig.target_logprob, lp[np.arange(6), np.arange(6) % 12], rtol=1e-6)
    assert sig.num_sequences == 2 and sig.top_k == 4


def test_truncate_moves_mass_into_tail():
    lp = _lp()
    full = signals_from_logprobs(lp, np.zeros(6, int), np.array([0, 6]), 8)
    small = full.truncate_k(3)
    direct = signals_from_logprobs(lp, np.zeros(6, int), np.array([0, 6]), 3)
    np.testing.assert_array_equal(small.topk_ids, direct.topk_ids)
    np.testing.assert_allclose(small.tail_logprob, direct.tail_logprob, rtol=1e-5)
    with pytest.raises(ValueError):
        full.truncate_k(9)


def test_concat_and_validation():
    a = signals_from_logprobs(_lp(3), np.zeros(3, int), np.array([0, 3]), 2)
    b = signals_from_logprobs(_lp(4, seed=1), np.zeros(4, int), np.array([0, 1, 4]), 2)
    c = TeacherSignals.concat([a, b])
    np.testing.assert_array_equal(c.offsets, [0, 3, 4, 7])
    assert c.num_rows == 7
    with pytest.raises(ValueError, match="offsets"):
        TeacherSignals(a.topk_ids, a.topk_logprobs, a.tail_logprob, a.target_logprob, np.array([0, 2]))


def test_take_sequences_reorders():
    sig = score(batches(4, 6))
    out = sig.take_sequences([2, 0])
    np.testing.assert_array_equal(out.topk_ids, np.concatenate([sig.topk_ids[10:15], sig.topk_ids[0:5]]))
    np.testing.assert_array_equal(out.offsets, [0, 5, 10])
