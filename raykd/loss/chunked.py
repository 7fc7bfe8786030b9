"""Memory-lean KD losses: the student's logits exist one chunk of rows at a time, never `(N, V)` at once.

Pure tensor math (no Ray, no I/O). Same values and gradients as raykd/loss/kd.py (tests/loss/test_chunked.py):

    loss, soft, hard = distill_loss_chunked(hidden, lm_head.weight, labels, alpha=0.5, temperature=2.0,
                                            topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, chunk_size=1024)
    loss = kl_full_chunked(s_hidden, s_weight, t_hidden, t_weight, temperature=2.0, chunk_size=1024)
    loss.backward()        # gradients reach `hidden` (hence the model) and `weight` (the lm_head)

Inputs are the final hidden states `(N, H)` (post-norm, what the lm_head sees) and the lm_head weight
`(V, H)` (no bias: Llama/Qwen/Mistral heads have none). As in Liger Kernel's fused linear losses, the
gradient is computed *during the forward*, chunk by chunk: per chunk of C rows the logits `(C, V)` are
formed, the wrapped loss from raykd.loss.kd is evaluated and differentiated w.r.t. those logits with
autograd, and the result is folded into `grad_hidden (N, H)` and `grad_weight (V, H)`; then the chunk is
freed. Backward only scales the stored gradients. Peak extra memory is O(C·V + N·H + V·H) instead of
several `(N, V)` float32 tensors (logits, log-softmax, probabilities and their gradients).

Why it is exact: every loss in raykd.loss.kd is a masked mean of independent per-row terms, so the full
loss is Σ_chunks mean_c · n_c / n with n_c the unmasked rows of chunk c, and so is its gradient. Any
row-wise loss with the `(logits, ..., mask=...) -> mean` convention can be wrapped with `chunked_linear_loss`
(new divergences included); a loss whose rows interact (e.g. batch statistics) cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from raykd.loss import kd
from raykd.loss.distributions import Tail

# fn(logits_chunk (C, V), mask_chunk (C,) | None, **row_tensors_chunk) -> (loss_mean, *aux_means)
RowLoss = Callable[..., tuple[torch.Tensor, ...]]


class _ChunkedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, fn, mask, chunk_size, row_kwargs, normalized, *row_tensors):
        n = hidden.shape[0]
        names = list(row_kwargs)
        weights = mask.to(torch.float64) if mask is not None else None
        total = float(weights.sum()) if weights is not None else float(n)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        # A bf16 lm_head (FSDP mixed precision) sums its gradient over chunks in float32, cast back in backward.
        acc_dtype = torch.float32 if weight.dtype in (torch.bfloat16, torch.float16) else weight.dtype
        grad_w = torch.zeros_like(weight, dtype=acc_dtype) if need_w else None
        sums: list[torch.Tensor] | None = None
        for lo in range(0, n, chunk_size):
            hi = min(n, lo + chunk_size)
            m_c = mask[lo:hi] if mask is not None else None
            n_c = float(weights[lo:hi].sum()) if weights is not None else float(hi - lo)
            if n_c == 0:
                continue  # all-masked chunk: contributes 0 to the loss and the gradient
            h_c = hidden[lo:hi]
            kwargs = {name: t[lo:hi] for name, t in zip(names, row_tensors)}
            with torch.enable_grad():
                logits = F.linear(h_c.detach(), weight.detach()).requires_grad_(need_h or need_w)  # (C, V)
                outs = fn(logits, m_c, **kwargs)
                # The chunk's share of the masked mean, or 1 when fn already divides by the whole's count.
                scale = 1.0 if normalized else n_c / max(total, 1.0)
                if need_h or need_w:
                    (g_logits,) = torch.autograd.grad(outs[0] * scale, logits)
                    g_logits = g_logits.to(weight.dtype)
                    if need_h:
                        # Detached operands: under enable_grad an in-place update with a grad-requiring
                        # operand would record a graph that keeps every chunk's (C, V) gradient alive.
                        grad_h[lo:hi] = g_logits @ weight.detach()  # (C, H)
                    if need_w:
                        grad_w.addmm_(g_logits.t().to(acc_dtype), h_c.detach().to(acc_dtype))  # (V, H)
            chunk = [o.detach() * scale for o in outs]
            sums = chunk if sums is None else [s + c for s, c in zip(sums, chunk)]
            del logits, outs
        if sums is None:  # everything masked: zeros shaped like the wrapped loss's outputs
            dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
            sums = [torch.zeros((), dtype=dtype) for _ in range(getattr(fn, "num_outputs", 1))]
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.num_row_tensors = len(row_tensors)
        ctx.mark_non_differentiable(*sums[1:])
        return tuple(sums)

    @staticmethod
    def backward(ctx, grad_loss, *_aux):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_loss.to(grad_w.dtype)).to(ctx.weight_dtype) if grad_w is not None else None
        return (gh, gw, None, None, None, None, None) + (None,) * ctx.num_row_tensors


def chunked_linear_loss(
    fn: RowLoss,
    hidden: torch.Tensor,  # (N, H)
    weight: torch.Tensor,  # (V, H)
    mask: torch.Tensor | None = None,  # (N,)
    chunk_size: int = 1024,
    num_outputs: int = 1,
    normalized: bool = False,
    **row_tensors: torch.Tensor,  # each (N, ...): sliced per chunk and passed to fn by name
) -> tuple[torch.Tensor, ...]:
    """`fn` applied to `hidden @ weight.T` in chunks of `chunk_size` rows; returns fn's outputs for all rows.

    The first output carries the gradient (to `hidden` and `weight`); the others are detached aux values.
    Chunk outputs are weighted by the chunk's share of the (masked) rows, or, with `normalized`, summed as
    they are: fn then divides its masked sums by the whole's count itself (raykd/train/chunked_objective.py).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, H) and weight (V, H) expected, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    n = hidden.shape[0]
    for name, t in row_tensors.items():
        if t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} rows, hidden has {n}")
    call = _with_outputs(fn, num_outputs)
    return _ChunkedLinearLoss.apply(hidden, weight, call, mask, chunk_size, dict.fromkeys(row_tensors), normalized,
                                    *row_tensors.values())


