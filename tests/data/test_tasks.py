"""Generated GSM8K-shaped math problems: the format, correct answers, deterministic per seed."""

from __future__ import annotations

import json
import re

from raykd.data.tasks import ensure_math_problems, generate_math_problems
from raykd.pipeline.eval import extract_answer


# --------------------------------------------------------------------------------------------- data
def test_generated_math_problems_are_gsm8k_shaped_and_correct(tmp_path):
    recs = generate_math_problems(300, seed=3)
    assert recs == generate_math_problems(300, seed=3) and recs != generate_math_problems(300, seed=4)
    for r in recs:
        assert set(r) == {"question", "answer"} and r["question"].endswith("?")
        *steps, last = r["answer"].split("\n")
        assert last == f"#### {extract_answer(r['answer'])}"
        for expr, value in re.findall(r"<<([^=]+)=(-?\d+)>>", r["answer"]):
            assert eval(expr) == int(value)  # noqa: S307 - digits and + - * / only
        final = re.findall(r"<<[^=]+=(-?\d+)>>", r["answer"])[-1]
        assert extract_answer(r["answer"]) == final and int(final) >= 0
    path = ensure_math_problems(tmp_path, 20, 5)
    assert path.name == "math-20-5.jsonl" and [json.loads(x) for x in path.read_text().splitlines()] == generate_math_problems(20, 5)
