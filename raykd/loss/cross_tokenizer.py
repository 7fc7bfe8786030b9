"""The soft loss between a teacher and a student with different tokenizers, on aligned rows. Pure tensor math.

    rows = cross_soft_rows(student_rows, topk_ids, topk_logprobs, tail_logprob, vmap, only,
                           teacher_vocab=V_t, temperature=2.0, divergence="forward_kl", uld_weight=1.0)   # (M,)
    soft = cross_soft_loss(student_logits, t_rows, s_rows, ..., mask=mask, denominator=d)           # scalar

Inputs are the M aligned row pairs (raykd/data/token_alignment.py `aligned_rows`): student logits `(M, V_s)`,
the teacher's sparse top-k of the same rows `(M, k)` + tail `(M,)` at T = 1, `vmap (V_t,)` teacher id ->
student id of the same token (-1: none) and `only (V_s,)` = student tokens no teacher token maps onto.

Per row, two terms, both on the tempered distributions, the sum scaled by T^2 like every soft term:

1. Exact vocabulary mapping (raykd/loss/distributions.py's bucket, with the mapping). Outcomes: the teacher's
   top-k tokens that exist in the student vocabulary, plus one rest bucket. The teacher's rest bucket is its
   tail plus the mass of its top-k tokens the student does not have; the student's is its exact mass outside
   the mapped tokens. Tempering of the teacher's tail assumes it is spread uniformly over the V_t - n_mapped
   teacher tokens it covers (as the ordinary loss does with V - k). D is any divergence of
   raykd/loss/divergences.py.
2. ULD (Boizard et al. 2024, "Towards cross-tokenizer distillation: the universal logit distillation loss")
   on what the mapping cannot compare: the Wasserstein-1 distance between the sorted probability vectors of
   the teacher's unmapped top-k tokens and of the student-only tokens, zero-padded to equal length:
   sum_i |p_(i) - q_(i)|. Only the k largest student-only probabilities are compared one by one; the
   student-only mass beyond them is added whole (the teacher's side is 0 there), so with k = V_t this is
   exactly the padded sorted L1 of the two distributions. Weighted by `uld_weight`.

With the same tokenizer on both sides (vmap = identity, nothing student-only) term 2 is 0 and term 1 is the
ordinary top-k + bucket loss: the cross-tokenizer loss reproduces `raykd.loss.kd.soft_loss` (tested to 1e-6).
`mapping="none"` skips term 1 and compares everything with ULD (Boizard's original loss, tail as a bucket
neither side can sort: left out).
"""

from __future__ import annotations

import math

import torch

from raykd.loss.distributions import f32
from raykd.loss.divergences import divergence_rows, reduce_rows


