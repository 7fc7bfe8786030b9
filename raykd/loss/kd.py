"""The knowledge-distillation loss over rows: pure tensor math, no Ray, no MLflow, no I/O.

    loss, soft, hard = distill_loss(student_logits, labels, alpha=0.5, temperature=2.0,
                                    topk_ids=ids, topk_logprobs=lp, tail_logprob=tail)       # every caller
    soft = soft_loss(student_logits, topk_ids=ids, ..., divergence="jsd", beta=0.5, temperature=T)

    L = alpha * L_soft + (1 - alpha) * L_hard
    L_soft = T^2 * D(p_teacher^T, p_student^T),   p^T = softmax(z / T)     (D = forward KL by default)
    L_hard = CE(student logits at T = 1, ground-truth next tokens)

`distill_loss` is the one row-level loss of raykd: the training objective (raykd/loss/objective.py, through
raykd/loss/row_loss.py), its chunked form (raykd/loss/chunked.py) and masked-LM distillation all call it.
The teacher is given as full logits `(N, V)` or as top-k log-probs at T = 1 with their tail
(raykd/loss/distributions.py); D is any divergence of raykd/loss/divergences.py.

All tokens are rows: callers flatten `(B, T, V)` to `(N, V)` and pass `mask (N,)` (1 = real token) and
optionally per-row `weights (N,)`. Rows are reduced as sum m w x / sum m; an all-masked batch yields 0
(not NaN). `temperature` is a float or a per-row tensor `(N,)` (dynamic temperature). Training passes
`denominator` (raykd/loss/divergences.py `reduce_rows`): the sum is then divided by the unmasked rows of the
whole global batch, so micro-batches and workers add up to one token-normalised loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from raykd.loss.distributions import Tail, f32, log_distributions
from raykd.loss.divergences import divergence_rows, reduce_rows


def hard_ce(
    student_logits: torch.Tensor,  # (N, V)
    labels: torch.Tensor,  # (N,)
    mask: torch.Tensor | None = None,  # (N,)
    weights: torch.Tensor | None = None,  # (N,)
    denominator: float | None = None,  # rows to divide by (reduce_rows); None: these rows' unmasked count
) -> torch.Tensor:
    """Cross-entropy with the ground-truth next token at T = 1, reduced over rows with mask and weights."""
    per_row = F.cross_entropy(f32(student_logits), labels.long(), reduction="none")
    return reduce_rows(per_row, mask, weights, denominator)


def soft_loss(
    student_logits: torch.Tensor,  # (N, V)
    *,
    divergence: str = "forward_kl",
    temperature: float | torch.Tensor = 1.0,  # float or (N,)
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    mask: torch.Tensor | None = None,  # (N,)
    weights: torch.Tensor | None = None,  # (N,)
    teacher_logits: torch.Tensor | None = None,  # (N, V)
    topk_ids: torch.Tensor | None = None,  # (N, k)
    topk_logprobs: torch.Tensor | None = None,  # (N, k)
    tail_logprob: torch.Tensor | None = None,  # (N,)
    tail: Tail = "bucket",
    denominator: float | None = None,  # rows to divide by (reduce_rows); None: these rows' unmasked count
) -> torch.Tensor:
    """T_i^2-scaled divergence, reduced over rows with `mask` and `weights`. Scalar; gradient to the student only."""
    t_logp, s_logp = log_distributions(
        student_logits, teacher_logits=teacher_logits, topk_ids=topk_ids, topk_logprobs=topk_logprobs,
        tail_logprob=tail_logprob, temperature=temperature, tail=tail,
    )
    rows = divergence_rows(divergence, t_logp, s_logp, beta=beta, skew_lambda=skew_lambda)
    if isinstance(temperature, torch.Tensor):
        rows = rows * temperature.detach().to(rows.dtype) ** 2
    else:
        rows = rows * float(temperature) ** 2
    return reduce_rows(rows, mask, weights, denominator)


def kl_full(
    student_logits: torch.Tensor,  # (N, V)
    teacher_logits: torch.Tensor,  # (N, V)
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over unmasked rows (`soft_loss` with full logits)."""
    return soft_loss(student_logits, teacher_logits=teacher_logits, temperature=temperature, mask=mask)


def kl_topk(
    student_logits: torch.Tensor,  # (N, V)
    topk_ids: torch.Tensor,  # (N, k)
    topk_logprobs: torch.Tensor,  # (N, k)
    tail_logprob: torch.Tensor | None = None,  # (N,)
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,)
    tail: Tail = "bucket",
) -> torch.Tensor:
    """T^2 * KL over the teacher's top-k + tail (raykd/loss/distributions.py), mean over unmasked rows."""
    return soft_loss(student_logits, topk_ids=topk_ids, topk_logprobs=topk_logprobs, tail_logprob=tail_logprob,
                     temperature=temperature, mask=mask, tail=tail)


def distill_loss(
    student_logits: torch.Tensor,  # (N, V)
    labels: torch.Tensor,  # (N,)
    *,
    alpha: float,
    temperature: float | torch.Tensor | Callable[[], float | torch.Tensor],  # float, (N,), or computed (below)
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    mask: torch.Tensor | None = None,  # (N,)
    weights: torch.Tensor | None = None,  # (N,)
    teacher_logits: torch.Tensor | None = None,  # (N, V)
    topk_ids: torch.Tensor | None = None,  # (N, k)
    topk_logprobs: torch.Tensor | None = None,  # (N, k)
    tail_logprob: torch.Tensor | None = None,  # (N,)
    tail: Tail = "bucket",
    return_temperature: bool = False,
    denominator: float | None = None,  # rows to divide by (reduce_rows); None: these rows' unmasked count
) -> tuple[torch.Tensor, ...]:
    """`(loss, loss_soft, loss_hard)` with loss = alpha * loss_soft + (1 - alpha) * loss_hard.

    Give either full `teacher_logits` or the sparse `topk_ids`/`topk_logprobs` (+ `tail_logprob`): the soft
    term is then computed (and reported) at every alpha. Without a teacher alpha must be 0; loss_soft is 0.
    `temperature` may be a function of nothing, called after the hard term and before the soft one (dynamic
    temperature: raykd/loss/row_loss.py); `return_temperature` appends the temperature used. `denominator`
    divides the masked sums instead of the rows' own unmasked count (a global batch's tokens: reduce_rows).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not callable(temperature) and not isinstance(temperature, torch.Tensor) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    loss_hard = hard_ce(student_logits, labels, mask, weights, denominator)
    if teacher_logits is None and (topk_ids is None or topk_logprobs is None):
        if alpha != 0.0:
            raise ValueError("distill_loss needs teacher_logits or topk_ids + topk_logprobs when alpha > 0")
        out = (loss_hard, torch.zeros_like(loss_hard), loss_hard)
        return out + ((temperature() if callable(temperature) else temperature),) if return_temperature else out
    if callable(temperature):
        temperature = temperature()
    loss_soft = soft_loss(
        student_logits, divergence=divergence, temperature=temperature, beta=beta, skew_lambda=skew_lambda,
        mask=mask, weights=weights, teacher_logits=teacher_logits, topk_ids=topk_ids, topk_logprobs=topk_logprobs,
        tail_logprob=tail_logprob, tail=tail, denominator=denominator,
    )
    out = (alpha * loss_soft + (1.0 - alpha) * loss_hard, loss_soft, loss_hard)
    return out + (temperature,) if return_temperature else out
