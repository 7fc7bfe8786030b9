"""Held-out next-token loss of an in-process causal LM: the one number every raykd table and sweep reports.

    loss, _ = heldout_loss(model, val)                          # val (M, L) int token blocks
    loss, agree = heldout_loss(model, val, teacher_top1)        # + top-1 agreement with the teacher
    loss, _ = heldout_loss(model, val.ids, mask=val.mask)        # chat data: assistant tokens only

Mean cross-entropy (nats) over the positions 0..L-2 of every block, predicting tokens 1..L-1: the rows of
raykd/signals/teacher_signals.py, so `teacher_top1` (N,) is `signals.topk_ids[:, 0]` of the same blocks. With
`mask` (M, L) (the data's loss mask, raykd/data/records.py) only the rows whose label token is trained count:
for chat data the assistant tokens, as in training.
Runs in batches of 16 under inference mode and leaves the model in the mode it found it in. Pure torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def heldout_loss(
    model,  # causal LM: model(input_ids=(b, L)).logits -> (b, L, V)
    blocks: np.ndarray,  # (M, L) token ids
    teacher_top1: np.ndarray | None = None,  # (M * (L - 1),) the teacher's most likely next tokens
    batch_size: int = 16,
    mask: np.ndarray | None = None,  # (M, L) 1 = token counted (its prediction is scored)
) -> tuple[float, float | None]:
    """(mean next-token loss, fraction of positions whose argmax is the teacher's top-1, or None)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    total, agree, count, seen = 0.0, 0, 0, 0
    try:
        with torch.inference_mode():
            for i in range(0, len(blocks), batch_size):
                # A copy: object-store arrays are read-only.
                ids = torch.tensor(np.asarray(blocks[i : i + batch_size]), dtype=torch.long, device=device)
                logits = model(input_ids=ids).logits[:, :-1].float()  # (b, L-1, V)
                flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
                labels = ids[:, 1:].reshape(-1)
                keep = np.ones(len(labels), bool)
                if mask is not None:
                    keep = np.asarray(mask[i : i + batch_size])[:, 1:].reshape(-1) > 0
                    rows = torch.as_tensor(keep, device=device)
                    flat, labels = flat[rows], labels[rows]
                total += F.cross_entropy(flat, labels, reduction="sum").item()
                if teacher_top1 is not None:
                    top1 = teacher_top1[seen : seen + len(keep)][keep]
                    agree += int((flat.argmax(-1).cpu().numpy() == top1).sum())
                seen += len(keep)
                count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / max(1, count), (agree / max(1, count) if teacher_top1 is not None else None)
