"""The comparison table: task-suite columns and the per-level exact-match / retention block."""

import math

from raykd.data.task_suite import Problem, TaskScore, score_completions
from raykd.eval.table import EvalRow, add_task_scores, format_table, format_task_table


def _scores():
    items = [Problem(1, "-", 99_999_999, 7, width=8), Problem(1, "-", 99_999_999, 42, width=8),
             Problem(2, "-", 99_999_999, 4719, width=8), Problem(2, "-", 99_999_999, 1234, width=8)]
    right = [p.answer + "\n" for p in items]
    return {
        "teacher": score_completions(items, right),
        "kd student": score_completions(items, right[:3] + ["99998766\n"]),  # last digit wrong
        "hard-label student": score_completions(items, [right[0], "9999\n", "x", ""]),
    }


def test_task_columns_and_retention():
    scores = _scores()
    rows = [EvalRow(name, 10, 2.0, math.exp(2.0), 0.5, 100.0) for name in ("teacher", "kd student", "hard-label student")]
    assert "task EM" not in format_table(rows)  # no scores: the table keeps its old columns
    add_task_scores(rows, scores)
    assert [(r.task_em, r.task_retention) for r in rows] == [(1.0, 1.0), (0.75, 0.75), (0.25, 0.25)]
    table = format_table(rows)
    assert "task EM" in table and "retention" in table
    assert table.splitlines()[3].rstrip().endswith("0.750      0.750")
    assert rows[1].as_metrics("kd")["kd_task_em"] == 0.75
    assert "kd_task_em" not in EvalRow("x", 1, 1.0, 1.0, 1.0, 1.0).as_metrics("kd")  # absent, not nan

    block = format_task_table(scores).splitlines()
    assert block[0].split() == ["task", "suite", "EM", "L1", "EM", "L2", "EM", "ret", "L1", "ret", "L2", "ret"]
    assert block[4].split()[-6:] == ["0.500", "0.000", "0.250", "0.500", "0.000", "0.250"]  # hard: L1 1/2, L2 0/2
    assert "L1 2, L2 2" in block[-1]
    zero = format_task_table({"teacher": TaskScore({1: 0}, {1: 2}), "s": TaskScore({1: 1}, {1: 2})})
    assert "nan" in zero.splitlines()[3]  # nothing to retain: not a division by zero
