"""The two distributions a KD loss compares: tempered teacher and student log-probabilities over the same outcomes.

    t_logp, s_logp = log_distributions(student_logits, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail,
                                       temperature=2.0, tail="bucket")          # (N, k+1) each

Two teacher forms:
- full logits `(N, V)`: both sides are softmax(z / T) over the V tokens;
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

`temperature` may be a float or a per-row tensor `(N,)` (dynamic temperature). Pure tensor math.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Tail = Literal["bucket", "renormalize"]


def f32(x: torch.Tensor) -> torch.Tensor:
    """Compute in at least float32 (bf16/fp16 logits lose too much in log-softmax); keep float64."""
    return x if x.dtype == torch.float64 else x.float()


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
    t_lp = f32(topk_logprobs.detach())
    s_scaled = f32(student_logits) / temperature  # (N, V)
    s_top = s_scaled.gather(-1, topk_ids.long())  # (N, k)

    if tail == "renormalize":
        return F.log_softmax(t_lp / temperature, -1), F.log_softmax(s_top, -1)
    if tail != "bucket":
        raise ValueError(f"tail must be 'bucket' or 'renormalize', got {tail!r}")

    if tail_logprob is None:
        tail_logprob = _tail_from_topk(t_lp)
    tail_lp = f32(tail_logprob.detach()).to(t_lp.dtype)
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


def _tail_from_topk(t_lp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum of the top-k probabilities) `(N,)` when the teacher gave no tail."""
    return torch.log1p(-t_lp.exp().sum(-1).clamp(max=1.0 - 1e-7))


def _row_temperature(temperature: float | torch.Tensor, ref: torch.Tensor) -> float | torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        if temperature.shape != ref.shape[:1]:
            raise ValueError(f"per-row temperature shape {tuple(temperature.shape)} != ({ref.shape[0]},)")
        if (temperature <= 0).any():
            raise ValueError("temperature must be > 0")
        return temperature.detach().to(f32(ref).dtype)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def log_distributions(
    student_logits: torch.Tensor,  # (N, V)
    *,
    teacher_logits: torch.Tensor | None = None,  # (N, V)
    topk_ids: torch.Tensor | None = None,  # (N, k)
    topk_logprobs: torch.Tensor | None = None,  # (N, k) teacher log-probs at T = 1
    tail_logprob: torch.Tensor | None = None,  # (N,) log teacher mass outside the top-k
    temperature: float | torch.Tensor = 1.0,  # float or (N,)
    tail: Tail = "bucket",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempered teacher and student log-distributions over the compared outcomes, `(N, C)` each.

    C = V for full logits; k + 1 (bucket) or k (renormalize) for top-k signals. The teacher's is
    detached. A per-row temperature is applied by pre-scaling the inputs of `topk_distributions`
    at T = 1, which reproduces its tempered (uniform-tail) bucket row by row.
    """
    T = _row_temperature(temperature, student_logits)
    col = T[:, None] if isinstance(T, torch.Tensor) else T
    if teacher_logits is not None:
        s_logp = F.log_softmax(f32(student_logits) / col, dim=-1)
        t_logp = F.log_softmax(f32(teacher_logits.detach()) / col, dim=-1)
        return t_logp, s_logp
    if topk_ids is None or topk_logprobs is None:
        raise ValueError("give teacher_logits or topk_ids + topk_logprobs")
    if not isinstance(T, torch.Tensor):
        return topk_distributions(student_logits, topk_ids, topk_logprobs, tail_logprob, T, tail)
    t_lp = f32(topk_logprobs.detach())
    if tail == "bucket":
        if tail_logprob is None:
            tail_logprob = _tail_from_topk(t_lp)
        tail_lp = f32(tail_logprob.detach()).to(t_lp.dtype)
        rest = student_logits.shape[-1] - topk_ids.shape[-1]
        if rest > 0:  # the same uniform-tail tempering as topk_distributions, per row
            log_rest = math.log(rest)
            tail_logprob = log_rest + (tail_lp - log_rest) / T
        else:
            tail_logprob = tail_lp
    return topk_distributions(f32(student_logits) / col, topk_ids, t_lp / col, tail_logprob, 1.0, tail)
