"""Divergences between the teacher distribution p and the student distribution q, and the row reduction.

    rows = divergence_rows("jsd", t_logp, s_logp, beta=0.5)        # (N,) from two (N, C) log-distributions
    loss = reduce_rows(rows, mask, weights)                        # scalar

p = teacher, q = student, both tempered: p = softmax(z_t / T), q = softmax(z_s / T). Every divergence
is >= 0, is 0 when p == q, and its gradient flows to the student only.

    forward_kl        KL(p || q) = sum p (log p - log q)              mode-covering (the classic KD loss)
    reverse_kl        KL(q || p) = sum q (log q - log p)              mode-seeking (MiniLLM)
    skew_kl           KL(p || lam p + (1 - lam) q)                    DistiLLM's SKL; lam = skew_lambda
    skew_reverse_kl   KL(q || lam q + (1 - lam) p)                    DistiLLM's SRKL
    tvd               1/2 sum |p - q|                                 bounded by 1
    jsd               generalised Jensen-Shannon with beta, normalised (below)

Generalised JSD and its endpoints. TRL/GKD define, with m = beta p + (1 - beta) q,

    JSD_beta(p, q) = beta KL(p || m) + (1 - beta) KL(q || m),

which is 0 for every p, q at beta = 0 and at beta = 1 (m collapses onto q, resp. p): a loss that
silently stops teaching. Expanding near the endpoints, JSD_beta = beta KL(p||q) + O(beta^2) and
JSD_beta = (1 - beta) KL(q||p) + O((1 - beta)^2). raykd therefore uses the normalised divergence

    jsd(beta) = JSD_beta / (beta (1 - beta))        for 0 < beta < 1
    jsd(0)    = KL(p || q)   (forward KL)           = lim beta->0 of the above
    jsd(1)    = KL(q || p)   (reverse KL)           = lim beta->1 of the above

which is continuous on [0, 1] and keeps the gradient scale of a KL, so alpha needs no retuning when
beta moves. TRL's value is `beta * (1 - beta) * jsd(beta)` (e.g. 1/4 of ours at beta = 0.5). Near the
endpoints the small term is computed as log(m / q) = logaddexp(log(1 - beta), log(beta) + log p - log q)
rather than log m - log q, so it does not cancel catastrophically in float32.

The log-distributions come from raykd/loss/distributions.py (full logits, or top-k + tail bucket); the
soft loss of raykd/loss/kd.py scales each row by T_i^2 for every divergence, so gradients keep the same
magnitude across temperatures (Hinton et al.).

Reduction over rows: `sum_i m_i w_i d_i / sum_i m_i` with `mask m (N,)` (1 = real token) and
per-row `weights w (N,)` (feedback weights; default 1). Weights scale each row's loss as given (not
renormalised), so weight 0 removes a sample and 2 counts it double; an all-masked batch yields 0.
"""

from __future__ import annotations

import math

import torch

DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")

# Log-probabilities of outcomes with zero mass (-inf) are replaced by this floor before any
# arithmetic: their weight exp(floor) is exactly 0 in float32/64, and finite values keep
# autograd free of inf - inf = NaN in branches that torch.where discards.
_LOG_FLOOR = -1.0e4


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _floor(logp: torch.Tensor) -> torch.Tensor:
    return logp.clamp_min(_LOG_FLOOR)


