"""Small held-out sets cut from plain documents (pipeline evaluation, masked-LM), and TokenBlocks."""

import numpy as np
import pytest

from raykd.config import ConfigError
from raykd.data.blocks import TokenBlocks, split_blocks, tokenize_blocks


def test_tokenize_and_split(tiny_teacher):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    blocks = tokenize_blocks(["the cat sat on the mat. " * 50, "a dog ran."], tok, 16)
    assert blocks.dtype == np.int32 and blocks.shape[1] == 16 and len(blocks) >= 3
    train, val = split_blocks(blocks, 0.25)
    assert len(train) + len(val) == len(blocks) and len(val) == round(len(blocks) * 0.25)
    assert (val == blocks[-len(val):]).all()  # the tail is held out
    with pytest.raises(ConfigError, match="need at least 2"):
        split_blocks(blocks[:1], 0.5)


def test_token_blocks_slice_together():
    b = TokenBlocks(np.arange(12).reshape(3, 4), np.ones((3, 4), np.uint8), np.full((3, 4), 2.0), np.arange(3))
    part = b[1:]
    assert len(part) == 2 and part.ids[0, 0] == 4 and part.weight.shape == (2, 4) and list(part.index) == [1, 2]
