"""KD losses against independent float64 references and invariants."""

import math

import numpy as np
import pytest
import torch

from raykd.loss.kd import distill_loss, hard_ce, kl_full, kl_topk
from raykd.signals import signals_from_logprobs


def _ref_kl(student: np.ndarray, teacher: np.ndarray, T: float) -> np.ndarray:
    """Per-row T^2 * KL(softmax(t/T) || softmax(s/T)) in float64, written without torch."""
    def log_softmax(x):
        x = x / T
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lt, ls = log_softmax(teacher.astype(np.float64)), log_softmax(student.astype(np.float64))
    return T * T * (np.exp(lt) * (lt - ls)).sum(-1)


def _logits(n=12, v=50, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


def _topk(teacher_logits: torch.Tensor, k: int):
    lp = torch.log_softmax(teacher_logits.double(), -1).numpy()
    n = lp.shape[0]
    sig = signals_from_logprobs(lp, np.zeros(n, np.int64), np.array([0, n]), k)
    return torch.as_tensor(sig.topk_ids), torch.as_tensor(sig.topk_logprobs), torch.as_tensor(sig.tail_logprob)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_kl_full_matches_reference(T):
    s, t = _logits(seed=1), _logits(seed=2)
    expected = _ref_kl(s.numpy(), t.numpy(), T).mean()
    assert kl_full(s, t, T).item() == pytest.approx(expected, rel=1e-5)


def test_identical_distributions_give_zero():
    s = _logits()
    assert kl_full(s, s.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    ids, lp, tail = _topk(s, 10)
    for tail_mode in ("bucket", "renormalize"):
        assert kl_topk(s, ids, lp, tail, 1.0, tail=tail_mode).item() == pytest.approx(0.0, abs=1e-5)


def test_topk_with_k_equal_vocab_is_the_full_loss():
    s, t = _logits(seed=3), _logits(seed=4)
    ids, lp, tail = _topk(t, t.shape[1])
    assert torch.isinf(tail).all() and (tail < 0).all()
    for T in (1.0, 2.0, 3.0):
        full = kl_full(s, t, T).item()
        assert kl_topk(s, ids, lp, tail, T, tail="bucket").item() == pytest.approx(full, rel=1e-4)
        assert kl_topk(s, ids, lp, tail, T, tail="renormalize").item() == pytest.approx(full, rel=1e-4)


def test_bucket_at_T1_is_exact_coarsened_kl_and_lower_bound():
    s, t = _logits(seed=5), _logits(seed=6)
    k = 7
    ids, lp, tail = _topk(t, k)
    got = kl_topk(s, ids, lp, tail, 1.0, tail="bucket").item()
    # Reference: coarsen both full distributions to (top-k ids of the teacher, rest).
    pt = torch.softmax(t.double(), -1).numpy()
    ps = torch.softmax(s.double(), -1).numpy()
    idx = ids.numpy()
    rows = []
    for r in range(len(pt)):
        a = np.append(pt[r, idx[r]], 1 - pt[r, idx[r]].sum())
        b = np.append(ps[r, idx[r]], 1 - ps[r, idx[r]].sum())
        rows.append((a * np.log(a / b)).sum())
    assert got == pytest.approx(np.mean(rows), rel=1e-4)
    assert got <= kl_full(s, t, 1.0).item() + 1e-6


def test_bucket_uniform_tail_temperature_reference():
    """For T != 1 the tail is modelled as uniform over the V-k remaining tokens (module docstring)."""
    s, t = _logits(n=4, v=30, seed=7), _logits(n=4, v=30, seed=8)
    k, T, V = 5, 2.5, 30
    ids, lp, tail = _topk(t, k)
    got = kl_topk(s, ids, lp, tail, T, tail="bucket").item()
    # Build the equivalent full teacher distribution explicitly and coarsen after tempering.
    rows = []
    for r in range(4):
        full_t = np.full(V, tail[r].item() - math.log(V - k), np.float64)
        full_t[ids[r].numpy()] = lp[r].numpy()
        pt = np.exp(full_t / T)
        pt /= pt.sum()
        ps = torch.softmax(s[r].double() / T, -1).numpy()
        sel = ids[r].numpy()
        a = np.append(pt[sel], 1 - pt[sel].sum())
        b = np.append(ps[sel], 1 - ps[sel].sum())
        rows.append(T * T * (a * np.log(a / b)).sum())
    assert got == pytest.approx(np.mean(rows), rel=1e-4)


def test_tail_derived_when_not_given():
    s, t = _logits(seed=9), _logits(seed=10, scale=1.0)
    ids, lp, tail = _topk(t, 8)
    assert kl_topk(s, ids, lp, None, 2.0).item() == pytest.approx(kl_topk(s, ids, lp, tail, 2.0).item(), rel=1e-4)


def test_padding_mask_excludes_rows_and_all_masked_is_zero():
    s, t = _logits(seed=11), _logits(seed=12)
    mask = torch.zeros(len(s))
    mask[:5] = 1
    assert kl_full(s, t, 2.0, mask).item() == pytest.approx(kl_full(s[:5], t[:5], 2.0).item(), rel=1e-6)
    ids, lp, tail = _topk(t, 6)
    masked = kl_topk(s, ids, lp, tail, 2.0, mask)
    assert masked.item() == pytest.approx(kl_topk(s[:5], ids[:5], lp[:5], tail[:5], 2.0).item(), rel=1e-6)
    zero = torch.zeros(len(s))
    assert kl_full(s, t, 2.0, zero).item() == 0.0
    assert kl_topk(s, ids, lp, tail, 2.0, zero).item() == 0.0
    labels = torch.zeros(len(s), dtype=torch.long)
    assert hard_ce(s, labels, zero).item() == 0.0


def test_distill_loss_combines_alpha_and_gradients_flow_only_to_student():
    s = _logits(seed=13).requires_grad_(True)
    t = _logits(seed=14).requires_grad_(True)
    labels = torch.randint(0, s.shape[1], (len(s),), generator=torch.Generator().manual_seed(0))
    loss, soft, hard = distill_loss(s, labels, alpha=0.3, temperature=2.0, teacher_logits=t)
    assert loss.item() == pytest.approx(0.3 * soft.item() + 0.7 * hard.item(), rel=1e-6)
    ref_hard = torch.nn.functional.cross_entropy(s.double(), labels).item()
    assert hard.item() == pytest.approx(ref_hard, rel=1e-5)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None

    s2 = s.detach().clone().requires_grad_(True)
    ids, lp, tail = _topk(t.detach(), 5)
    lp.requires_grad_(True)
    loss2, _, _ = distill_loss(s2, labels, alpha=0.5, temperature=2.0, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail)
    loss2.backward()
    assert s2.grad.abs().sum() > 0 and lp.grad is None


def test_gradient_matches_finite_difference():
    s = _logits(n=3, v=10, seed=15).double().requires_grad_(True)
    t = _logits(n=3, v=10, seed=16).double()
    ids, lp, tail = _topk(t, 4)
    f = lambda x: kl_topk(x, ids, lp.double(), tail.double(), 2.0)  # noqa: E731
    assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-5)


def test_alpha_zero_needs_no_teacher_and_bad_values_raise():
    s = _logits()
    labels = torch.zeros(len(s), dtype=torch.long)
    loss, soft, hard = distill_loss(s, labels, alpha=0.0, temperature=2.0)
    assert loss.item() == hard.item() and soft.item() == 0.0
    with pytest.raises(ValueError, match="alpha"):
        distill_loss(s, labels, alpha=1.5, temperature=2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        distill_loss(s, labels, alpha=0.5, temperature=2.0)
