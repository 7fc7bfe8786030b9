"""Cross-tokenizer alignment: which teacher rows and student rows predict the same next text, and which
teacher tokens are student tokens. Pure numpy: no torch, no transformers (tokenizers are duck-typed).

    t_bytes = vocab_bytes(teacher_tokenizer)        # list: raw bytes of each token id (str for special tokens)
    s_bytes = vocab_bytes(student_tokenizer)
    vmap = vocab_map(t_bytes, s_bytes)              # (V_t,) int64: student id of the same token, -1 if none
    t_ends = byte_ends([t_bytes[i] for i in t_ids]) # (L_t,) end offset (bytes) of every token in the text
    s_ends = byte_ends([s_bytes[i] for i in s_ids]) # (L_s,)
    t_rows, s_rows = aligned_rows(t_ends, s_ends)   # (M,), (M,): teacher row t_rows[m] ~ student row s_rows[m]
    spans = aligned_spans(t_ends, s_ends)           # (S, 4): [t_lo, t_hi, s_lo, s_hi) cover the same bytes

Why bytes and not characters: byte-level BPE tokens may split one multi-byte UTF-8 character (a 4-byte
emoji can be two tokens), so character offsets of such tokens overlap; byte offsets never do.

Row convention (raykd/signals/teacher_signals.py): row j of a sequence of L tokens is the distribution after
tokens 0..j, predicting token j + 1 (rows 0 .. L-2). Teacher row i and student row j predict the same thing
exactly when the text before them is the same, i.e. a common token boundary b = t_ends[i] = s_ends[j]; both
then predict the token that starts at byte b. Rows with no common boundary get no soft target (only the hard
loss on the student's own tokens).

Token bytes: a byte-level (GPT-2 style) token string maps each character back to one byte through the
GPT-2 byte table; a SentencePiece token writes a space as "▁" and unknown bytes as "<0xNN>". Special tokens
(bos/eos/pad, chat markers) are kept as their strings (type str), so they map only onto a special token of the
same name and are never confused with text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

TokenBytes = bytes | str  # bytes: ordinary text token; str: a special token, by name


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table (the inverse of bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(token: str, scheme: str) -> bytes | None:
    """Raw bytes of one vocabulary string under `scheme` ("byte_level" | "sentencepiece" | "plain");
    None when the string is not text of that scheme (e.g. a byte-level string with a character outside the
    table)."""
    if scheme == "byte_level":
        table = byte_decoder()
        if any(ch not in table for ch in token):
            return None
        return bytes(table[ch] for ch in token)
    if scheme == "sentencepiece":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return bytes([int(token[3:5], 16)])
            except ValueError:
                return None
        return token.replace("\u2581", " ").encode("utf-8")
    if scheme == "plain":
        return token.encode("utf-8")
    raise ValueError(f"scheme must be byte_level, sentencepiece or plain, got {scheme!r}")


def tokenizer_scheme(tokenizer) -> str:
    """How a (fast) tokenizer writes bytes in its vocabulary, read from its decoder: byte_level (GPT-2, Llama 3,
    Qwen), sentencepiece (Metaspace / byte fallback: Llama 2, Mistral), else plain UTF-8."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "plain"
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
    if "ByteLevel" in kinds:
        return "byte_level"
    if kinds & {"Metaspace", "ByteFallback"}:
        return "sentencepiece"
    return "plain"


