"""The teachers' mixture on the union of their top-k (raykd/signals/ensemble.py) against a dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.signals.ensemble import check_weights, mix_signals, mixture_topk, union_ids
from raykd.signals.teacher_signals import signals_from_logprobs


def _teacher(rng, n, vocab, k, scale=3.0):
    """Top-k signals of a random full distribution, and the full log-probs (N, V)."""
    logits = rng.normal(size=(n, vocab)) * scale
    lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    sig = signals_from_logprobs(lp, rng.integers(0, vocab, n), np.array([0, n]), k)
    return sig, lp


def _dense_reference(sigs, weights, vocab):
    """sum_i w_i p_i over the whole vocabulary, with each teacher's tail spread uniformly over its V - k_i tokens."""
    n = sigs[0].num_rows
    q = np.zeros((n, vocab))
    for w, s in zip(weights, sigs):
        k = s.top_k
        p = np.repeat((np.exp(s.tail_logprob.astype(np.float64)) / (vocab - k))[:, None], vocab, 1)
        np.put_along_axis(p, s.topk_ids.astype(np.int64), np.exp(s.topk_logprobs.astype(np.float64)), axis=1)
        q += w * p
    return q


@pytest.mark.parametrize("ks", [(4, 4), (3, 6, 2)])
def test_mixture_matches_the_dense_reference(ks):
    rng = np.random.default_rng(0)
    vocab, n = 40, 25
    sigs = [_teacher(rng, n, vocab, k)[0] for k in ks]
    weights = rng.dirichlet(np.ones(len(ks)))
    ids, lp, tail = mixture_topk([s.topk_ids for s in sigs], [s.topk_logprobs for s in sigs],
                                 [s.tail_logprob for s in sigs], weights, vocab)
    assert ids.shape == lp.shape == (n, sum(ks))
    ref = _dense_reference(sigs, weights, vocab)
    np.testing.assert_allclose(np.exp(lp), np.take_along_axis(ref, ids.astype(np.int64), 1), rtol=1e-5, atol=1e-7)
    outside = ref.sum(1) - np.take_along_axis(ref, ids.astype(np.int64), 1).sum(1)
    np.testing.assert_allclose(np.exp(tail), outside, rtol=1e-5, atol=1e-7)
    # Every teacher's top-k ids are among the mixture's, ids are distinct, rows sorted most likely first.
    for s in sigs:
        assert all(set(s.topk_ids[r]) <= set(ids[r]) for r in range(n))
    assert all(len(set(row)) == len(row) for row in ids)
    assert (np.diff(lp, axis=1) <= 0).all()


def test_weights_summing_to_one_give_a_normalised_target():
    rng = np.random.default_rng(1)
    vocab = 64
    sigs = [_teacher(rng, 30, vocab, k)[0] for k in (5, 8)]
    for weights in ([0.5, 0.5], [0.9, 0.1], [1.0, 0.0]):
        ids, lp, tail = mixture_topk([s.topk_ids for s in sigs], [s.topk_logprobs for s in sigs],
                                     [s.tail_logprob for s in sigs], weights, vocab)
        total = np.exp(lp.astype(np.float64)).sum(1) + np.exp(tail.astype(np.float64))
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # Weights summing to 2: the mixture's mass is 2 (nothing is renormalised behind the caller's back).
    ids, lp, tail = mixture_topk([s.topk_ids for s in sigs], [s.topk_logprobs for s in sigs],
                                 [s.tail_logprob for s in sigs], [1.0, 1.0], vocab)
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(1) + np.exp(tail.astype(np.float64)), 2.0, atol=1e-5)


def test_one_teacher_is_itself():
    rng = np.random.default_rng(2)
    sig, _ = _teacher(rng, 12, 50, 6)
    mixed = mix_signals([sig], [1.0], 50)
    np.testing.assert_array_equal(mixed.topk_ids, sig.topk_ids)
    np.testing.assert_allclose(mixed.topk_logprobs, sig.topk_logprobs, atol=1e-6)
    np.testing.assert_allclose(mixed.tail_logprob, sig.tail_logprob, atol=1e-6)
    np.testing.assert_allclose(mixed.target_logprob, sig.target_logprob, atol=1e-6)