def forward_kl_rows(t_logp: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, `(N, C)` log-distributions -> `(N,)`; outcomes with p = 0 add exactly 0."""
    t, s = _floor(t_logp), _floor(s_logp)
    return (t.exp() * (t - s)).sum(-1)


def reverse_kl_rows(t_logp: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per row; outcomes with q = 0 add exactly 0."""
    return forward_kl_rows(s_logp, t_logp)


def skew_kl_rows(t_logp: torch.Tensor, s_logp: torch.Tensor, lam: float) -> torch.Tensor:
    """KL(p || lam p + (1 - lam) q) per row (DistiLLM SKL); lam = 0 is forward KL, lam = 1 is 0."""
    t, s = _floor(t_logp), _floor(s_logp)
    # log(m / p) = logaddexp(log lam, log(1 - lam) + log q - log p): stable when lam -> 0 or 1.
    log_m_over_p = torch.logaddexp(torch.full_like(t, _log(lam)), _log(1.0 - lam) + s - t)
    return -(t.exp() * log_m_over_p).sum(-1)


def skew_reverse_kl_rows(t_logp: torch.Tensor, s_logp: torch.Tensor, lam: float) -> torch.Tensor:
    """KL(q || lam q + (1 - lam) p) per row (DistiLLM SRKL); lam = 0 is reverse KL."""
    return skew_kl_rows(s_logp, t_logp, lam)


def jsd_rows(t_logp: torch.Tensor, s_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Normalised generalised JSD per row (module doc): forward KL at beta = 0, reverse KL at beta = 1."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl_rows(t_logp, s_logp)
    if beta == 1.0:
        return reverse_kl_rows(t_logp, s_logp)
    # beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q, divided by beta (1 - beta):
    # KL(p || m) is skew KL with lam = beta, KL(q || m) skew reverse KL with lam = 1 - beta.
    return skew_kl_rows(t_logp, s_logp, beta) / (1.0 - beta) + skew_reverse_kl_rows(t_logp, s_logp, 1.0 - beta) / beta


def tvd_rows(t_logp: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """Total variation 1/2 sum |p - q| per row, in [0, 1]."""
    return 0.5 * (_floor(t_logp).exp() - _floor(s_logp).exp()).abs().sum(-1)


def divergence_rows(
    divergence: str,
    t_logp: torch.Tensor,  # (N, C) teacher log-distribution
    s_logp: torch.Tensor,  # (N, C) student log-distribution over the same outcomes
    *,
    beta: float = 0.5,
    skew_lambda: float = 0.1,
) -> torch.Tensor:
    """Per-row divergence `(N,)` named by `divergence` (one of DIVERGENCES)."""
    if divergence == "forward_kl":
        return forward_kl_rows(t_logp, s_logp)
    if divergence == "reverse_kl":
        return reverse_kl_rows(t_logp, s_logp)
    if divergence == "jsd":
        return jsd_rows(t_logp, s_logp, beta)
    if divergence in ("skew_kl", "skew_reverse_kl"):
        if not 0.0 <= skew_lambda < 1.0:
            raise ValueError(f"skew_lambda must be in [0, 1) (1 makes the divergence 0), got {skew_lambda}")
        fn = skew_kl_rows if divergence == "skew_kl" else skew_reverse_kl_rows
        return fn(t_logp, s_logp, skew_lambda)
    if divergence == "tvd":
        return tvd_rows(t_logp, s_logp)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


def reduce_rows(
    values: torch.Tensor,  # (N,)
    mask: torch.Tensor | None = None,  # (N,) 1 = real token
    weights: torch.Tensor | None = None,  # (N,) per-row loss weights
    denominator: float | None = None,  # unmasked rows the sum is divided by; None: these rows' own count
) -> torch.Tensor:
    """sum_i m_i w_i v_i / sum_i m_i (module doc); 0 when every row is masked.

    `denominator` replaces sum_i m_i: the training loop passes the unmasked rows of the whole global batch
    (all micro-batches of all workers, divided by the number of workers, whose gradients are averaged), so
    that the loss of a step is sum over the global batch / its tokens, not a mean of micro-batch means.
    Every row-level term of raykd is reduced here, so this is the one place that normalisation happens.
    """
    if weights is not None:
        values = values * weights.to(values.dtype)
    if denominator is not None:
        kept = values if mask is None else values * mask.to(values.dtype)
        return kept.sum() / (float(denominator) or 1.0)  # nothing unmasked anywhere: 0, not NaN
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)
