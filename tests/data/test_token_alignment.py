"""Alignment of two tokenizations of the same text by byte offsets, and the exact vocabulary mapping."""

import numpy as np
import pytest

from raykd.data.token_alignment import (
    aligned_rows, aligned_spans, byte_decoder, byte_ends, student_only, token_bytes, tokenizer_scheme,
    unwritable_tokens, vocab_bytes, vocab_map,
)

ADVERSARIAL = [
    "plain words, then   runs of   spaces\n\n\n\tand tabs\t\t",
    "café naïve résumé — “quotes” ‘single’ …",
    "日本語のテキストと中文字符 mixed with ascii",
    "emoji 🙂🙃 flags 🇫🇷 family 👨‍👩‍👧 zwj",
    "combining e\u0301 a\u0308 and NBSP\u00a0here\u200b zero-width",
    "    \n   \n",
    "x",
    "numbers 1234567890 3.14159 -42 1e-9",
]


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture(scope="module")
def tokenizers():
    """Two byte-level BPEs of different sizes (hence different merges) trained offline on the same text."""
    from raykd.data.corpus import generate_corpus
    from raykd.teacher.tiny_model import train_tokenizer

    text = generate_corpus(30_000, 0) + "".join(ADVERSARIAL) * 3
    return (train_tokenizer(text, vocab_size=600, max_length=512),
            train_tokenizer(text, vocab_size=300, max_length=512, split_digits=True))


def test_byte_decoder_is_a_bijection_onto_bytes():
    table = byte_decoder()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert token_bytes("\u0120the", "byte_level") == b" the"
    assert token_bytes("\u2581the", "sentencepiece") == b" the"
    assert token_bytes("<0xE6>", "sentencepiece") == b"\xe6"
    assert token_bytes("日", "byte_level") is None  # not a byte-level string


def test_hand_made_boundaries():
    # teacher "ab|c|d e", student "a|bc|d| e": common boundaries after "abc" (3) and "abcd" (4)
    t = [b"ab", b"c", b"d e"]
    s = [b"a", b"bc", b"d", b" e"]
    t_ends, s_ends = byte_ends(t), byte_ends(s)
    assert t_ends.tolist() == [2, 3, 6] and s_ends.tolist() == [1, 3, 4, 6]
    t_rows, s_rows = aligned_rows(t_ends, s_ends)
    assert t_rows.tolist() == [1] and s_rows.tolist() == [1]  # both have read "abc"; "ab"/"a" never agree
    assert aligned_spans(t_ends, s_ends).tolist() == [[0, 2, 0, 2], [2, 3, 2, 4]]
    # a sequence that begins inside the other's text: only bytes both cover are in a span
    assert aligned_spans(byte_ends([b"c", b"d e"], start=2), s_ends, t_start=2).tolist() == [[1, 2, 2, 4]]


