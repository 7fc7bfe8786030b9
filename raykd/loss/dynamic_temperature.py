"""Dynamic temperature: one temperature per token, set by how hard that token is. Pure tensor math.

    d = entropy_difficulty(topk_logprobs, tail_logprob, vocab_size)    # (N,) in [0, 1], or
    d = disagreement_difficulty(t_logp, s_logp)                         # from (N, C) log-dists at T = 1
    T = token_temperature(d, t_min=1.0, t_max=4.0)                      # (N,)
    loss = soft_loss(student_logits, ..., temperature=T)                # rows scaled by T_i^2

The rule maps a difficulty score d_i in [0, 1] linearly into the bounds [t_min, t_max]:

    T_i = t_min + (t_max - t_min) * d_i

    rule "entropy":       d_i = 1 - H(p_i) / log V      teacher confidence (top-k: uniform-tail entropy estimate)
    rule "disagreement":  d_i = TVD(p_i, q_i) = 1/2 sum |p_i - q_i|   student-teacher disagreement

Both scores are computed at T = 1 and detached: the temperature is a target-shaping choice, not a
parameter the student can move to lower its loss.

Why these directions. A confident teacher row (low entropy) has almost all its mass on one token, so
at a fixed T its "dark knowledge" (the ranking of the other tokens) barely reaches the student; a
higher T exposes it, while an already flat row is left near t_min instead of being flattened into
noise (the sharpness-matching argument of dynamic-temperature KD, Wei et al. 2024). Under the
disagreement rule, tokens the student gets most wrong get the softest targets: the student first
matches their coarse shape (a curriculum on hard tokens), and tokens it already matches keep sharp,
informative targets.

`temperature_summary` gives the percentiles that the training loop logs to MLflow; the histogram of
all per-token temperatures of a run is drawn by raykd/train/ at the end of training.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def entropy_difficulty(
    t_logp: torch.Tensor,  # (N, C) teacher log-probs at T = 1: the full distribution, or its top-k
    tail_logprob: torch.Tensor | None = None,  # (N,) log mass outside the top-k (top-k signals)
    vocab_size: int | None = None,  # V, needed with tail_logprob
) -> torch.Tensor:
    """Teacher confidence 1 - H(p) / log V per row, in [0, 1] (detached).

    Full distribution (no tail): exact entropy over its C = V outcomes. Top-k signals: the k kept
    log-probs plus the tail mass m spread uniformly over the V - k other tokens (the model raykd/loss/distributions.py
    uses), H = -sum_topk p log p - m log(m / (V - k)). Using the k + 1 bucket distribution instead would
    make a flat teacher look confident (its tail bucket holds almost all the mass).
    """
    t_logp = t_logp.detach().float() if t_logp.dtype != torch.float64 else t_logp.detach()
    t_p = t_logp.exp()
    entropy = -(t_p * torch.where(t_p > 0, t_logp, torch.zeros_like(t_logp))).sum(-1)
    outcomes = t_logp.shape[-1]
    if tail_logprob is not None:
        if vocab_size is None:
            raise ValueError("entropy from top-k signals needs vocab_size")
        rest = vocab_size - outcomes
        tail = tail_logprob.detach().to(t_logp.dtype)
        if rest > 0:
            mass = tail.exp()
            entropy = entropy - torch.where(mass > 0, mass * (tail - math.log(rest)), torch.zeros_like(mass))
        outcomes = vocab_size
    if outcomes < 2:
        return torch.ones_like(entropy)
    return (1.0 - entropy / math.log(outcomes)).clamp(0.0, 1.0)


def disagreement_difficulty(t_logp: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """TVD(p, q) = 1/2 sum |p - q| per row over the compared outcomes at T = 1, in [0, 1] (detached).

    Over top-k + tail buckets this is the TVD of the coarsened distributions (a lower bound of the full one).
    """
    return (0.5 * (t_logp.detach().exp() - s_logp.detach().exp()).abs().sum(-1)).clamp(0.0, 1.0)


def token_temperature(difficulty: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """Per-row temperature `(N,)`: t_min + (t_max - t_min) * difficulty (module doc)."""
    if not 0 < t_min <= t_max:
        raise ValueError(f"need 0 < t_min <= t_max, got {t_min}, {t_max}")
    return t_min + (t_max - t_min) * difficulty.clamp(0.0, 1.0)


def temperature_summary(temperatures: np.ndarray, prefix: str = "temperature") -> dict[str, float]:
    """Mean and 5/50/95th percentiles of the per-token temperatures of the rows given."""
    t = np.asarray(temperatures, np.float64)
    if t.size == 0:
        return {}
    p5, p50, p95 = np.percentile(t, [5, 50, 95])
    return {f"{prefix}_mean": float(t.mean()), f"{prefix}_p05": float(p5), f"{prefix}_p50": float(p50),
            f"{prefix}_p95": float(p95)}
