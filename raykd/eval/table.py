"""The comparison table of `raykd distill`: teacher and students on held-out sequences and on the task suite.

    rows = [teacher_row(signals, params, gen.tokens_per_second),
            EvalRow("kd student", params, loss, math.exp(loss), agreement, tokens_per_s)]    # raykd/distill.py
    add_task_scores(rows, scores)            # task EM + retention columns (scores: raykd/eval/tasks.py)
    print(format_table(rows))
    print(format_task_table(scores))         # exact match and retention per difficulty level

Teacher numbers come through the Serve deployment (the same replicas that trained the student: a 70B
teacher is never loaded into the driver): held-out loss from the log-prob of the actual next token,
top-1 agreement from its top-1 id, generation speed from its `generate`. Students are small and are
evaluated in-process with the transformers backend, the same code the hf teacher backend runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from raykd.data.task_suite import TaskScore, retention
from raykd.signals import TeacherSignals


@dataclass
class EvalRow:
    model: str
    params: int
    heldout_loss: float
    perplexity: float
    top1_agreement: float  # fraction of positions where argmax equals the teacher's top-1 (1.0 for the teacher)
    gen_tokens_per_s: float
    task_em: float | None = None  # task-suite exact match over all scored levels
    task_retention: float | None = None  # task_em / the teacher's (1.0 for the teacher)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": float(v) for k, v in asdict(self).items() if k != "model" and v is not None}


def add_task_scores(rows: list[EvalRow], scores: dict[str, TaskScore], teacher: str = "teacher") -> None:
    """Fill `task_em` / `task_retention` of the rows whose model has a score."""
    ref = scores.get(teacher)
    for r in rows:
        if r.model in scores:
            r.task_em = scores[r.model].exact_match()
            r.task_retention = retention(scores[r.model], ref) if ref is not None else None


def teacher_row(signals: TeacherSignals, params: int, gen_tokens_per_s: float, name: str = "teacher",
                rows: np.ndarray | None = None) -> EvalRow:
    """`rows` (N,) bool: the positions that count (the data's loss mask, e.g. assistant tokens); None: all."""
    target = signals.target_logprob.astype(np.float64)
    loss = float(-np.mean(target[rows] if rows is not None else target))
    return EvalRow(name, params, loss, math.exp(loss), 1.0, gen_tokens_per_s)


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_table(rows: list[EvalRow]) -> str:
    tasks = any(r.task_em is not None for r in rows)
    header = f"{'model':<22}{'params':>12}{'held-out loss':>15}{'ppl':>10}{'top-1 agree':>13}{'gen tok/s':>11}"
    header += f"{'task EM':>9}{'retention':>11}" if tasks else ""
    lines = [header, "-" * len(header)]
    for r in rows:
        line = (f"{r.model:<22}{r.params:>12,}{r.heldout_loss:>15.4f}{r.perplexity:>10.2f}"
                f"{r.top1_agreement:>13.3f}{r.gen_tokens_per_s:>11.1f}")
        lines.append(line + (_cell(r.task_em, 9) + _cell(r.task_retention, 11) if tasks else ""))
    return "\n".join(lines)


def format_task_table(scores: dict[str, TaskScore], teacher: str = "teacher") -> str:
    """Exact match per level and overall for each model; retention = EM / `teacher`'s EM (nan: teacher at 0)."""
    levels = sorted({lv for s in scores.values() for lv in s.count})
    ref = scores.get(teacher)
    head = f"{'task suite':<22}" + "".join(f"{'EM L' + str(lv):>8}" for lv in levels) + f"{'EM':>8}"
    if ref is not None:
        head += "".join(f"{'ret L' + str(lv):>8}" for lv in levels) + f"{'ret':>8}"
    lines = [head, "-" * len(head)]
    for name, s in scores.items():
        row = f"{name:<22}" + "".join(f"{s.exact_match(lv):>8.3f}" for lv in levels) + f"{s.exact_match():>8.3f}"
        if ref is not None:
            row += "".join(f"{retention(s, ref, lv):>8.3f}" for lv in levels) + f"{retention(s, ref):>8.3f}"
        lines.append(row)
    counts = next(iter(scores.values())).count if scores else {}
    lines.append("test prompts per level: " + ", ".join(f"L{lv} {counts.get(lv, 0)}" for lv in levels) +
                 " (greedy decoding, exact match; raykd/data/task_suite.py)")
    return "\n".join(lines)
