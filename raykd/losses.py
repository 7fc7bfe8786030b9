"""Knowledge-distillation losses: pure tensor math, no Ray, no MLflow, no I/O.

    L = alpha * L_soft + (1 - alpha) * L_hard
    L_soft = T^2 * KL(p_teacher^T || p_student^T),   p^T = softmax(z / T)
    L_hard = CE(student logits at T=1, ground-truth next tokens)

Two teacher forms:
- full logits `(N, V)`: exact KL;
- sparse top-k log-probs `(N, k)` given at T = 1 (what vLLM returns), with `tail_logprob (N,)` = log of the
  teacher's probability mass outside the top-k. Temperature is applied here, and the tail is handled
  explicitly, in one of two documented ways:
  * ``"bucket"`` (default): the distribution over the k kept tokens plus one "rest" bucket. At T = 1 this is
    the exact KL of the two distributions coarsened to k + 1 outcomes (a lower bound of the full KL, equal when
    k = V). For T != 1 the teacher's tail logits are unknown; we assume the tail mass is spread uniformly over
    the V - k tokens it covers, so the tempered rest bucket has log-mass
    ``log(V - k) + (tail_logprob - log(V - k)) / T`` before renormalisation. The student's rest bucket is its
    exact tempered mass outside the teacher's top-k.
  * ``"renormalize"``: both distributions are restricted to the teacher's top-k and renormalised there
    (DistillKit-style); the tail is dropped on purpose and the loss is exact for that restricted problem.

All tokens are rows: callers flatten `(B, T, V)` to `(N, V)` and pass `mask (N,)` (1 = real token). Means
are over unmasked rows; an all-masked batch yields 0 (not NaN).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Tail = Literal["bucket", "renormalize"]


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Compute in at least float32 (bf16/fp16 logits lose too much in log-softmax); keep float64."""
    return x if x.dtype == torch.float64 else x.float()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def kl_full(
    student_logits: torch.Tensor,  # (N, V)
    teacher_logits: torch.Tensor,  # (N, V)
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over unmasked rows. Gradient flows to the student only."""
    s_logp = F.log_softmax(_f32(student_logits) / temperature, dim=-1)
    t_logp = F.log_softmax(_f32(teacher_logits.detach()) / temperature, dim=-1)
    per_row = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return temperature**2 * _masked_mean(per_row, mask)


def topk_distributions(
    student_logits: torch.Tensor,  # (N, V)
    topk_ids: torch.Tensor,  # (N, k) int
    topk_logprobs: torch.Tensor,  # (N, k), teacher log-probs at T = 1
    tail_logprob: torch.Tensor | None,  # (N,), log teacher mass outside the top-k; None: derive from topk_logprobs
    temperature: float,
    tail: Tail = "bucket",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-distributions over the compared outcomes: `(N, k+1)` for bucket, `(N, k)` else.

    Both returned tensors are normalised log-probabilities; the teacher's is detached.
    """
    vocab = student_logits.shape[-1]
    k = topk_ids.shape[-1]
    t_lp = _f32(topk_logprobs.detach())
    s_scaled = _f32(student_logits) / temperature  # (N, V)
    s_top = s_scaled.gather(-1, topk_ids.long())  # (N, k)

    if tail == "renormalize":
        return F.log_softmax(t_lp / temperature, -1), F.log_softmax(s_top, -1)
    if tail != "bucket":
        raise ValueError(f"tail must be 'bucket' or 'renormalize', got {tail!r}")

    if tail_logprob is None:
        tail_logprob = torch.log1p(-t_lp.exp().sum(-1).clamp(max=1.0 - 1e-7))
    tail_lp = _f32(tail_logprob.detach()).to(t_lp.dtype)
    rest = vocab - k
    if rest > 0:
        # Uniform-tail assumption: each of the `rest` tokens has log-prob tail_lp - log(rest) at T = 1.
        log_rest = math.log(rest)
        t_tail_scaled = log_rest + (tail_lp - log_rest) / temperature  # (N,)
    else:
        t_tail_scaled = torch.full_like(tail_lp, -math.inf)
    t_all = torch.cat([t_lp / temperature, t_tail_scaled.unsqueeze(-1)], -1)  # (N, k+1)
    t_logp = torch.log_softmax(t_all, -1)

    # Student: exact tempered mass inside/outside the teacher's top-k.
    s_lse = torch.logsumexp(s_scaled, -1, keepdim=True)  # (N, 1)
    s_top_logp = s_top - s_lse  # (N, k)
    if rest > 0:
        inside = s_top_logp.exp().sum(-1).clamp(max=1.0)
        # log(1 - inside) loses precision when inside -> 1; floor keeps the gradient finite.
        s_tail_logp = torch.log((1.0 - inside).clamp_min(1e-12))
    else:
        s_tail_logp = torch.full_like(tail_lp, -math.inf)
    s_logp = torch.cat([s_top_logp, s_tail_logp.unsqueeze(-1)], -1)
    return t_logp, s_logp


def _kl_rows(t_logp: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """KL(t || s) per row; entries where the teacher has zero mass contribute exactly 0."""
    t_p = t_logp.exp()
    diff = torch.where(t_p > 0, t_logp - s_logp, torch.zeros_like(t_logp))
    return (t_p * diff).sum(-1)


def kl_topk(
    student_logits: torch.Tensor,  # (N, V)
    topk_ids: torch.Tensor,  # (N, k)
    topk_logprobs: torch.Tensor,  # (N, k)
    tail_logprob: torch.Tensor | None = None,  # (N,)
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,)
    tail: Tail = "bucket",
) -> torch.Tensor:
    """T^2 * KL over the teacher's top-k (+ tail handling, see module doc), mean over unmasked rows."""
    t_logp, s_logp = topk_distributions(student_logits, topk_ids, topk_logprobs, tail_logprob, temperature, tail)
    return temperature**2 * _masked_mean(_kl_rows(t_logp, s_logp), mask)


def hard_ce(
    student_logits: torch.Tensor,  # (N, V)
    labels: torch.Tensor,  # (N,)
    mask: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:
    """Cross-entropy with the ground-truth next token at T = 1, mean over unmasked rows."""
    per_row = F.cross_entropy(_f32(student_logits), labels.long(), reduction="none")
    return _masked_mean(per_row, mask)


def distill_loss(
    student_logits: torch.Tensor,  # (N, V)
    labels: torch.Tensor,  # (N,)
    *,
    alpha: float,
    temperature: float,
    mask: torch.Tensor | None = None,  # (N,)
    teacher_logits: torch.Tensor | None = None,  # (N, V)
    topk_ids: torch.Tensor | None = None,  # (N, k)
    topk_logprobs: torch.Tensor | None = None,  # (N, k)
    tail_logprob: torch.Tensor | None = None,  # (N,)
    tail: Tail = "bucket",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(loss, loss_soft, loss_hard)` with loss = alpha * loss_soft + (1 - alpha) * loss_hard.

    Give either full `teacher_logits` or the sparse `topk_ids`/`topk_logprobs` (+ `tail_logprob`).
    With alpha == 0 the teacher is not needed and loss_soft is reported as 0.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    loss_hard = hard_ce(student_logits, labels, mask)
    if alpha == 0.0:
        return loss_hard, torch.zeros_like(loss_hard), loss_hard
    if teacher_logits is not None:
        loss_soft = kl_full(student_logits, teacher_logits, temperature, mask)
    elif topk_ids is not None and topk_logprobs is not None:
        loss_soft = kl_topk(student_logits, topk_ids, topk_logprobs, tail_logprob, temperature, mask, tail)
    else:
        raise ValueError("distill_loss needs teacher_logits or topk_ids + topk_logprobs when alpha > 0")
    return alpha * loss_soft + (1.0 - alpha) * loss_hard, loss_soft, loss_hard
