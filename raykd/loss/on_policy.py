"""The loss of an on-policy step: the student wrote the tokens, the teacher graded them. Pure tensor math.

    on = on_policy_step(step, fraction=0.5)                  # is this step on-policy? (every worker agrees)
    loss, metrics = on_policy_loss(student_logits, sampled, objective="divergence", divergence="jsd", beta=0.5,
                                   temperature=1.0, mask=generated, topk_ids=ids, topk_logprobs=lp,
                                   tail_logprob=tail)        # GKD on the generated rows
    loss, metrics = on_policy_loss(student_logits, sampled, objective="sampled_reverse_kl",
                                   teacher_logprob=target_lp, temperature=1.0, mask=generated)   # k = 1

Rows are positions as everywhere in raykd (raykd/signals/teacher_signals.py): row j of a sequence is the
student's distribution after tokens 0..j and `sampled[j]` is token j + 1, the one the student drew there.
`mask (N,)` is 1 on the rows that predict a generated token, 0 on the prompt: generated tokens alone carry loss.

objective "divergence" (GKD, Agarwal et al. 2024): `T^2 * D(p_teacher^T, p_student^T)` per generated row, D any
divergence of raykd/loss/divergences.py (jsd with beta = GKD's generalised JSD) over the teacher's top-k + tail
or full logits: exactly `raykd.loss.kd.soft_loss`, i.e. the off-policy soft term on other tokens. TRL's
`GKDTrainer.generalized_jsd_loss` (labels masking the prompt) equals this value times beta (1 - beta) / T^2 for
0 < beta < 1 and times 1 / T^2 at beta 0 or 1 (raykd's jsd is normalised; TRL applies no T^2): a test checks it
on vectors made by TRL (tests/loss/test_on_policy.py).

objective "sampled_reverse_kl": with q = softmax(z / T) the student's sampling policy and p the teacher (T = 1),

    KL(q || p) = E_{x ~ q}[log q(x) - log p(x)],   grad = E_{x ~ q}[(log q(x) - log p(x)) grad log q(x)]

(the score-function identity; E[grad log q] = 0 removes the gradient through the advantage). Per generated token
the surrogate row is `stopgrad(log q(x_t) - log p(x_t)) * log q(x_t)`: its gradient is an unbiased estimate of
the reverse KL's, and it needs only the teacher's log-prob of the sampled token (`target_logprob`, k = 1). The
reported loss is the Monte-Carlo estimate of KL(q || p) itself (mean advantage), not the surrogate's value.

Reduction: `reduce_rows` (masked sum / masked rows, or / `denominator`: the global batch's share).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raykd.loss.distributions import Tail, f32
from raykd.loss.divergences import reduce_rows
from raykd.loss.kd import soft_loss

OBJECTIVES = ("divergence", "sampled_reverse_kl")


def on_policy_step(step: int, fraction: float) -> bool:
    """Whether optimizer step `step` (0-based) is on-policy: the steps are spread evenly, floor((s + 1) lam) >
    floor(s lam), so any window of n steps holds n lam of them (+-1); 0 never, 1 always. A function of the step
    alone: every worker (and a resumed run) agrees without talking."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    eps = 1e-9  # (s + 1) * lam lands on an integer up to rounding: count it there
    return math.floor((step + 1) * fraction + eps) > math.floor(step * fraction + eps)


def sampled_reverse_kl(
    student_logits: torch.Tensor,  # (N, V)
    sampled: torch.Tensor,  # (N,) the token drawn from the student at each row
    teacher_logprob: torch.Tensor,  # (N,) the teacher's log-prob of that token at T = 1
    *,
    temperature: float = 1.0,  # the sampling policy is softmax(z / temperature)
    mask: torch.Tensor | None = None,  # (N,) 1 = a generated row
    weights: torch.Tensor | None = None,  # (N,)
    denominator: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(surrogate, estimate)`: the policy-gradient surrogate (module doc) to backpropagate, and the Monte-Carlo
    estimate of KL(q || p) per token (no gradient), both reduced over the masked rows."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (a sampling policy), got {temperature}")
    logq = F.log_softmax(f32(student_logits) / temperature, -1).gather(-1, sampled.long()[:, None])[:, 0]  # (N,)
    advantage = (logq - f32(teacher_logprob).to(logq.dtype)).detach()
    surrogate = reduce_rows(advantage * logq, mask, weights, denominator)
    estimate = reduce_rows(advantage, mask, weights, denominator)
    return surrogate, estimate


def on_policy_loss(
    student_logits: torch.Tensor,  # (N, V)
    sampled: torch.Tensor,  # (N,) next tokens (generated on the masked rows)
    *,
    objective: str = "divergence",
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,) 1 = a generated row
    weights: torch.Tensor | None = None,  # (N,)
    denominator: float | None = None,
    teacher_logits: torch.Tensor | None = None,  # (N, V)
    topk_ids: torch.Tensor | None = None,  # (N, k)
    topk_logprobs: torch.Tensor | None = None,  # (N, k)
    tail_logprob: torch.Tensor | None = None,  # (N,)
    teacher_logprob: torch.Tensor | None = None,  # (N,) log p_teacher(sampled) (sampled_reverse_kl)
    tail: Tail = "bucket",
) -> tuple[torch.Tensor, dict[str, float]]:
    """`(loss, metrics)` of an on-policy batch (module doc); metrics: loss, loss_on_policy."""
    if objective == "divergence":
        loss = soft_loss(student_logits, divergence=divergence, temperature=temperature, beta=beta,
                         skew_lambda=skew_lambda, mask=mask, weights=weights, teacher_logits=teacher_logits,
                         topk_ids=topk_ids, topk_logprobs=topk_logprobs, tail_logprob=tail_logprob, tail=tail,
                         denominator=denominator)
        value = float(loss.detach())
    elif objective == "sampled_reverse_kl":
        if teacher_logprob is None:
            raise ValueError("sampled_reverse_kl needs the teacher's log-prob of each sampled token (teacher_logprob)")
        loss, estimate = sampled_reverse_kl(student_logits, sampled, teacher_logprob, temperature=temperature,
                                            mask=mask, weights=weights, denominator=denominator)
        value = float(estimate)
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return loss, {"loss": value, "loss_on_policy": value}
