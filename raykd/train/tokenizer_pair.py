"""A teacher tokenizer and a student tokenizer side by side: the edge of cross-tokenizer distillation.

    pair = TokenizerPair.load(teacher_path, student_path)    # or TokenizerPair(teacher_tok, student_tok)
    pair.check("student.path", chat=False)                    # ConfigError if a student token can never be aligned
    view = pair.teacher_view(student_ids)                     # the teacher's tokenization of the same text
    view.teacher_ids, view.t_ends, view.s_ends                # (L_t,), (L_t,), (L_s,) byte end offsets

The pure parts (token bytes, vocabulary map, alignment) are raykd/data/token_alignment.py; the loss is
raykd/loss/cross_tokenizer.py. This module holds the two tokenizer objects (transformers is imported only in
`load`).

Special tokens: the student's eos / bos / pad are the teacher's eos / bos / pad whatever their names (a
Llama-3 `<|end_of_text|>` and a Qwen `<|endoftext|>` both end a document), other special tokens pair up by
name. The data pipeline writes the student's eos (and pad) between documents; chat templates write further
special tokens.

Text: a student sequence is a window of a packed token stream, so it can begin or end inside a multi-byte
character. Each stretch of text between special tokens is decoded after dropping the partial character at
either edge (at most 3 bytes each side); the teacher's tokens then cover the rest, and its byte offsets say
where. Only the first rows of a window that begins inside a character differ: the teacher's context lacks
those (at most 3) bytes, which it could not read as text anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raykd.config import ConfigError
from raykd.data.token_alignment import (
    TokenBytes, aligned_rows, byte_ends, student_only, unwritable_tokens, vocab_bytes, vocab_map,
)

ROLES = ("eos_token", "bos_token", "pad_token")


def _with_roles(tokenizer, keys: list[TokenBytes | None]) -> list[TokenBytes | None]:
    """Special tokens that play a role (eos, bos, pad) are keyed by the role, so they pair up across names."""
    keys = list(keys)
    for role in ROLES:  # one token in several roles (eos = pad) keeps the first
        i = getattr(tokenizer, f"{role}_id", None)
        if i is not None and 0 <= i < len(keys) and isinstance(keys[i], str) and not keys[i].startswith("<raykd:"):
            keys[i] = f"<raykd:{role}>"
    return keys


def _utf8_core(data: bytes) -> tuple[int, int]:
    """(lo, hi): the largest slice data[lo:hi] that drops at most a partial character at each edge and decodes."""
    lo = 0
    while lo < min(3, len(data)) and data[lo] & 0xC0 == 0x80:  # continuation bytes of a character begun earlier
        lo += 1
    for hi in range(len(data), max(lo, len(data) - 3) - 1, -1):
        try:
            data[lo:hi].decode("utf-8")
            return lo, hi
        except UnicodeDecodeError:
            continue
    return lo, lo


@dataclass
class TeacherView:
    teacher_ids: np.ndarray  # (L_t,) int64: the teacher's tokens of the student sequence's text
    t_ends: np.ndarray  # (L_t,) byte end offsets in the student sequence's bytes
    s_ends: np.ndarray  # (L_s,)

    def truncate(self, n: int) -> "TeacherView":
        """The first n teacher tokens (a teacher context limit); rows beyond them are no longer aligned."""
        return TeacherView(self.teacher_ids[:n], self.t_ends[:n], self.s_ends)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(teacher rows, student rows) predicting the same next text (token_alignment.aligned_rows)."""
        return aligned_rows(self.t_ends, self.s_ends)