def _with_outputs(fn: RowLoss, k: int) -> RowLoss:
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        return out if isinstance(out, tuple) else (out,)

    call.num_outputs = k  # type: ignore[attr-defined]
    return call


# --------------------------------------------------------------------------------------------- losses
def distill_loss_chunked(
    student_hidden: torch.Tensor,  # (N, H)
    lm_head_weight: torch.Tensor,  # (V, H)
    labels: torch.Tensor,  # (N,)
    *,
    chunk_size: int = 1024,
    mask: torch.Tensor | None = None,  # (N,)
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`raykd.loss.kd.distill_loss` on `student_hidden @ lm_head_weight.T`, chunked: `(loss, loss_soft, loss_hard)`.

    `kwargs` are distill_loss's (alpha, temperature, topk_ids, topk_logprobs, tail_logprob, teacher_logits,
    tail, ...): tensors with N rows are sliced per chunk, everything else is passed through.
    """
    n = student_hidden.shape[0]
    rows = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n}
    fixed = {k: v for k, v in kwargs.items() if k not in rows}

    def fn(logits, m, labels, **row):
        return kd.distill_loss(logits, labels, mask=m, **fixed, **row)

    return chunked_linear_loss(fn, student_hidden, lm_head_weight, mask, chunk_size, 3, labels=labels, **rows)


def kl_topk_chunked(
    student_hidden: torch.Tensor,  # (N, H)
    lm_head_weight: torch.Tensor,  # (V, H)
    topk_ids: torch.Tensor,  # (N, k)
    topk_logprobs: torch.Tensor,  # (N, k)
    tail_logprob: torch.Tensor | None = None,  # (N,)
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,)
    tail: Tail = "bucket",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """`raykd.loss.kd.kl_topk` on `student_hidden @ lm_head_weight.T`, chunked."""
    rows = {"topk_ids": topk_ids, "topk_logprobs": topk_logprobs}
    if tail_logprob is not None:
        rows["tail_logprob"] = tail_logprob

    def fn(logits, m, **row):
        return kd.kl_topk(logits, temperature=temperature, mask=m, tail=tail, **row)

    return chunked_linear_loss(fn, student_hidden, lm_head_weight, mask, chunk_size, **rows)[0]


def kl_full_chunked(
    student_hidden: torch.Tensor,  # (N, H)
    student_weight: torch.Tensor,  # (V, H)
    teacher_hidden: torch.Tensor,  # (N, H_t)
    teacher_weight: torch.Tensor,  # (V, H_t)
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,  # (N,)
    chunk_size: int = 1024,
) -> torch.Tensor:
    """`raykd.loss.kd.kl_full` with both logits formed per chunk (teacher side without gradient)."""
    t_weight = teacher_weight.detach()

    def fn(logits, m, teacher_hidden):
        with torch.no_grad():
            t_logits = F.linear(teacher_hidden.detach(), t_weight)  # (C, V)
        return kd.kl_full(logits, t_logits, temperature, m)

    return chunked_linear_loss(fn, student_hidden, student_weight, mask, chunk_size, teacher_hidden=teacher_hidden)[0]
