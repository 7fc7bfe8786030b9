"""The comparison table of `raykd distill`: teacher and students on held-out sequences.

    rows = [teacher_row(signals, params, gen.tokens_per_second),
            EvalRow("kd student", params, loss, math.exp(loss), agreement, tokens_per_s)]    # raykd/distill.py
    print(format_table(rows))

Teacher numbers come through the Serve deployment (the same replicas that trained the student: a 70B
teacher is never loaded into the driver): held-out loss from the log-prob of the actual next token,
top-1 agreement from its top-1 id, generation speed from its `generate`. Students are small and are
evaluated in-process with the transformers backend, the same code the hf teacher backend runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from raykd.signals import TeacherSignals


@dataclass
class EvalRow:
    model: str
    params: int
    heldout_loss: float
    perplexity: float
    top1_agreement: float  # fraction of positions where argmax equals the teacher's top-1 (1.0 for the teacher)
    gen_tokens_per_s: float

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": float(v) for k, v in asdict(self).items() if k != "model"}


def teacher_row(signals: TeacherSignals, params: int, gen_tokens_per_s: float, name: str = "teacher",
                rows: np.ndarray | None = None) -> EvalRow:
    """`rows` (N,) bool: the positions that count (the data's loss mask, e.g. assistant tokens); None: all."""
    target = signals.target_logprob.astype(np.float64)
    loss = float(-np.mean(target[rows] if rows is not None else target))
    return EvalRow(name, params, loss, math.exp(loss), 1.0, gen_tokens_per_s)


def format_table(rows: list[EvalRow]) -> str:
    header = f"{'model':<22}{'params':>12}{'held-out loss':>15}{'ppl':>10}{'top-1 agree':>13}{'gen tok/s':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.model:<22}{r.params:>12,}{r.heldout_loss:>15.4f}{r.perplexity:>10.2f}"
            f"{r.top1_agreement:>13.3f}{r.gen_tokens_per_s:>11.1f}"
        )
    return "\n".join(lines)
