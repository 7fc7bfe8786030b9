"""Task-suite decoding through a Serve deployment gives the answers in-process decoding gives."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_served_greedy_completions_equal_in_process_ones(teacher_app, tiny_teacher):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raykd.data.task_suite import END, TaskSuite, model_completions, score_completions
    from raykd.eval.tasks import served_completions

    handle, _ = teacher_app
    items = TaskSuite().test_items(per_level=3)  # 12 problems, answers of 2..8 digits
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype="float32")
    served = served_completions(handle, tokenizer, items)
    local = model_completions(model, tokenizer, items)
    # The deployment decodes the whole budget; in-process decoding stops at the end marker: the answers agree.
    assert [c.split(END, 1)[0] for c in served] == [c.split(END, 1)[0] for c in local]
    assert any(c.split(END, 1)[0] for c in served)  # something was generated
    assert score_completions(items, served).count == {1: 3, 2: 3, 3: 3, 4: 3}
