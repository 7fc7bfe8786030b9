"""Divergences against independent float64 numpy references, invariants and the JSD endpoints."""

import math

import numpy as np
import pytest
import torch

from raykd.loss.distributions import log_distributions
from raykd.loss.divergences import DIVERGENCES, divergence_rows
from raykd.loss.kd import kl_full, kl_topk, soft_loss
from raykd.signals import signals_from_logprobs

torch.set_num_threads(1)  # tiny tensors: more threads only contend on the shared cores


# ------------------------------------------------------------------ float64 numpy references (no torch)
def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(-1)


def np_div(name: str, p: np.ndarray, q: np.ndarray, beta=0.5, lam=0.1) -> np.ndarray:
    """Reference divergences written from their definitions, on probabilities."""
    if name == "forward_kl":
        return np_kl(p, q)
    if name == "reverse_kl":
        return np_kl(q, p)
    if name == "skew_kl":
        return np_kl(p, lam * p + (1 - lam) * q)
    if name == "skew_reverse_kl":
        return np_kl(q, lam * q + (1 - lam) * p)
    if name == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    if name == "jsd":
        if beta == 0:
            return np_kl(p, q)
        if beta == 1:
            return np_kl(q, p)
        m = beta * p + (1 - beta) * q
        return (beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)) / (beta * (1 - beta))
    raise KeyError(name)


def np_topk_bucket(s_logits: np.ndarray, ids: np.ndarray, lp: np.ndarray, tail: np.ndarray, T: np.ndarray):
    """Teacher/student distributions over (teacher top-k, rest) with per-row T, uniform-tail model."""
    n, V = s_logits.shape
    k = ids.shape[1]
    P, Q = [], []
    for r in range(n):
        full_t = np.full(V, tail[r] - math.log(V - k))
        full_t[ids[r]] = lp[r]
        pt = np.exp(np_log_softmax(full_t / T[r]))
        ps = np.exp(np_log_softmax(s_logits[r] / T[r]))
        sel = ids[r]
        P.append(np.append(pt[sel], 1 - pt[sel].sum()))
        Q.append(np.append(ps[sel], 1 - ps[sel].sum()))
    return np.array(P), np.array(Q)


