"""Data loading and blocking."""

import json

import numpy as np
import pytest

from raykd.config import ConfigError, DataConfig
from raykd.data.blocks import split_blocks, tokenize_blocks
from raykd.data.sources import load_texts


def test_sources(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world\n")
    assert load_texts(DataConfig(source=str(txt))) == ["hello world\n"]
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n\n" + json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    assert load_texts(DataConfig(source=str(jl), text_fields=["q", "a"])) == ["1+1?\n\n2", "2+2?\n\n4"]
    gen = load_texts(DataConfig(source="builtin", builtin_chars=2000))
    assert len(gen) == 1 and len(gen[0]) >= 1500


@pytest.mark.parametrize(
    "content, suffix, fields, needle",
    [
        ("", ".txt", ["text"], "is empty"),
        ("  \n", ".txt", ["text"], "is empty"),
        ("", ".jsonl", ["text"], "has no records"),
        ('{"text": "a"}\n{"txt": "b"}\n', ".jsonl", ["text"], ":2 has no field 'text'"),
        ('{"text": "a"}\nnot json\n', ".jsonl", ["text"], ":2 is not valid JSON"),
        ("x", ".csv", ["text"], "must be 'builtin'"),
    ],
)
def test_bad_data_names_file(tmp_path, content, suffix, fields, needle):
    p = tmp_path / f"d{suffix}"
    p.write_text(content)
    with pytest.raises(ConfigError, match="data.") as err:
        load_texts(DataConfig(source=str(p), text_fields=fields))
    assert needle in str(err.value) and str(p) in str(err.value)
    with pytest.raises(ConfigError, match="file not found"):
        load_texts(DataConfig(source=str(tmp_path / "missing.txt")))


def test_tokenize_and_split(tiny_teacher):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    blocks = tokenize_blocks(["the cat sat on the mat. " * 50, "a dog ran."], tok, 16)
    assert blocks.dtype == np.int32 and blocks.shape[1] == 16 and len(blocks) >= 3
    assert tok.eos_token_id in blocks  # documents are separated by EOS
    train, val = split_blocks(blocks, 0.25)
    assert len(train) + len(val) == len(blocks) and len(val) >= 1
    np.testing.assert_array_equal(val, blocks[len(train):])
    with pytest.raises(ConfigError, match="need at least 2"):
        split_blocks(blocks[:1], 0.5)
