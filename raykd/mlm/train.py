"""The masked-LM student's training loop and evaluation (in the driver; raykd/mlm/run.py runs the job).

    history = train_mlm_student(student, blocks, tokenizer, cfg, score)   # the loop alone (tests, benchmarks)
    metrics = evaluate_mlm(student, val_blocks, tokenizer, cfg, teacher_signals)

`score(inputs, positions, labels)` returns something with `.result()` -> TeacherSignals whose rows are
the masked positions (the Serve handle's `score.remote(..., positions=, labels=)`, or a local backend).
The loss of every step is the row-level loss of `raykd distill` (raykd/loss/row_loss.py) over those rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from raykd import console
from raykd.config.mlm import MLMDistillConfig
from raykd.console import Progress
from raykd.mlm.masking import distilbert_mask, special_ids

say = partial(console.say, scope="raykd.mlm")


def _masked_batches(blocks: np.ndarray, tok, cfg: MLMDistillConfig, seed: int, steps: int):
    """(inputs, selected, labels) per step: seeded row sampling and masking, identical for KD and baseline."""
    rng = np.random.default_rng([seed, 17])
    m = cfg.masking
    for _ in range(steps):
        batch = blocks[rng.integers(0, len(blocks), cfg.train.batch_size)]
        inputs, selected = distilbert_mask(batch, rng, mask_id=tok.mask_token_id, vocab_size=len(tok),
                                           special_ids=special_ids(tok), mask_prob=m.mask_prob,
                                           mask_token=m.mask_token, random_token=m.random_token)
        yield inputs, selected, batch[selected]


def request_signals(score, inputs, selected, labels):
    positions = [np.flatnonzero(row) for row in selected]
    per_seq = np.split(labels, np.cumsum([len(p) for p in positions])[:-1])
    return score(inputs, positions, per_seq)


def train_mlm_student(student, blocks: np.ndarray, tok, cfg: MLMDistillConfig,
                      score: Callable | None, logger: Any = None) -> list[dict[str, float]]:
    """Train `student` in place; `score=None` trains on hard labels only. Returns per-step metrics."""
    import torch

    from raykd.loss.row_loss import RowLoss
    from raykd.loss.schedules import lr_factor

    tc = cfg.train
    torch.set_num_threads(tc.torch_threads)
    opt = torch.optim.AdamW(student.parameters(), lr=tc.lr)
    # Linear warm-up, then linear decay to 5 % at the last step.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, tc.warmup_steps, s / tc.max_steps, floor=0.05, decay="linear"))
    row_loss = RowLoss(cfg.loss, tc.max_steps, use_teacher=score is not None)
    batches = _masked_batches(blocks, tok, cfg, cfg.seed, tc.max_steps)
    pending = None
    if score is not None:
        first = next(batches)
        pending = (first, request_signals(score, *first))
    history, progress = [], Progress(tc.max_steps)
    student.train()
    for step in range(tc.max_steps):
        if score is not None:  # the next batch's teacher request is in flight while this step runs
            (inputs, selected, labels), response = pending
            nxt = next(batches, None)
            pending = (nxt, request_signals(score, *nxt)) if nxt is not None else None
            signals = response.result()
        else:
            inputs, selected, labels = next(batches)
            signals = None
        logits = student(input_ids=torch.as_tensor(inputs, dtype=torch.long)).logits
        rows = logits[torch.as_tensor(selected)]  # (N, V): masked positions, sequence by sequence
        out = row_loss(step, rows, torch.as_tensor(labels, dtype=torch.long), signals)
        loss, metrics = out.loss, out.metrics
        if signals is not None:
            metrics["temperature"] = out.mean_temperature
        metrics.update(alpha=out.alpha if signals is not None else 0.0, lr=sched.get_last_lr()[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(metrics)
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.max_steps:
            window = history[-tc.log_every:]
            avg = {k: float(np.mean([m[k] for m in window if k in m])) for k in window[-1]}
            if logger is not None:
                logger.log(avg, step + 1)
            say(f"step {step + 1}/{tc.max_steps} loss {avg['loss']:.4f} (soft {avg['loss_soft']:.4f} hard "
                 f"{avg['loss_hard']:.4f}) {progress.rate_eta(step + 1, 'steps')}")
    student.eval()
    return history


def evaluate_mlm(student, blocks: np.ndarray, tok, cfg: MLMDistillConfig, teacher_signals) -> dict[str, float]:
    """Held-out masked-LM loss and top-1 agreement with the teacher at the same (seeded) masked positions."""
    import torch

    inputs, selected, labels = eval_batch(blocks, tok, cfg)
    with torch.inference_mode():
        rows = student(input_ids=torch.as_tensor(inputs, dtype=torch.long)).logits[torch.as_tensor(selected)].float()
    loss = float(torch.nn.functional.cross_entropy(rows, torch.as_tensor(labels, dtype=torch.long)))
    agree = float((rows.argmax(-1).numpy() == np.asarray(teacher_signals.topk_ids)[:, 0]).mean())
    return {"heldout_loss": loss, "perplexity": math.exp(loss), "top1_agreement": agree}


def eval_batch(blocks: np.ndarray, tok, cfg: MLMDistillConfig):
    val = blocks[: cfg.eval.max_sequences]
    rng = np.random.default_rng(1234)  # the same masked positions for every model
    m = cfg.masking
    inputs, selected = distilbert_mask(val, rng, mask_id=tok.mask_token_id, vocab_size=len(tok),
                                       special_ids=special_ids(tok), mask_prob=m.mask_prob, mask_token=m.mask_token,
                                       random_token=m.random_token)
    return inputs, selected, val[selected]
