"""The on-policy loss (raykd/loss/on_policy.py): which steps are on-policy, generated tokens alone carry loss,
the sampled-token estimator's expectation is the reverse KL's gradient, and GKD parity with TRL.

    pytest tests/loss/test_on_policy.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raykd.loss.on_policy import on_policy_loss, on_policy_step, sampled_reverse_kl
from raykd.signals import signals_from_logprobs

TRL_VECTORS = Path(__file__).parent / "data" / "trl_gkd_jsd.json"


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 1.0])
def test_on_policy_steps_are_spread_evenly(fraction):
    """Every window of n consecutive steps holds n * fraction on-policy steps, +-1; 0 never, 1 always."""
    on = np.array([on_policy_step(s, fraction) for s in range(200)])
    assert on.sum() == round(200 * fraction)
    for n in (5, 10, 37):
        counts = np.convolve(on, np.ones(n, int), "valid")
        assert np.all(np.abs(counts - n * fraction) <= 1.0 + 1e-9)
    with pytest.raises(ValueError):
        on_policy_step(0, 1.5)


def _batch(n=12, vocab=9, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g, dtype=torch.float64)
    t_lp = torch.log_softmax(3 * torch.randn(n, vocab, generator=g, dtype=torch.float64), -1)
    sampled = torch.randint(0, vocab, (n,), generator=g)
    signals = signals_from_logprobs(t_lp.numpy(), sampled.numpy(), np.array([0, n]), k)
    sig = {"topk_ids": torch.as_tensor(signals.topk_ids), "topk_logprobs": torch.as_tensor(signals.topk_logprobs),
           "tail_logprob": torch.as_tensor(signals.tail_logprob)}
    mask = torch.zeros(n, dtype=torch.float64)
    mask[n // 3:] = 1.0  # the first third of the rows predict prompt tokens
    return logits, sampled, sig, torch.as_tensor(signals.target_logprob), mask


@pytest.mark.parametrize("objective", ["divergence", "sampled_reverse_kl"])
def test_generated_tokens_alone_carry_loss(objective):
    """Rows of the prompt get exactly zero gradient and their teacher values change nothing; every generated row
    gets a gradient."""
    logits, sampled, sig, target, mask = _batch()
    kw = dict(objective=objective, divergence="jsd", beta=0.5, temperature=1.0, mask=mask, teacher_logprob=target,
              **sig)
    z = logits.clone().requires_grad_(True)
    loss, metrics = on_policy_loss(z, sampled, **kw)
    loss.backward()
    prompt_rows, gen_rows = mask == 0, mask == 1
    assert torch.all(z.grad[prompt_rows] == 0)
    assert torch.all(z.grad[gen_rows].abs().sum(-1) > 0)
    assert metrics["loss"] == metrics["loss_on_policy"] and math.isfinite(metrics["loss"])
    # Other teacher values and other student logits on the prompt rows: the same loss.
    z2 = logits.clone()
    z2[prompt_rows] += 5.0
    sig2 = {k: v.clone() for k, v in sig.items()}
    sig2["topk_logprobs"][prompt_rows] -= 1.0
    target2 = target.clone()
    target2[prompt_rows] -= 3.0
    loss2, _ = on_policy_loss(z2, sampled, **{**kw, **sig2, "teacher_logprob": target2})
    assert float(loss2) == pytest.approx(float(loss.detach()), rel=1e-12)


def test_divergence_objective_is_the_soft_term_on_generated_rows():
    """objective divergence == raykd.loss.kd.soft_loss over the generated rows (the off-policy soft term)."""
    from raykd.loss.kd import soft_loss

    logits, sampled, sig, _, mask = _batch()
    loss, _ = on_policy_loss(logits, sampled, divergence="skew_kl", temperature=2.0, mask=mask, **sig)
    keep = mask == 1
    ref = soft_loss(logits[keep], divergence="skew_kl", temperature=2.0, **{k: v[keep] for k, v in sig.items()})
    assert float(loss) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_reverse_kl_gradient_is_unbiased(temperature):
    """Monte-Carlo: the mean surrogate gradient over n samples x ~ q matches grad KL(q || p) (exact, small
    vocabulary) within 5 standard errors per logit, the standard error computed exactly from the per-sample
    gradient's variance over the vocabulary; the estimate matches KL(q || p) likewise. The same surrogate
    without the stop-gradient on the advantage is biased and lands outside that tolerance."""
    g = torch.Generator().manual_seed(3)
    vocab, n = 6, 40_000
    z0 = torch.randn(vocab, generator=g, dtype=torch.float64)
    logp = torch.log_softmax(2 * torch.randn(vocab, generator=g, dtype=torch.float64), -1)  # teacher, T = 1

    z = z0.clone().requires_grad_(True)
    logq = torch.log_softmax(z / temperature, -1)
    kl = (logq.exp() * (logq - logp)).sum()
    (exact,) = torch.autograd.grad(kl, z)

    # Per-sample gradient g(x) = (log q(x) - log p(x)) * d log q(x) / dz = (log q(x) - log p(x)) (e_x - q) / T.
    q = logq.detach().exp()
    adv = (logq.detach() - logp)  # (V,)
    per_x = adv[:, None] * (torch.eye(vocab, dtype=torch.float64) - q[None, :]) / temperature  # (V, V): row x
    var = (q[:, None] * per_x**2).sum(0) - exact**2  # (V,) variance of each component
    tol = 5 * (var / n).sqrt()

    x = torch.multinomial(q, n, replacement=True, generator=g)
    zz = z0.clone().requires_grad_(True)
    rows = zz.expand(n, vocab)
    surrogate, estimate = sampled_reverse_kl(rows, x, logp[x], temperature=temperature)
    (mc,) = torch.autograd.grad(surrogate, zz)
    assert torch.all((mc - exact).abs() <= tol), (mc, exact, tol)
    kl_tol = 5 * math.sqrt(float((q * adv**2).sum() - kl.detach() ** 2) / n)
    assert abs(float(estimate) - float(kl.detach())) <= kl_tol

    # Without the stop-gradient the estimator is biased (E[log q grad log q] != 0): the tolerance catches it.
    zb = z0.clone().requires_grad_(True)
    lq = torch.log_softmax(zb.expand(n, vocab) / temperature, -1).gather(-1, x[:, None])[:, 0]
    (biased,) = torch.autograd.grad(((lq - logp[x]) * lq).mean(), zb)
    assert torch.any((biased - exact).abs() > tol)


def test_sampled_reverse_kl_needs_teacher_logprob_and_known_objective():
    logits, sampled, *_ = _batch()
    with pytest.raises(ValueError, match="teacher_logprob"):
        on_policy_loss(logits, sampled, objective="sampled_reverse_kl")
    with pytest.raises(ValueError, match="objective"):
        on_policy_loss(logits, sampled, objective="ppo")


@pytest.mark.skipif(not TRL_VECTORS.exists(), reason="TRL vectors missing")
def test_gkd_parity_with_trl():
    """raykd's on-policy jsd on TRL's vectors (benchmarks/trl_gkd_vectors.py) == TRL's generalized_jsd_loss after
    the documented scaling: TRL = raykd * beta (1 - beta) / T^2 inside (0, 1), raykd / T^2 at beta 0 and 1 -- in
    value and in gradient, with full teacher logits and with top-k signals at k = V."""
    data = json.loads(TRL_VECTORS.read_text())
    student = torch.tensor(data["student_logits"], dtype=torch.float64)  # (B, L-1, V)
    teacher = torch.tensor(data["teacher_logits"], dtype=torch.float64)
    labels = torch.tensor(data["labels"])  # (B, L-1): -100 on prompt rows
    vocab = student.shape[-1]
    rows_s, rows_t = student.reshape(-1, vocab), teacher.reshape(-1, vocab)
    sampled = labels.reshape(-1).clamp_min(0)
    mask = (labels.reshape(-1) != -100).to(torch.float64)
    signals = signals_from_logprobs(torch.log_softmax(rows_t, -1).numpy(), sampled.numpy(),
                                    np.array([0, len(sampled)]), vocab)
    topk = {"topk_ids": torch.as_tensor(signals.topk_ids), "topk_logprobs": torch.as_tensor(signals.topk_logprobs),
            "tail_logprob": torch.as_tensor(signals.tail_logprob)}
    assert len(data["cases"]) == 10
    for case in data["cases"]:
        beta, T = case["beta"], case["temperature"]
        scale = (beta * (1 - beta) if 0 < beta < 1 else 1.0) / T**2
        for teacher_kw, rtol in (({"teacher_logits": rows_t}, 1e-10), (topk, 1e-5)):  # top-k: float32 log-probs
            z = rows_s.clone().requires_grad_(True)
            loss, _ = on_policy_loss(z, sampled, divergence="jsd", beta=beta, temperature=T, mask=mask, **teacher_kw)
            (scale * loss).backward()
            assert float(scale * loss.detach()) == pytest.approx(case["loss"], rel=rtol), case
            np.testing.assert_allclose(z.grad.reshape(student.shape).numpy(), np.array(case["grad"]),
                                       rtol=rtol * 10, atol=1e-12 if rtol < 1e-6 else 1e-7)


def test_on_policy_needs_the_teacher_even_with_alpha_zero():
    """alpha weighs the off-policy steps only: with alpha 0 the on-policy steps still need the teacher, the data
    batches do not (they train on hard labels)."""
    from raykd.config import DistillConfig
    from raykd.loss.objective import needs_teacher, off_policy_needs_teacher

    on = DistillConfig.model_validate({"loss": {"alpha": 0.0, "on_policy": {"fraction": 1.0}}})
    assert needs_teacher(on) and not off_policy_needs_teacher(on)
    off = DistillConfig.model_validate({"loss": {"alpha": 0.0}})
    assert not needs_teacher(off) and not off_policy_needs_teacher(off)