def _column(temperature: float | torch.Tensor, ref: torch.Tensor) -> float | torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        if temperature.shape != ref.shape[:1] or (temperature <= 0).any():
            raise ValueError(f"per-row temperature must be > 0 with shape ({ref.shape[0]},)")
        return temperature.detach().to(ref.dtype)[:, None]
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def mapped_distributions(
    student_rows: torch.Tensor,  # (M, V_s) logits
    mapped_ids: torch.Tensor,  # (M, k) student ids of the teacher's top-k, -1 where the student lacks the token
    topk_logprobs: torch.Tensor,  # (M, k) teacher log-probs at T = 1
    tail_logprob: torch.Tensor,  # (M,)
    teacher_vocab: int,
    temperature: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-distributions `(M, k+1)` over the mapped tokens + rest bucket (term 1).

    Unmapped columns are -inf on both sides (they add exactly 0 to every divergence)."""
    s = f32(student_rows)
    col = _column(temperature, s)
    valid = mapped_ids >= 0
    t_lp = f32(topk_logprobs.detach())
    neg_inf = torch.full_like(t_lp, -math.inf)
    unmapped = torch.logsumexp(torch.where(valid, neg_inf, t_lp), -1)  # (M,) mass the student cannot name
    tail = torch.logaddexp(f32(tail_logprob.detach()).to(t_lp.dtype), unmapped)
    rest = (teacher_vocab - valid.sum(-1)).to(t_lp.dtype)  # teacher tokens the tail covers
    log_rest = torch.log(rest.clamp_min(1.0))
    tcol = col[:, 0] if isinstance(col, torch.Tensor) else col
    t_tail = torch.where(rest > 0, log_rest + (tail - log_rest) / tcol, torch.full_like(tail, -math.inf))
    t_logp = torch.log_softmax(torch.cat([torch.where(valid, t_lp / col, neg_inf), t_tail[:, None]], -1), -1)

    s_scaled = s / col
    s_lse = torch.logsumexp(s_scaled, -1, keepdim=True)
    s_top = torch.where(valid, s_scaled.gather(-1, mapped_ids.clamp_min(0)) - s_lse, neg_inf.to(s.dtype))
    inside = s_top.exp().sum(-1).clamp(max=1.0)
    s_tail = torch.log((1.0 - inside).clamp_min(1e-12))  # the same floor as the ordinary bucket
    return t_logp, torch.cat([s_top, s_tail[:, None]], -1)


def uld_rows(
    student_rows: torch.Tensor,  # (M, V_s) logits
    mapped_ids: torch.Tensor,  # (M, k), -1 = unmapped (those teacher entries are compared here)
    topk_logprobs: torch.Tensor,  # (M, k) at T = 1
    tail_logprob: torch.Tensor,  # (M,)
    only: torch.Tensor,  # (V_s,) bool: student tokens compared here
    teacher_vocab: int,
    temperature: float | torch.Tensor,
) -> torch.Tensor:
    """Term 2 per row `(M,)`: sum_i |p_(i) - q_(i)| over the sorted unmapped teacher and student-only
    probabilities (tempered), plus the student-only mass beyond the k compared."""
    s = f32(student_rows)
    col = _column(temperature, s)
    k = mapped_ids.shape[-1]
    # The teacher's tempered top-k + tail distribution (the ordinary bucket), its unmapped entries kept.
    t_lp = f32(topk_logprobs.detach())
    rest = teacher_vocab - k
    tcol = col[:, 0] if isinstance(col, torch.Tensor) else col
    tail = f32(tail_logprob.detach()).to(t_lp.dtype)
    if rest > 0:
        t_tail = math.log(rest) + (tail - math.log(rest)) / tcol
    else:
        t_tail = torch.full_like(tail, -math.inf)
    t_p = torch.softmax(torch.cat([t_lp / col, t_tail[:, None]], -1), -1)[:, :k]
    p = torch.where(mapped_ids < 0, t_p, torch.zeros_like(t_p)).sort(-1, descending=True).values  # (M, k)

    s_logp = torch.log_softmax(s / col, -1)
    s_logp = s_logp.masked_fill(~only.to(s.device)[None, :], -math.inf)
    width = min(k, s.shape[-1])
    q_top = s_logp.topk(width, -1).values.exp()  # (M, width), descending; 0 where fewer student-only tokens
    q_beyond = (s_logp.exp().sum(-1) - q_top.sum(-1)).clamp_min(0.0)
    if width < k:
        q_top = torch.cat([q_top, q_top.new_zeros(q_top.shape[0], k - width)], -1)
    return (p - q_top).abs().sum(-1) + q_beyond


def cross_soft_rows(
    student_rows: torch.Tensor,  # (M, V_s) logits of the aligned student rows
    topk_ids: torch.Tensor,  # (M, k) teacher ids
    topk_logprobs: torch.Tensor,  # (M, k) at T = 1
    tail_logprob: torch.Tensor,  # (M,)
    vmap: torch.Tensor,  # (V_t,) int64 teacher id -> student id, -1 none
    only: torch.Tensor,  # (V_s,) bool student-only tokens
    *,
    teacher_vocab: int,
    temperature: float | torch.Tensor = 1.0,  # float or (M,)
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_lambda: float = 0.1,
    uld_weight: float = 1.0,
    mapping: str = "exact",
) -> torch.Tensor:
    """T^2 * (D(term 1) + uld_weight * ULD(term 2)) per aligned row, `(M,)` (module doc).

    Models often have more output rows than their tokenizer has tokens (embeddings padded to a multiple):
    `vmap` / `only` shorter than the teacher's / student's vocabulary are padded (no twin; student-only)."""
    vmap, only = vmap.to(topk_ids.device), only.to(student_rows.device)
    width = max(teacher_vocab, int(topk_ids.max()) + 1 if topk_ids.numel() else 0)
    if vmap.shape[0] < width:
        vmap = torch.cat([vmap, vmap.new_full((width - vmap.shape[0],), -1)])
    if only.shape[0] < student_rows.shape[-1]:
        only = torch.cat([only, only.new_ones(student_rows.shape[-1] - only.shape[0])])
    mapped = vmap[topk_ids.long()]
    if mapping == "none":
        mapped = torch.full_like(mapped, -1)
    elif mapping != "exact":
        raise ValueError(f"mapping must be 'exact' or 'none', got {mapping!r}")
    rows = student_rows.new_zeros(student_rows.shape[0], dtype=f32(student_rows).dtype)
    if mapping == "exact":
        t_logp, s_logp = mapped_distributions(student_rows, mapped, topk_logprobs, tail_logprob, teacher_vocab,
                                              temperature)
        rows = rows + divergence_rows(divergence, t_logp, s_logp, beta=beta, skew_lambda=skew_lambda)
    if uld_weight > 0:
        only_t = only if mapping == "exact" else torch.ones_like(only)
        rows = rows + uld_weight * uld_rows(student_rows, mapped, topk_logprobs, tail_logprob, only_t,
                                            teacher_vocab, temperature)
    t2 = temperature.detach().to(rows.dtype) ** 2 if isinstance(temperature, torch.Tensor) else float(temperature) ** 2
    return rows * t2


def cross_soft_loss(
    student_logits: torch.Tensor,  # (N, V_s) all student rows of the batch
    t_rows: torch.Tensor,  # (M,) rows of the teacher signals
    s_rows: torch.Tensor,  # (M,) the student rows they are aligned with
    topk_ids: torch.Tensor,  # (N_t, k)
    topk_logprobs: torch.Tensor,  # (N_t, k)
    tail_logprob: torch.Tensor,  # (N_t,)
    vmap: torch.Tensor,
    only: torch.Tensor,
    *,
    teacher_vocab: int,
    temperature: float | torch.Tensor = 1.0,  # float or (N,) per student row
    mask: torch.Tensor | None = None,  # (N,)
    weights: torch.Tensor | None = None,  # (N,)
    denominator: float | None = None,
    **kwargs,
) -> torch.Tensor:
    """The soft term over all N student rows: aligned rows get `cross_soft_rows`, the others 0 (no teacher
    row predicts the same next text there); reduced like every row term (`reduce_rows`)."""
    s_rows, t_rows = s_rows.long(), t_rows.long()
    temp = temperature[s_rows] if isinstance(temperature, torch.Tensor) else temperature
    aligned = cross_soft_rows(student_logits[s_rows], topk_ids[t_rows], topk_logprobs[t_rows], tail_logprob[t_rows],
                              vmap, only, teacher_vocab=teacher_vocab, temperature=temp, **kwargs)
    rows = aligned.new_zeros(student_logits.shape[0]).index_put((s_rows,), aligned)
    return reduce_rows(rows, mask, weights, denominator)