class TokenizerPair:
    def __init__(self, teacher_tokenizer, student_tokenizer):
        self.teacher, self.student = teacher_tokenizer, student_tokenizer
        self.t_keys = _with_roles(teacher_tokenizer, vocab_bytes(teacher_tokenizer))
        self.s_keys = _with_roles(student_tokenizer, vocab_bytes(student_tokenizer))
        self.vmap = vocab_map(self.t_keys, self.s_keys)  # (V_t,) teacher id -> student id, -1 none
        self.only = student_only(self.vmap, len(self.s_keys))  # (V_s,)
        self._t_special = {k: i for i, k in enumerate(self.t_keys) if isinstance(k, str)}
        eos = self._t_special.get("<raykd:eos_token>")
        for role in ROLES:  # a teacher without a pad (or bos) token: the student's pads become its eos
            if eos is not None:
                self._t_special.setdefault(f"<raykd:{role}>", eos)

    @classmethod
    def load(cls, teacher_path: str, student_path: str) -> "TokenizerPair":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(teacher_path), AutoTokenizer.from_pretrained(student_path))

    @property
    def identical(self) -> bool:
        return len(self.t_keys) == len(self.s_keys) and bool((self.vmap == np.arange(len(self.vmap))).all())

    def _encode(self, texts: list[str]) -> list[tuple[list[int], np.ndarray]]:
        """Teacher ids of each text and their byte lengths. A SentencePiece teacher prepends "▁" to a text
        (add_prefix_space): that space is not in the text, so it is taken off its first token's length."""
        out = []
        for text, ids in zip(texts, self.teacher(texts, add_special_tokens=False)["input_ids"]):
            lengths = byte_ends([self.t_keys[i] for i in ids])
            lengths = np.diff(lengths, prepend=0)
            raw = text.encode("utf-8")
            if len(ids) and lengths.sum() == len(raw) + 1 and not raw.startswith(b" ") \
                    and isinstance(self.t_keys[ids[0]], bytes) and self.t_keys[ids[0]].startswith(b" "):
                lengths[0] -= 1
            out.append((list(ids), lengths))
        return out

    def _teacher_bytes(self, ids) -> bytes:
        return b"".join(k if isinstance(k, bytes) else f"\x00{k}\x00".encode() for k in (self.t_keys[i] for i in ids))

    def roundtrip(self, texts: list[bytes]) -> list[bytes]:
        """Each text through the teacher tokenizer and back to bytes (unknown/special tokens show as such)."""
        out = []
        for ids, lengths in self._encode([t.decode("utf-8") for t in texts]):
            raw = self._teacher_bytes(ids)
            out.append(raw[1:] if len(raw) == lengths.sum() + 1 else raw)  # the prefix space it added
        return out

    def check(self, field: str, chat: bool = False) -> None:
        """ConfigError naming the first student token that can never be aligned, and how many there are.

        Checked: every ordinary student token whose bytes are whole characters must come back unchanged from the
        teacher's tokenizer (else that text can never have the same boundaries on both sides); the student's
        eos/bos/pad need the teacher's (by role); with chat data every special token needs a teacher twin."""
        keys = self.s_keys
        needed = set(self._t_special)
        if not chat:  # text data writes no special tokens but the roles: others are not checked
            keys = [k if not isinstance(k, str) or k.startswith("<raykd:") else None for k in keys]
        bad = unwritable_tokens(keys, self.roundtrip, needed)
        if not bad:
            return
        j = bad[0]
        key = self.s_keys[j]
        if isinstance(key, str):
            name = key.replace("<raykd:", "the student's ").rstrip(">") if key.startswith("<raykd:") else key
            why = f"special token {j} {name!r} has no counterpart in the teacher's tokenizer"
        else:
            back = self.roundtrip([key])[0]
            why = (f"token {j} {key.decode('utf-8')!r} (bytes {key.hex(' ')}) cannot be written by the teacher's "
                   f"tokenizer (it comes back as {back.decode('utf-8', 'replace')!r})")
        more = f" ({len(bad)} such tokens)" if len(bad) > 1 else ""
        raise ConfigError(f"{field}: {why}{more}; loss.cross_tokenizer aligns by text, so this student token "
                          "could never be aligned with the teacher's")

    def teacher_view(self, student_ids) -> TeacherView:
        """The teacher's tokens of the text of `student_ids` and both sides' byte end offsets."""
        s_keys = [self.s_keys[int(i)] for i in student_ids]
        s_ends = byte_ends(s_keys)
        t_ids: list[int] = []
        t_ends: list[int] = []
        pos, j = 0, 0
        while j < len(s_keys):
            key = s_keys[j]
            if isinstance(key, str) or key is None:  # a special token: the teacher's twin, same bytes
                twin = self._t_special.get(key) if key is not None else None
                pos = int(s_ends[j])
                if twin is not None:
                    t_ids.append(twin)
                    t_ends.append(pos)
                j += 1
                continue
            k = j
            while k < len(s_keys) and isinstance(s_keys[k], bytes):
                k += 1
            text = b"".join(s_keys[j:k])
            lo, hi = _utf8_core(text)
            if hi > lo:
                [(enc, lengths)] = self._encode([text[lo:hi].decode("utf-8")])
                ends = pos + lo + np.cumsum(lengths)
                t_ids += enc
                t_ends += ends.tolist()
            pos += len(text)
            j = k
        return TeacherView(np.asarray(t_ids, np.int64), np.asarray(t_ends, np.int64), s_ends)
