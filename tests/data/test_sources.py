"""Feedback-weighted samples: the jsonl weight column, per-token weights through tokenisation, errors."""

import json

import numpy as np
import pytest

from raykd.config import ConfigError, DataConfig, DistillConfig, load_config
from raykd.data.blocks import tokenize_weighted_blocks
from raykd.data.sources import load_weighted_texts


class _CharTokenizer:
    """One token per character (enough to check the per-token bookkeeping exactly)."""

    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_weights_follow_their_records_through_blocks(tmp_path):
    src = _jsonl(tmp_path / "d.jsonl", [{"text": "abc", "score": 2.0}, {"text": "defgh", "score": 0}, {"text": "ij", "score": 0.5}])
    texts, weights = load_weighted_texts(DataConfig(source=src, weight_field="score"))
    assert texts == ["abc", "defgh", "ij"] and weights == [2.0, 0.0, 0.5]
    blocks, w = tokenize_weighted_blocks(texts, weights, _CharTokenizer(), 4)
    # stream: a b c EOS | d e f g | h EOS i j | EOS (dropped)
    assert blocks.tolist() == [[97, 98, 99, 0], [100, 101, 102, 103], [104, 0, 105, 106]]
    assert w.tolist() == [[2, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0.5, 0.5]]
    same, none = tokenize_weighted_blocks(texts, None, _CharTokenizer(), 4)
    assert (same == blocks).all() and none is None


def test_no_weight_field_means_no_weights(tmp_path):
    src = _jsonl(tmp_path / "d.jsonl", [{"text": "abc", "score": 2.0}])
    assert load_weighted_texts(DataConfig(source=src))[1] is None


@pytest.mark.parametrize("bad,msg", [
    ({"text": "a"}, "has no field 'score'"),
    ({"text": "a", "score": -1}, "finite number >= 0"),
    ({"text": "a", "score": "high"}, "finite number >= 0"),
    ({"text": "a", "score": float("nan")}, "finite number >= 0"),
    ({"text": "a", "score": True}, "finite number >= 0"),
])
def test_bad_weights_fail_with_file_and_line(tmp_path, bad, msg):
    src = _jsonl(tmp_path / "d.jsonl", [{"text": "ok", "score": 1}, bad])
    with pytest.raises(ConfigError, match=msg) as e:
        load_weighted_texts(DataConfig(source=src, weight_field="score"))
    assert "d.jsonl:2" in str(e.value) and "data.weight_field" in str(e.value)


def test_weight_field_needs_jsonl():
    with pytest.raises(ConfigError, match="weight_field needs a .jsonl source"):
        load_config(DistillConfig, None, ["data.weight_field=score"])
    assert load_config(DistillConfig, None, ["data.source=x.jsonl", "data.weight_field=score"]).data.weight_field == "score"


def test_prepare_carries_weights(tmp_path, tiny_teacher):
    from raykd.train.prepare import prepare

    rows = [{"text": "the king is dead. long live the king. " * 8, "w": float(i % 3)} for i in range(40)]
    src = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_config(DistillConfig, None, [f"data.source={src}", "data.weight_field=w", "data.seq_len=32",
                                            f"teacher.path={tiny_teacher}", "student.num_layers=1"])
    prep = prepare(cfg)
    assert prep.train_weights.shape == prep.train.shape
    assert set(np.unique(prep.train_weights)) <= {0.0, 1.0, 2.0} and len(np.unique(prep.train_weights)) == 3


def test_shakespeare_source_is_the_packaged_text_after_the_teachers_part():
    from raykd.config.teacher import SHAKESPEARE_TEACHER_CHARS
    from raykd.data.sources import shakespeare_text

    whole = shakespeare_text("all")
    assert len(whole) == 1_115_394 and whole.startswith("First Citizen:")  # the packaged file, intact
    (text,), weights = load_weighted_texts(DataConfig(source="shakespeare"))
    assert weights is None and text == shakespeare_text("student")
    assert whole.index(text) == SHAKESPEARE_TEACHER_CHARS  # right after the teacher's part, no overlap
    (mixed,), _ = load_weighted_texts(DataConfig(source="shakespeare", task_fraction=0.2, builtin_seed=1))
    assert len(mixed) > len(text) * 1.2 and "99999999-" in mixed


def test_task_fraction_needs_one_text():
    with pytest.raises(ConfigError, match="task_fraction"):
        load_config(DistillConfig, None, ["data.source=x.jsonl", "data.task_fraction=0.2"])
