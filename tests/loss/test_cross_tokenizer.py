"""Cross-tokenizer soft loss: same-tokenizer equivalence with the ordinary loss, ULD against numpy, tail mass."""

import math

import numpy as np
import pytest
import torch

from raykd.loss.cross_tokenizer import cross_soft_loss, cross_soft_rows, mapped_distributions, uld_rows
from raykd.loss.kd import soft_loss
from raykd.signals import signals_from_logprobs


def _logits(n, v, seed, scale=3.0):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _topk(teacher_logits: torch.Tensor, k: int):
    lp = torch.log_softmax(teacher_logits.double(), -1).numpy()
    n = lp.shape[0]
    sig = signals_from_logprobs(lp, np.zeros(n, np.int64), np.array([0, n]), k)
    return (torch.as_tensor(sig.topk_ids).long(), torch.as_tensor(sig.topk_logprobs).double(),
            torch.as_tensor(sig.tail_logprob).double())


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd", "skew_kl"])
@pytest.mark.parametrize("T", [1.0, 2.0, "per-row"])
@pytest.mark.parametrize("k", [5, 40])
def test_same_tokenizer_reproduces_the_ordinary_loss(divergence, T, k):
    n, v = 16, 40
    s, ids_lp_tail = _logits(n, v, 1), _topk(_logits(n, v, 2), k)
    ids, lp, tail = ids_lp_tail
    temp = torch.linspace(0.5, 3.0, n, dtype=torch.float64) if T == "per-row" else T
    mask = (torch.arange(n) % 5 != 3).double()
    weights = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    ordinary = soft_loss(s, divergence=divergence, temperature=temp, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail,
                         mask=mask, weights=weights)
    rows = torch.arange(n)
    cross = cross_soft_loss(s, rows, rows, ids, lp, tail, torch.arange(v), torch.zeros(v, dtype=torch.bool),
                            teacher_vocab=v, temperature=temp, mask=mask, weights=weights, divergence=divergence,
                            uld_weight=1.0)
    assert cross.item() == pytest.approx(ordinary.item(), abs=1e-6, rel=1e-6)
    # and the gradients agree too
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    soft_loss(s1, divergence=divergence, temperature=temp, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail,
              mask=mask).backward()
    cross_soft_loss(s2, rows, rows, ids, lp, tail, torch.arange(v), torch.zeros(v, dtype=torch.bool),
                    teacher_vocab=v, temperature=temp, mask=mask, divergence=divergence).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)


