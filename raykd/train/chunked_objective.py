"""The training loss without `(tokens × vocab)` logits: raykd.loss.objective evaluated per chunk of sequences.

Used by raykd/train/loop.py when `signals.loss_chunk_size` is set:

    out = model(input_ids=ids, **CHUNKED_FORWARD_KWARGS)        # hidden states, no logits (logits_to_keep=[])
    loss, metrics = chunked_objective_loss(objective, lm_head.weight, step, out, ids, signals, weights, 1024,
                                           token_mask=m, denominator=d)    # d: raykd/train/student.py

The student's final hidden states `(B, L, H)` go through `raykd.loss.chunked.chunked_linear_loss`: whole
sequences of rows at a time (`chunk_size` rounded down to a multiple of L, at least one sequence), the
logits of a chunk are formed from the lm_head weight, `objective.compute_loss` runs on them exactly as it
does on a full batch, and the gradient w.r.t. that chunk's logits is folded into the hidden states' and
the lm_head's gradients before the next chunk. Every chunk divides its masked sums by the same denominator
(the global batch's share given by the training loop, else this batch's unmasked rows), so the chunks' losses
add up to the unchunked loss exactly, whatever the masks (divergence, CE, schedules, per-token temperature,
data weights, loss and prompt masks are all masked sums over rows); the feature, attention and adversarial
terms are not row-chunkable (learnable parts, discriminator steps) and DistillConfig rejects them together
with loss_chunk_size.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from raykd.loss.chunked import chunked_linear_loss
from raykd.loss.objective import ADDITIVE_METRICS

# Forward kwargs for HF causal LMs: all hidden states (the last is post-norm, what lm_head sees) and an
# empty logits slice, so the model itself never forms (B, L, V).
CHUNKED_FORWARD_KWARGS = {"output_hidden_states": True, "logits_to_keep": torch.empty(0, dtype=torch.long)}


def chunked_objective_loss(
    objective: Any,  # raykd.loss.objective.Objective
    lm_head_weight: torch.Tensor,  # (V, H)
    step: int,
    out: Any,  # model output with .hidden_states (last: (B, L, H))
    ids: torch.Tensor,  # (B, L)
    signals: Any,  # TeacherSignals of the batch or None
    token_weights: np.ndarray | torch.Tensor | None,  # (B, L) or None
    chunk_size: int,
    token_mask: np.ndarray | torch.Tensor | None = None,  # (B, L) aligned with ids, or None
    denominator: float | None = None,  # the global batch's rows per worker; None: this batch's unmasked rows
) -> tuple[torch.Tensor, dict[str, float]]:
    """`objective.compute_loss(step, out, ids, signals, token_weights, token_mask, denominator)`, logits per chunk."""
    hidden = out.hidden_states[-1]  # (B, L, H)
    b, width, h = hidden.shape
    if denominator is None:
        denominator = objective.count_rows((b, width), token_mask)
    rows_per_chunk = max(1, chunk_size // width) * width
    seq_of_row = torch.arange(b, device=hidden.device).repeat_interleave(width)  # (B*L,)
    parts: list[tuple[float, dict[str, float]]] = []
    before = len(objective.step_values)
    def chunk_loss(logits: torch.Tensor, _mask, seq: torch.Tensor) -> tuple[torch.Tensor]:
        b0, b1 = int(seq[0]), int(seq[-1]) + 1
        chunk_out = SimpleNamespace(logits=logits.view(b1 - b0, width, -1))  # (B_c, L, V)
        chunk_signals = signals.take_sequences(list(range(b0, b1))) if signals is not None else None
        chunk_weights = token_weights[b0:b1] if token_weights is not None else None
        chunk_mask = token_mask[b0:b1] if token_mask is not None else None
        loss, metrics = objective.compute_loss(step, chunk_out, ids[b0:b1], chunk_signals, chunk_weights,
                                               chunk_mask, denominator)
        parts.append(((b1 - b0) / b, metrics))
        return (loss,)

    (loss,) = chunked_linear_loss(chunk_loss, hidden.reshape(b * width, h), lm_head_weight, None, rows_per_chunk,
                                  normalized=True, seq=seq_of_row)
    # Metrics: loss terms are the chunks' shares of the whole (summed); others are weighted by the chunk's
    # share of the sequences (the percentiles become approximate).
    keys = {k for _, m in parts for k in m}
    metrics = {k: sum((1.0 if k in ADDITIVE_METRICS else share) * m.get(k, 0.0) for share, m in parts) for k in keys}
    metrics["loss"] = float(loss.detach())
    # compute_loss records (step, alpha, T) once per call: keep one entry for this step.
    new = objective.step_values[before:]
    if len(new) > 1:
        objective.step_values[before:] = [(new[0][0], new[0][1], float(np.mean([t for *_, t in new])))]
    return loss, metrics
