"""Stage teachers: a domain teacher by continued pre-training (same tokenizer, cached), teacher-written answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raykd.config.pipeline import AdaptTeacherConfig, ResponsesConfig
from raykd.data.tasks import generate_math_problems


# --------------------------------------------------------------------------------------------- teachers
def test_adapted_teacher_keeps_the_tokenizer_lowers_domain_loss_and_is_cached(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from raykd.data.blocks import split_blocks, tokenize_blocks
    from raykd.models import model_fingerprint
    from raykd.pipeline.teachers import adapt_teacher

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    texts = ["\n\n".join(r.values()) for r in generate_math_problems(200, 1)]
    train, val = split_blocks(tokenize_blocks(texts, tok, 64), 0.1)
    cfg = AdaptTeacherConfig(steps=12, batch_size=8, lr=3e-3)
    path, record = adapt_teacher(str(tiny_teacher), model_fingerprint(str(tiny_teacher)), train, val, cfg, cache_dir=tmp_path)
    assert AutoTokenizer.from_pretrained(path).get_vocab() == tok.get_vocab()
    assert record["heldout_loss_after"] < record["heldout_loss_before"]
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    again, record2 = adapt_teacher(str(tiny_teacher), model_fingerprint(str(tiny_teacher)), train, val, cfg, cache_dir=tmp_path)
    assert again == path and record2 == record and (path / "model.safetensors").stat().st_mtime_ns == mtime
    other, _ = adapt_teacher(str(tiny_teacher), model_fingerprint(str(tiny_teacher)), train, val,
                             AdaptTeacherConfig(steps=1, batch_size=2), cache_dir=tmp_path)
    assert other != path


class _LocalHandle:
    """The Serve handle's `generate.remote(...).result()` shape over the real transformers backend."""

    def __init__(self, backend):
        outer = self

        class _Call:
            def remote(self, prompts, max_new_tokens, temperature=0.0):
                outer.calls += 1
                result = backend.generate(prompts, max_new_tokens, temperature)
                return type("R", (), {"result": lambda self: result})()

        self.calls = 0
        self.generate = _Call()


def test_teacher_responses_are_cut_cached_and_empty_ones_dropped(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from raykd.pipeline.teachers import _cut, teacher_responses
    from raykd.teacher.backend import Generation
    from raykd.teacher.hf_backend import HFTeacherBackend

    assert _cut("a = 3\n#### 3\nmore text", "####") == "a = 3\n#### 3" and _cut("abc", "####") == "abc"
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    handle = _LocalHandle(HFTeacherBackend(str(tiny_teacher), device="cpu"))
    recs = generate_math_problems(10, 2)
    cfg = ResponsesConfig(max_prompts=4, max_new_tokens=12, temperature=1.0, stop_after=None)
    path = teacher_responses(handle, tok, recs, cfg, "fp1", max_model_len=512, cache_dir=tmp_path)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert 1 <= len(rows) <= 4 and all(r["answer"] and r["question"] in {q["question"] for q in recs[:4]} for r in rows)
    calls = handle.calls
    assert teacher_responses(handle, tok, recs, cfg, "fp1", 512, cache_dir=tmp_path) == path and handle.calls == calls
    # A teacher that writes only newlines (what an undertrained one does greedily) is an error, not an empty set.
    newlines = Generation([np.array(tok.encode("\n\n\n\n"), np.int32)] * 2, 0.1)
    blank = type("H", (), {"generate": type("G", (), {"remote": lambda self, *a: type("R", (), {"result": lambda s: newlines})()})()})()
    with pytest.raises(RuntimeError, match="answered none of 2 prompts"):
        teacher_responses(blank, tok, recs, ResponsesConfig(max_prompts=2, max_new_tokens=4), "fp2", 512, cache_dir=tmp_path)