def test_zero_byte_tokens_use_the_later_row():
    t_ends = byte_ends([b"a", b"", b"b", b"c"])  # an empty token repeats boundary 1
    s_ends = byte_ends([b"a", b"b", b"c"])
    t_rows, s_rows = aligned_rows(t_ends, s_ends)
    assert t_rows.tolist() == [1, 2] and s_rows.tolist() == [0, 1]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_alignment_on_adversarial_text(tokenizers, text):
    tok_t, tok_s = tokenizers
    t_bytes, s_bytes = vocab_bytes(tok_t), vocab_bytes(tok_s)
    t_ids = tok_t(text, add_special_tokens=False)["input_ids"]
    s_ids = tok_s(text, add_special_tokens=False)["input_ids"]
    raw = text.encode()
    # the byte view of a tokenization is exactly the text's bytes (multi-byte characters split or not)
    assert b"".join(t_bytes[i] for i in t_ids) == raw and b"".join(s_bytes[i] for i in s_ids) == raw
    if not text.isascii():  # the case character offsets get wrong: tokens holding part of a character
        assert any(not _is_utf8(t_bytes[i]) for i in t_ids) and any(not _is_utf8(s_bytes[i]) for i in s_ids)
    t_ends = byte_ends([t_bytes[i] for i in t_ids])
    s_ends = byte_ends([s_bytes[i] for i in s_ids])
    spans = aligned_spans(t_ends, s_ends)
    # the spans tile the text: contiguous, both sides, and each covers the same bytes
    assert spans[0, 0] == 0 and spans[0, 2] == 0 and spans[-1, 1] == len(t_ids) and spans[-1, 3] == len(s_ids)
    assert (spans[1:, 0] == spans[:-1, 1]).all() and (spans[1:, 2] == spans[:-1, 3]).all()
    for tl, th, sl, sh in spans:
        assert b"".join(t_bytes[i] for i in t_ids[tl:th]) == b"".join(s_bytes[i] for i in s_ids[sl:sh])
        # maximal refinement: no common boundary inside a span
        inner_t = set(t_ends[tl:th - 1].tolist())
        inner_s = set(s_ends[sl:sh - 1].tolist())
        assert not inner_t & inner_s
    t_rows, s_rows = aligned_rows(t_ends, s_ends)
    assert len(t_rows) == len(spans) - 1  # one aligned row per inner common boundary
    for i, j in zip(t_rows, s_rows):
        prefix_t = b"".join(t_bytes[x] for x in t_ids[: i + 1])
        assert prefix_t == b"".join(s_bytes[x] for x in s_ids[: j + 1])
        assert i < len(t_ids) - 1 and j < len(s_ids) - 1  # rows that exist


def test_same_tokenizer_aligns_every_row(tokenizers):
    tok = tokenizers[0]
    b = vocab_bytes(tok)
    vmap = vocab_map(b, b)
    assert (vmap == np.arange(len(b))).all() and not student_only(vmap, len(b)).any()
    ids = tok(ADVERSARIAL[3], add_special_tokens=False)["input_ids"]
    ends = byte_ends([b[i] for i in ids])
    t_rows, s_rows = aligned_rows(ends, ends)
    assert t_rows.tolist() == s_rows.tolist() == list(range(len(ids) - 1))


def test_vocab_map_is_exact_and_injective(tokenizers):
    tok_t, tok_s = tokenizers
    t_bytes, s_bytes = vocab_bytes(tok_t), vocab_bytes(tok_s)
    assert tokenizer_scheme(tok_t) == "byte_level"
    vmap = vocab_map(t_bytes, s_bytes)
    mapped = vmap >= 0
    assert 256 <= mapped.sum() < len(t_bytes)  # every single byte is shared, not every merge
    for i in np.flatnonzero(mapped):
        assert t_bytes[i] == s_bytes[vmap[i]]
    assert len(set(vmap[mapped].tolist())) == mapped.sum()
    eot = tok_t.convert_tokens_to_ids("<|endoftext|>")
    assert t_bytes[eot] == "<|endoftext|>" and s_bytes[vmap[eot]] == "<|endoftext|>"  # special by name
    assert student_only(vmap, len(s_bytes)).sum() == len(s_bytes) - mapped.sum()


def test_unwritable_student_tokens():
    student = [b"a", b"\xc3\xa9", b"\xe6", "<|endoftext|>", "<|im_start|>", None, b"\xe6\x97\xa5"]

    def ascii_only(texts):  # a teacher whose alphabet is ASCII: everything else comes back as "?"
        return [t.decode().encode("ascii", "replace") for t in texts]

    # é and 日 cannot be written; the lone byte \xe6 is part of a character (checked as a whole); an unknown
    # special token cannot either
    assert unwritable_tokens(student, ascii_only, {"<|endoftext|>"}) == [1, 4, 6]
    assert unwritable_tokens(student, lambda texts: list(texts), {"<|endoftext|>", "<|im_start|>"}) == []