def vocab_bytes(tokenizer) -> list[TokenBytes | None]:
    """Per token id: its raw bytes, its name (str) if it is a special token, None if neither can be told."""
    scheme = tokenizer_scheme(tokenizer)
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= {t.content if hasattr(t, "content") else str(t)
                for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
                if getattr(t, "special", False)}
    out: list[TokenBytes | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    for token, i in vocab.items():
        fallback = scheme == "sentencepiece" and len(token) == 6 and token.startswith("<0x")  # bytes, even if "special"
        out[i] = token if token in special and not fallback else token_bytes(token, scheme)
    return out


def vocab_map(teacher: Sequence[TokenBytes | None], student: Sequence[TokenBytes | None]) -> np.ndarray:
    """(V_t,) int64: the student id whose token is the same bytes (or the same special token), -1 if none.

    Injective: when one vocabulary spells the same bytes twice, the lowest id of each side is used.
    """
    index: dict[TokenBytes, int] = {}
    for j, key in enumerate(student):
        if key is not None and key not in index:
            index[key] = j
    out = np.full(len(teacher), -1, np.int64)
    seen: set[TokenBytes] = set()
    for i, key in enumerate(teacher):
        if key is not None and key not in seen:
            seen.add(key)
            out[i] = index.get(key, -1)
    return out


def student_only(vmap: np.ndarray, student_vocab: int) -> np.ndarray:
    """(V_s,) bool: student tokens that no teacher token maps onto (what the vocabulary-free loss compares)."""
    only = np.ones(student_vocab, bool)
    hit = vmap[(vmap >= 0) & (vmap < student_vocab)]
    only[hit] = False
    return only


def byte_ends(tokens: Sequence[TokenBytes | None], start: int = 0) -> np.ndarray:
    """(L,) int64 end offset in bytes of each token of a sequence whose first byte is at `start`.

    A special token counts as its name's UTF-8 bytes (it is text to neither side, but takes the place of that
    text in both when both have it); an unknown token (None) as 0 bytes.
    """
    lengths = np.fromiter((0 if t is None else len(t.encode() if isinstance(t, str) else t) for t in tokens),
                          np.int64, count=len(tokens))
    return start + np.cumsum(lengths)


def _last_index(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique boundaries and, for each, the last row ending there (a 0-byte token repeats a boundary; the
    later row has seen more context)."""
    rev = ends[::-1]
    values, first_in_rev = np.unique(rev, return_index=True)
    return values, len(ends) - 1 - first_in_rev


def aligned_rows(t_ends: np.ndarray, s_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher rows `(M,)` and student rows `(M,)` that predict the same next text (module doc), ordered.

    Only rows that exist (j <= L - 2: the last token predicts nothing inside the sequence) are returned.
    """
    t_ends, s_ends = np.asarray(t_ends, np.int64), np.asarray(s_ends, np.int64)
    if len(t_ends) < 2 or len(s_ends) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tv, ti = _last_index(t_ends[:-1])
    sv, si = _last_index(s_ends[:-1])
    _, a, b = np.intersect1d(tv, sv, assume_unique=True, return_indices=True)
    return ti[a].astype(np.int64), si[b].astype(np.int64)


def aligned_spans(t_ends: np.ndarray, s_ends: np.ndarray, t_start: int = 0, s_start: int = 0) -> np.ndarray:
    """(S, 4) int64 rows [t_lo, t_hi, s_lo, s_hi): maximal-refinement spans where teacher tokens t_lo..t_hi-1
    and student tokens s_lo..s_hi-1 cover exactly the same bytes. Bytes covered by only one side (a sequence
    that starts or ends elsewhere) are in no span. `t_start`/`s_start`: the byte where token 0 begins."""
    t_ends, s_ends = np.asarray(t_ends, np.int64), np.asarray(s_ends, np.int64)
    t_begin = np.concatenate([[t_start], t_ends[:-1]]) if len(t_ends) else np.zeros(0, np.int64)
    s_begin = np.concatenate([[s_start], s_ends[:-1]]) if len(s_ends) else np.zeros(0, np.int64)
    common = np.intersect1d(np.union1d(t_begin, t_ends), np.union1d(s_begin, s_ends))
    spans = []
    for lo, hi in zip(common[:-1], common[1:]):
        tl, th = np.searchsorted(t_begin, lo, "left"), np.searchsorted(t_ends, hi, "right")
        sl, sh = np.searchsorted(s_begin, lo, "left"), np.searchsorted(s_ends, hi, "right")
        # Both sides must cover [lo, hi) exactly with whole tokens.
        if th > tl and sh > sl and t_begin[tl] == lo and t_ends[th - 1] == hi and s_begin[sl] == lo \
                and s_ends[sh - 1] == hi:
            spans.append((tl, th, sl, sh))
    return np.asarray(spans, np.int64).reshape(-1, 4)


def unwritable_tokens(student: Sequence[TokenBytes | None], roundtrip, special_ok: set[str]) -> list[int]:
    """Student ids that can never be aligned with a teacher token boundary, in id order.

    A student token can be aligned only if the teacher can write its text: its bytes survive
    `roundtrip(list of bytes) -> list of bytes` (teacher encode then decode, batched; e.g. a teacher without
    byte fallback turns a character outside its alphabet into <unk>). A special student token needs a teacher
    special token of the same name (`special_ok`): otherwise the teacher would read its name as ordinary text.
    Tokens whose bytes are not valid UTF-8 on their own (pieces of a multi-byte character) are skipped: they
    are written together with their neighbours, and every whole character is tested where it is a token.
    """
    bad, ids, texts = [], [], []
    for j, key in enumerate(student):
        if key is None:
            continue
        if isinstance(key, str):
            if key not in special_ok:
                bad.append(j)
            continue
        try:
            key.decode("utf-8")
        except UnicodeDecodeError:
            continue
        ids.append(j)
        texts.append(key)
    back = roundtrip(texts) if texts else []
    bad += [j for j, want, got in zip(ids, texts, back) if got != want]
    return sorted(bad)
