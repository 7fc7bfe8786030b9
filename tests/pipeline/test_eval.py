"""The pipeline's evaluation math: GSM8K answers, the progress table's gain and forgetting, retention."""

from __future__ import annotations

import numpy as np
import pytest

from raykd.pipeline.eval import ModelEval, answers_match, extract_answer, progress_table, retention, retention_table


# --------------------------------------------------------------------------------------------- eval math
@pytest.mark.parametrize(
    "text, expected",
    [("3 + 4 = <<3+4=7>>7\n#### 7", "7"), ("#### 1,234", "1234"), ("####  $18", "18"), ("x\n#### -3.5 apples", "-3.5"),
     ("no answer line", None), ("#### \n", None)],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_answers_match_numerically():
    assert answers_match("18", "18.0") and answers_match("1234", "1234")
    assert not answers_match(None, "1") and not answers_match("2", "3") and not answers_match("1", None)


def _row(model, role, g, d, em=0.0, params=100, speed=50.0, top1=0.5) -> ModelEval:
    return ModelEval(model, role, model, params, g, d, top1, top1, em, speed)


def test_progress_table_gain_and_forgetting():
    rows = [_row("start", "student", 4.0, 6.0), _row("t", "teacher", 3.0, 5.0, top1=1.0), _row("s1", "student", 3.5, 5.0),
            _row("s2", "student", 3.8, 4.2)]
    lines = progress_table(rows).splitlines()
    assert lines[4].endswith("| +1.000 | -0.500 |")  # s1: domain 6.0 → 5.0, general 4.0 → 3.5
    assert lines[5].endswith("| +0.800 | +0.300 |")  # s2 against s1, not against the teacher row


def test_retention_directions():
    teacher = _row("teacher", "teacher", 2.0, 3.0, em=0.5, params=1000, speed=100.0, top1=1.0)
    student = _row("student", "student", 2.5, 3.0, em=0.25, params=250, speed=300.0, top1=0.6)
    r = {name: ratio for name, _, _, ratio in retention(teacher, student)}
    assert r["general perplexity"] == pytest.approx(np.exp(2.0) / np.exp(2.5))  # lower is better: teacher / student
    assert r["domain loss"] == pytest.approx(1.0)
    assert r["exact match"] == pytest.approx(0.5) and r["parameters"] == pytest.approx(0.25)
    assert r["generation tok/s"] == pytest.approx(3.0) and r["top-1 agreement (domain)"] == pytest.approx(0.6)
    zero = _row("t0", "teacher", 2.0, 3.0, em=0.0)
    assert {n: x for n, _, _, x in retention(zero, student)}["exact match"] is None
    assert "| exact match | 0.000 | 0.250 | n/a |" in retention_table(zero, student)