def _uld_reference(t_logits: np.ndarray, s_logits: np.ndarray, T: float) -> np.ndarray:
    """Boizard et al.'s ULD per row, written directly: sort both softmaxes, zero-pad, L1 of the difference."""
    def softmax(x):
        e = np.exp(x / T - (x / T).max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = -np.sort(-softmax(t_logits), -1), -np.sort(-softmax(s_logits), -1)
    width = max(p.shape[-1], q.shape[-1])
    p = np.pad(p, ((0, 0), (0, width - p.shape[-1])))
    q = np.pad(q, ((0, 0), (0, width - q.shape[-1])))
    return np.abs(p - q).sum(-1)


@pytest.mark.parametrize("v_t,v_s", [(30, 50), (50, 30), (40, 40)])
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_uld_matches_a_direct_numpy_computation(v_t, v_s, T):
    n = 9
    t, s = _logits(n, v_t, 3), _logits(n, v_s, 4)
    ids, lp, tail = _topk(t, v_t)  # the whole teacher distribution: ULD is then exactly Boizard's
    got = uld_rows(s, torch.full_like(ids, -1), lp, tail, torch.ones(v_s, dtype=torch.bool), v_t, T)
    assert np.allclose(got.numpy(), _uld_reference(t.numpy(), s.numpy(), T), atol=1e-9)
    # mapping "none" is ULD alone, scaled by T^2 like every soft term
    rows = cross_soft_rows(s, ids, lp, tail, torch.arange(v_t) % v_s, torch.zeros(v_s, dtype=torch.bool),
                           teacher_vocab=v_t, temperature=T, mapping="none")
    assert np.allclose(rows.numpy(), T * T * _uld_reference(t.numpy(), s.numpy(), T), atol=1e-9)


def test_uld_is_zero_for_a_permuted_vocabulary_and_needs_no_mapping():
    """ULD compares sorted probabilities: a student whose vocabulary is the teacher's in another order and
    whose logits are the same scores 0 with no mapping at all; the exact mapping alone cannot see it."""
    n, v = 6, 20
    t = _logits(n, v, 5)
    perm = torch.randperm(v, generator=torch.Generator().manual_seed(0))
    s = t[:, perm]
    ids, lp, tail = _topk(t, v)
    got = uld_rows(s, torch.full_like(ids, -1), lp, tail, torch.ones(v, dtype=torch.bool), v, 1.0)
    assert got.abs().max().item() < 1e-6  # the signals hold float32 log-probs
    other = uld_rows(_logits(n, v, 6), torch.full_like(ids, -1), lp, tail, torch.ones(v, dtype=torch.bool), v, 1.0)
    assert (other > 1e-3).all()


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_unmapped_teacher_mass_goes_to_the_tail_bucket(T):
    n, v_t, v_s, k = 8, 30, 25, 6
    ids, lp, tail = _topk(_logits(n, v_t, 7), k)
    s = _logits(n, v_s, 8)
    vmap = torch.arange(v_t)
    vmap[vmap % 3 == 0] = -1  # every third teacher token has no student twin
    vmap[vmap >= v_s] = -1
    mapped = vmap[ids]
    t_logp, s_logp = mapped_distributions(s, mapped, lp, tail, v_t, T)
    assert torch.allclose(t_logp.exp().sum(-1), torch.ones(n, dtype=torch.float64))
    assert torch.allclose(s_logp.exp().sum(-1), torch.ones(n, dtype=torch.float64))
    valid = mapped >= 0
    assert torch.isinf(t_logp[:, :k][~valid]).all() and torch.isinf(s_logp[:, :k][~valid]).all()
    s_p = torch.softmax(s / T, -1)
    expected_s_rest = 1 - (s_p.gather(-1, mapped.clamp_min(0)) * valid).sum(-1)
    assert torch.allclose(s_logp[:, -1].exp(), expected_s_rest)
    if T == 1.0:  # at T = 1 the teacher's rest bucket is exactly its tail plus its unmapped top-k mass
        expected_t_rest = tail.exp() + (lp.exp() * ~valid).sum(-1)
        assert torch.allclose(t_logp[:, -1].exp(), expected_t_rest)
        assert torch.allclose(t_logp[:, :k][valid].exp(), lp[valid].exp())


def test_rows_without_alignment_get_no_soft_target():
    n, v = 10, 30
    s, (ids, lp, tail) = _logits(n, v, 9), _topk(_logits(n, v, 10), 5)
    rows = torch.arange(n)
    every = cross_soft_rows(s, ids, lp, tail, torch.arange(v), torch.zeros(v, dtype=torch.bool), teacher_vocab=v)
    s_rows = torch.tensor([1, 4, 7])
    t_rows = torch.tensor([0, 2, 5])
    got = cross_soft_loss(s, t_rows, s_rows, ids, lp, tail, torch.arange(v), torch.zeros(v, dtype=torch.bool),
                          teacher_vocab=v, denominator=float(n))
    # student row 1 is compared with teacher row 0, etc.; the other rows add 0 and still count in the denominator
    ref = cross_soft_rows(s[s_rows], ids[t_rows], lp[t_rows], tail[t_rows], torch.arange(v),
                          torch.zeros(v, dtype=torch.bool), teacher_vocab=v)
    assert got.item() == pytest.approx(ref.sum().item() / n, rel=1e-12)
    assert not math.isclose(got.item(), every.mean().item())


def test_models_wider_than_their_tokenizers():
    """Output rows beyond the tokenizers (padded embeddings): vmap/only are padded, the loss is the same as
    with explicitly padded maps, and teacher ids there count as unmapped."""
    n, v_t, v_s, k = 5, 24, 20, 6
    ids, lp, tail = _topk(_logits(n, v_t, 11), k)
    s = _logits(n, v_s, 12)
    vmap = torch.arange(18) % 17  # tokenizer of 18 tokens; 17 maps to 0 -> make it injective below
    vmap[17] = -1
    only = torch.zeros(17, dtype=torch.bool)
    got = cross_soft_rows(s, ids, lp, tail, vmap, only, teacher_vocab=v_t, temperature=1.5)
    full_vmap = torch.cat([vmap, torch.full((v_t - 18,), -1)])
    full_only = torch.cat([only, torch.ones(v_s - 17, dtype=torch.bool)])
    ref = cross_soft_rows(s, ids, lp, tail, full_vmap, full_only, teacher_vocab=v_t, temperature=1.5)
    assert torch.allclose(got, ref) and torch.isfinite(got).all()
