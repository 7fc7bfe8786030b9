"""Two real (offline-trained) tokenizers side by side: the teacher's view of a student window, the check."""

import numpy as np
import pytest

from raykd.config import ConfigError
from raykd.train.tokenizer_pair import TokenizerPair
from tests.data.test_token_alignment import _is_utf8

TEXT = "Le café coûte 3€ — 日本語 🙂🙃\n\n   spaced   out\tend. The End."


@pytest.fixture(scope="module")
def toks():
    from raykd.data.corpus import generate_corpus
    from raykd.teacher.tiny_model import train_tokenizer

    text = generate_corpus(20_000, 1) + TEXT * 4
    return (train_tokenizer(text, vocab_size=500, max_length=512),
            train_tokenizer(text, vocab_size=330, max_length=512, split_digits=True))


def _student_window(student, cut_lo=0, cut_hi=None):
    eos = student.eos_token_id
    ids = student(TEXT, add_special_tokens=False)["input_ids"] + [eos] + student(TEXT, add_special_tokens=False)["input_ids"]
    return np.asarray(ids[cut_lo:cut_hi], np.int64)


def test_teacher_view_covers_the_same_text_and_pairs_eos(toks):
    teacher, student = toks
    pair = TokenizerPair(teacher, student)
    window = _student_window(student)
    view = pair.teacher_view(window)
    assert view.s_ends[-1] == view.t_ends[-1]  # whole characters at both edges: the same bytes end to end
    assert teacher.eos_token_id in view.teacher_ids.tolist()
    s_bytes = [pair.s_keys[i] for i in window]
    t_bytes = [pair.t_keys[i] for i in view.teacher_ids]
    t_rows, s_rows = view.rows()
    assert len(t_rows) > len(window) // 3
    for i, j in zip(t_rows, s_rows):  # every aligned pair has read exactly the same prefix (eos by role)
        assert [b for b in t_bytes[: i + 1]] != [] and view.t_ends[i] == view.s_ends[j]
        norm = lambda ks: b"".join(k if isinstance(k, bytes) else b"<eos>" for k in ks)  # noqa: E731
        assert norm(t_bytes[: i + 1]) == norm(s_bytes[: j + 1])


def test_window_cut_inside_characters(toks):
    teacher, student = toks
    pair = TokenizerPair(teacher, student)
    full = _student_window(student)
    keys = [pair.s_keys[i] for i in full]
    # find windows that start and end inside a multi-byte character (a token that is not UTF-8 on its own)
    partial = [j for j, k in enumerate(keys) if isinstance(k, bytes) and not _is_utf8(k)]
    assert len(partial) >= 2
    lo, hi = partial[0] + 1, partial[-1]  # begins after a first piece, ends before a last piece
    view = pair.teacher_view(full[lo:hi])
    raw = b"".join(pair.s_keys[i] if isinstance(pair.s_keys[i], bytes) else b"" for i in full[lo:hi])
    got = b"".join(k for k in (pair.t_keys[i] for i in view.teacher_ids) if isinstance(k, bytes))
    assert got and got in raw and len(raw) - len(got) <= 6  # at most a partial character dropped at each edge
    t_rows, s_rows = view.rows()
    assert (view.t_ends[t_rows] == view.s_ends[s_rows]).all() and len(t_rows) > 0


def test_same_tokenizer_is_the_identity(toks):
    teacher = toks[0]
    pair = TokenizerPair(teacher, teacher)
    assert pair.identical and not pair.only.any()
    window = _student_window(teacher)
    view = pair.teacher_view(window)
    assert view.teacher_ids.tolist() == window.tolist()
    t_rows, s_rows = view.rows()
    assert t_rows.tolist() == s_rows.tolist() == list(range(len(window) - 1))


def test_check_accepts_byte_level_pairs_and_names_an_unalignable_token(toks):
    teacher, student = toks
    TokenizerPair(teacher, student).check("student.path")
    TokenizerPair(student, teacher).check("student.path", chat=True)
    from tokenizers import normalizers

    uncased = _copy(teacher)
    uncased.backend_tokenizer.normalizer = normalizers.Lowercase()  # an uncased teacher cannot write "T"
    with pytest.raises(ConfigError) as err:
        TokenizerPair(uncased, student).check("student.path")
    msg = str(err.value)
    assert msg.startswith("student.path: token ") and "cannot be written by the teacher's tokenizer" in msg
    assert "\n" not in msg and "such tokens" in msg
    bad_id = int(msg.split()[2])
    text = student.convert_ids_to_tokens(bad_id)
    assert text.lower() != text  # the named token really has an upper-case letter


def _copy(tok):
    import copy

    return copy.deepcopy(tok)




def _bpe_with_specials(text: str, vocab_size: int, eos: str, extra: list[str]):
    """A byte-level BPE whose eos is called `eos` (Llama 2 style "</s>"), with further special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos, *extra], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos,
                                   additional_special_tokens=extra or None)


def test_eos_pairs_by_role_and_chat_specials_by_name(toks):
    from raykd.data.corpus import generate_corpus

    teacher = toks[0]  # eos "<|endoftext|>"
    student = _bpe_with_specials(generate_corpus(20_000, 3) + TEXT, 350, "</s>", ["<|im_start|>"])
    pair = TokenizerPair(teacher, student)
    assert pair.vmap[teacher.eos_token_id] == student.eos_token_id  # different names, same role
    ids = student("one two", add_special_tokens=False)["input_ids"] + [student.eos_token_id] + \
        student("three", add_special_tokens=False)["input_ids"]
    view = pair.teacher_view(np.asarray(ids))
    assert teacher.eos_token_id in view.teacher_ids.tolist()
    pair.check("student.path")  # text data: the student's eos is all the data writes
    with pytest.raises(ConfigError, match=r"special token \d+ '<\|im_start\|>' has no counterpart"):
        pair.check("student.path", chat=True)  # a chat template writes <|im_start|>; the teacher has none


def _sentencepiece_like(text: str, vocab_size: int):
    """A Llama-2-style tokenizer: Metaspace "▁" with a prefix space, <0xNN> byte fallback, <s>/</s>/<unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, limit_alphabet=60,
                                  show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_teacher_and_byte_level_student(toks):
    from raykd.data.corpus import generate_corpus
    from raykd.data.token_alignment import tokenizer_scheme

    sp = _sentencepiece_like(generate_corpus(20_000, 4) + TEXT, 600)
    student = toks[1]
    assert tokenizer_scheme(sp) == "sentencepiece"
    for teacher, stud in ((sp, student), (student, sp)):
        pair = TokenizerPair(teacher, stud)
        pair.check("student.path")  # byte fallback: every text is writable; the prefix space is not text
        window = np.asarray(stud(TEXT, add_special_tokens=False)["input_ids"])
        view = pair.teacher_view(window)
        s_raw = b"".join(pair.s_keys[i] for i in window)
        assert view.t_ends[-1] == view.s_ends[-1] == len(s_raw)
        t_rows, s_rows = view.rows()
        assert len(t_rows) > 10
        for i, j in zip(t_rows, s_rows):
            assert view.t_ends[i] == view.s_ends[j]
        assert (pair.vmap >= 0).sum() > 200  # the bytes (<0xNN> and single characters) and shared words map