# ------------------------------------------------------------------ helpers
def _logits(n=12, v=50, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


def _topk(teacher_logits: torch.Tensor, k: int):
    lp = torch.log_softmax(teacher_logits.double(), -1).numpy()
    n = lp.shape[0]
    sig = signals_from_logprobs(lp, np.zeros(n, np.int64), np.array([0, n]), k)
    return torch.as_tensor(sig.topk_ids), torch.as_tensor(sig.topk_logprobs), torch.as_tensor(sig.tail_logprob)


def _probs(logits: torch.Tensor, T: float) -> np.ndarray:
    return np.exp(np_log_softmax(logits.double().numpy() / T))


# ------------------------------------------------------------------ full logits
@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_full_logits_match_reference(name, T):
    s, t = _logits(seed=1), _logits(seed=2)
    expected = T * T * np_div(name, _probs(t, T), _probs(s, T), beta=0.3, lam=0.2).mean()
    got = soft_loss(s, teacher_logits=t, divergence=name, temperature=T, beta=0.3, skew_lambda=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_identical_distributions_give_zero_and_nonnegative(name):
    s = _logits(seed=3)
    assert soft_loss(s, teacher_logits=s.clone(), divergence=name, temperature=2.0).item() == pytest.approx(0, abs=1e-5)
    ids, lp, tail = _topk(s, 8)
    for mode in ("bucket", "renormalize"):
        z = soft_loss(s, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, divergence=name, tail=mode)
        assert z.item() == pytest.approx(0.0, abs=1e-5)
    rows = divergence_rows(name, torch.log_softmax(_logits(seed=4), -1), torch.log_softmax(s, -1))
    assert (rows >= -1e-6).all()


def test_forward_kl_equals_the_existing_kd_loss():
    s, t = _logits(seed=5), _logits(seed=6)
    assert soft_loss(s, teacher_logits=t, temperature=2.0).item() == pytest.approx(kl_full(s, t, 2.0).item(), rel=1e-6)
    ids, lp, tail = _topk(t, 7)
    for mode in ("bucket", "renormalize"):
        ours = soft_loss(s, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, temperature=2.0, tail=mode)
        assert ours.item() == pytest.approx(kl_topk(s, ids, lp, tail, 2.0, tail=mode).item(), rel=1e-6)


# ------------------------------------------------------------------ generalised JSD endpoints
def test_jsd_endpoints_are_the_kls_not_zero():
    s, t = _logits(seed=7), _logits(seed=8)
    t_logp, s_logp = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    fkl = divergence_rows("forward_kl", t_logp, s_logp)
    rkl = divergence_rows("reverse_kl", t_logp, s_logp)
    assert fkl.mean() > 0.5  # the test is meaningful: the KLs are far from 0
    assert torch.allclose(divergence_rows("jsd", t_logp, s_logp, beta=0.0), fkl)
    assert torch.allclose(divergence_rows("jsd", t_logp, s_logp, beta=1.0), rkl)
    # Continuity: the normalised JSD approaches the KLs as beta -> 0 / 1 (the gap is O(beta)) ...
    gaps0, gaps1 = [], []
    for eps in (1e-3, 1e-5, 1e-7, 1e-9):
        gaps0.append(((divergence_rows("jsd", t_logp, s_logp, beta=eps) - fkl).abs() / fkl).max().item())
        gaps1.append(((divergence_rows("jsd", t_logp, s_logp, beta=1 - eps) - rkl).abs() / rkl).max().item())
    assert gaps0 == sorted(gaps0, reverse=True) and gaps1 == sorted(gaps1, reverse=True)
    assert gaps0[-1] < 1e-4 and gaps1[-1] < 1e-4
    # ... and float32 near the endpoints agrees with float64 (no catastrophic cancellation).
    t64, s64 = torch.log_softmax(t.double(), -1), torch.log_softmax(s.double(), -1)
    for beta in (1e-6, 1 - 1e-6):
        ref = divergence_rows("jsd", t64, s64, beta=beta)
        assert torch.allclose(divergence_rows("jsd", t_logp, s_logp, beta=beta).double(), ref, rtol=1e-4), beta


def test_jsd_is_trl_value_over_beta_one_minus_beta_and_symmetric_at_half():
    s, t = _logits(seed=9), _logits(seed=10)
    p, q = _probs(t, 1.0), _probs(s, 1.0)
    beta = 0.3
    m = beta * p + (1 - beta) * q
    trl = beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)  # TRL/GKD convention
    got = divergence_rows("jsd", torch.log_softmax(t.double(), -1), torch.log_softmax(s.double(), -1), beta=beta)
    np.testing.assert_allclose(got.numpy() * beta * (1 - beta), trl, rtol=1e-10)
    a = divergence_rows("jsd", torch.log_softmax(t, -1), torch.log_softmax(s, -1), beta=0.5)
    b = divergence_rows("jsd", torch.log_softmax(s, -1), torch.log_softmax(t, -1), beta=0.5)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a <= 4 * math.log(2) + 1e-5).all()  # JSD_0.5 <= log 2


def test_bad_beta_and_lambda_raise():
    x = torch.log_softmax(_logits(), -1)
    with pytest.raises(ValueError, match="beta"):
        divergence_rows("jsd", x, x, beta=1.5)
    with pytest.raises(ValueError, match="skew_lambda"):
        divergence_rows("skew_kl", x, x, skew_lambda=1.0)
    with pytest.raises(ValueError, match="divergence"):
        divergence_rows("kl", x, x)


def test_skew_endpoints():
    s, t = _logits(seed=11), _logits(seed=12)
    tl, sl = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    assert torch.allclose(divergence_rows("skew_kl", tl, sl, skew_lambda=0.0), divergence_rows("forward_kl", tl, sl))
    assert torch.allclose(
        divergence_rows("skew_reverse_kl", tl, sl, skew_lambda=0.0), divergence_rows("reverse_kl", tl, sl), rtol=1e-5
    )
    # Skewing towards p bounds the divergence: SKL_lam <= -log(lam).
    assert (divergence_rows("skew_kl", tl, sl, skew_lambda=0.1) <= -math.log(0.1) + 1e-5).all()