def test_identical_teachers_mix_to_the_same_distribution():
    """Full overlap: the union is padded with tail-only ids, and the mixture is still the one teacher."""
    rng = np.random.default_rng(3)
    vocab = 30
    sig, _ = _teacher(rng, 10, vocab, 5)
    mixed = mix_signals([sig, sig], [0.3, 0.7], vocab)
    assert mixed.top_k == 10
    ref = _dense_reference([sig], [1.0], vocab)
    np.testing.assert_allclose(np.exp(mixed.topk_logprobs), np.take_along_axis(ref, mixed.topk_ids.astype(np.int64), 1),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(mixed.topk_ids[:, :5], sig.topk_ids)  # the teacher's ids still lead
    np.testing.assert_allclose(mixed.target_logprob, sig.target_logprob, atol=1e-6)


def test_union_ids_pads_with_the_smallest_free_ids():
    ids = union_ids([np.array([[5, 0, 7]]), np.array([[7, 2, 5]])], vocab_size=10)
    # Columns: 5 0 7 | 7 2 5: the repeated 7 and 5 become 1 and 3, the smallest ids no teacher listed.
    np.testing.assert_array_equal(ids, [[5, 0, 7, 1, 2, 3]])
    with pytest.raises(ValueError, match="exceed the vocabulary"):
        union_ids([np.zeros((1, 4), int), np.zeros((1, 4), int)], vocab_size=6)


def test_loss_on_the_mixture_is_the_kl_of_the_coarsened_reference():
    """The bucket loss at T = 1 on mixed signals = KL(reference mixture || student), both coarsened to the
    K ids + one rest bucket, computed directly from the dense arrays."""
    from raykd.loss.kd import kl_topk

    rng = np.random.default_rng(4)
    vocab, n = 48, 20
    sigs = [_teacher(rng, n, vocab, k)[0] for k in (4, 6)]
    weights = [0.25, 0.75]
    mixed = mix_signals(sigs, weights, vocab)
    student = torch.tensor(rng.normal(size=(n, vocab)), dtype=torch.float64)
    loss = kl_topk(student, torch.from_numpy(mixed.topk_ids).long(), torch.from_numpy(mixed.topk_logprobs).double(),
                   torch.from_numpy(mixed.tail_logprob).double(), temperature=1.0)
    ref = _dense_reference(sigs, weights, vocab)
    s = torch.softmax(student, -1).numpy()
    idx = mixed.topk_ids.astype(np.int64)
    t_c = np.concatenate([np.take_along_axis(ref, idx, 1), (ref.sum(1) - np.take_along_axis(ref, idx, 1).sum(1))[:, None]], 1)
    s_c = np.concatenate([np.take_along_axis(s, idx, 1), (1 - np.take_along_axis(s, idx, 1).sum(1))[:, None]], 1)
    expected = (t_c * (np.log(t_c) - np.log(s_c))).sum(1).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_bad_weights_and_mismatched_sequences():
    rng = np.random.default_rng(5)
    a, _ = _teacher(rng, 4, 20, 3)
    for bad in ([-0.1, 1.1], [0.0, 0.0], [float("nan"), 1.0], [1.0]):
        with pytest.raises(ValueError):
            mix_signals([a, a], bad, 20)
    assert check_weights([0.2, 0.8], 2).tolist() == [0.2, 0.8]
    b = signals_from_logprobs(np.log(np.full((4, 20), 1 / 20)), np.zeros(4, int), np.array([0, 1, 4]), 3)
    with pytest.raises(ValueError, match="different sequences"):
        mix_signals([a, b], [0.5, 0.5], 20)
