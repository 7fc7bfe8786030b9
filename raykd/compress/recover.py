"""Healing a compressed model by a short distillation from the teacher (the Minitron recipe's second half).

    history = recover(student, teacher, blocks, RecoveryConfig(steps=60), seed=0)   # in place; losses per step

The teacher runs in the same process (the compression study's teacher is small; a big one would be served as
in `raykd distill`), full logits, the one KD loss of raykd (raykd/loss/kd.py: alpha x T^2 KL + (1 - alpha) CE).
Every recovered variant gets the same token budget: `steps` x `batch_size` blocks drawn (seeded) from the
training blocks. A magnitude-pruned student keeps its zeros (masks re-attached from them, raykd/compress/prune.py),
so recovery never undoes the sparsity it is healing; a factorised student trains its factors.
"""

from __future__ import annotations

import numpy as np
import torch

from raykd.compress.prune import keep_zeros, make_permanent
from raykd.loss.kd import distill_loss


def recover(student, teacher, blocks: np.ndarray, cfg, seed: int = 0, sparse: bool = False,
            on_step=None) -> list[float]:
    """Train `student` in place on `blocks` (M, L) token ids against `teacher`; cfg: RecoveryConfig.
    `sparse`: keep the student's zero weights at zero. Returns the loss of every step."""
    if sparse:
        keep_zeros(student)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    teacher.eval()
    student.train()
    losses = []
    try:
        for step in range(cfg.steps):
            idx = rng.choice(len(blocks), size=min(cfg.batch_size, len(blocks)), replace=False)
            ids = torch.tensor(np.asarray(blocks)[np.sort(idx)], dtype=torch.long)  # (b, L)
            with torch.no_grad():
                t_logits = teacher(input_ids=ids).logits[:, :-1]  # (b, L-1, V)
            s_logits = student(input_ids=ids).logits[:, :-1]
            vocab = s_logits.shape[-1]
            loss, _, _ = distill_loss(s_logits.reshape(-1, vocab), ids[:, 1:].reshape(-1), alpha=cfg.alpha,
                                      temperature=cfg.temperature, teacher_logits=t_logits.reshape(-1, vocab))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        student.eval()
        if sparse:
            make_permanent(student)
    return losses