# ------------------------------------------------------------------ top-k with the tail bucket
@pytest.mark.parametrize("name", DIVERGENCES)
def test_topk_bucket_matches_reference_with_per_row_temperature(name):
    s, t = _logits(n=6, v=30, seed=13), _logits(n=6, v=30, seed=14)
    ids, lp, tail = _topk(t, 5)
    T = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    P, Q = np_topk_bucket(s.double().numpy(), ids.numpy(), lp.double().numpy(), tail.double().numpy(), T.double().numpy())
    expected = (T.double().numpy() ** 2 * np_div(name, P, Q, beta=0.7, lam=0.3)).mean()
    got = soft_loss(s, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, divergence=name, temperature=T,
                    beta=0.7, skew_lambda=0.3)
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_per_row_temperature_equals_rowwise_scalar_calls():
    s, t = _logits(n=5, seed=15), _logits(n=5, seed=16)
    ids, lp, tail = _topk(t, 6)
    T = torch.tensor([0.7, 1.0, 2.0, 3.0, 5.0])
    for mode in ("bucket", "renormalize"):
        t_lp, s_lp = log_distributions(s, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, temperature=T, tail=mode)
        for r in range(5):
            t1, s1 = log_distributions(s[r:r + 1], topk_ids=ids[r:r + 1], topk_logprobs=lp[r:r + 1],
                                       tail_logprob=tail[r:r + 1], temperature=float(T[r]), tail=mode)
            assert torch.allclose(t_lp[r], t1[0], atol=1e-5) and torch.allclose(s_lp[r], s1[0], atol=1e-5)
    full = soft_loss(s, teacher_logits=t, temperature=T, divergence="reverse_kl")
    rows = [soft_loss(s[r:r + 1], teacher_logits=t[r:r + 1], temperature=float(T[r]), divergence="reverse_kl") for r in range(5)]
    assert full.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-5)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_k_equal_vocab_is_the_full_divergence_and_finite_gradients(name):
    s, t = _logits(n=4, v=12, seed=17), _logits(n=4, v=12, seed=18)
    ids, lp, tail = _topk(t, 12)  # tail = -inf on both sides: the empty bucket must add exactly 0
    s = s.clone().requires_grad_(True)
    got = soft_loss(s, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, divergence=name, temperature=2.0)
    full = soft_loss(s, teacher_logits=t, divergence=name, temperature=2.0)
    assert got.item() == pytest.approx(full.item(), rel=1e-4, abs=1e-6)
    got.backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", DIVERGENCES)
def test_gradients_flow_to_student_only_and_match_finite_differences(name):
    s = _logits(n=3, v=9, seed=19).double().requires_grad_(True)
    t = _logits(n=3, v=9, seed=20).double()
    ids, lp, tail = _topk(t, 4)
    lp = lp.double().requires_grad_(True)
    f = lambda x: soft_loss(x, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail.double(),  # noqa: E731
                            divergence=name, temperature=1.7, beta=0.4, skew_lambda=0.2)
    if name != "tvd":  # |x| is not differentiable where p == q; elsewhere it is
        assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-5)
    f(s).backward()
    assert lp.grad is None and s.grad.abs().sum() > 0


# ------------------------------------------------------------------ masks and weights
@pytest.mark.parametrize("name", DIVERGENCES)
def test_padding_mask_and_weights(name):
    s, t = _logits(seed=21), _logits(seed=22)
    ids, lp, tail = _topk(t, 6)
    kw = dict(topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, divergence=name, temperature=2.0)
    mask = torch.zeros(len(s))
    mask[:5] = 1
    masked = soft_loss(s, mask=mask, **kw).item()
    sub = soft_loss(s[:5], topk_ids=ids[:5], topk_logprobs=lp[:5], tail_logprob=tail[:5], divergence=name, temperature=2.0)
    assert masked == pytest.approx(sub.item(), rel=1e-6)
    assert soft_loss(s, mask=torch.zeros(len(s)), **kw).item() == 0.0
    # Weights scale rows as given: sum m w d / sum m (weight 0 drops a row without renormalising).
    w = torch.linspace(0, 2, len(s))
    P, Q = np_topk_bucket(s.double().numpy(), ids.numpy(), lp.double().numpy(), tail.double().numpy(), np.full(len(s), 2.0))
    d = 4.0 * np_div(name, P, Q)
    m = mask.numpy()
    expected = (m * w.numpy() * d).sum() / m.sum()
    assert soft_loss(s, mask=mask, weights=w, **kw).item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
