"""Records in, tokens and a loss mask out: the three `data.format`s, checked one record at a time.

    ex = example_of(raw, cfg, "train.jsonl:12")         # checked Example, or DataError "<file>:<line>: <problem>"
    enc = RecordEncoder(tokenizer, cfg)                  # renders chat with the chat template (raykd/data/chat.py)
    ids, mask = enc.encode(ex)                           # (n,) int32 token ids, (n,) uint8: 1 = the token is trained

The mask is the one loss mask of raykd: a token is *trained* (its prediction from the tokens before it
carries loss) when it is an assistant token (chat), a completion token (prompt_completion) or any document
token (text), and never when it is the first token of its record (its predecessor belongs to another
record or to nothing, so that prediction would cross a record boundary). Packing (raykd/data/packing.py)
keeps the mask with the tokens; the objective reads it as `mask[:, 1:]` (rows predict tokens 1..L-1).

* text: `text_fields` joined by a blank line (or a .txt/builtin piece), then EOS at the end of each document.
* chat: `messages` (or `chat_fields`) rendered by the chat template; the tokens of the rendered text are
  what both the student and the teacher see; assistant turns (content and the template's end-of-turn
  marker) are trained, everything else is not.
* prompt_completion: prompt tokens (not trained) + completion tokens + EOS (trained), tokenized apart so
  the boundary is where the prompt ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from raykd.config import ConfigError, DataConfig


class DataError(ConfigError):
    """A malformed record or unreadable data file: one line that names the file (and line)."""


@dataclass
class Example:
    where: str  # "<file>:<line>" (or "builtin")
    text: str | None = None  # format text
    ends_document: bool = True  # format text: EOS after this piece
    messages: list[dict[str, str]] | None = None  # format chat
    prompt: str | None = None  # format prompt_completion
    completion: str | None = None
    weight: float = 1.0  # data.weight_field


def example_of(raw: Any, cfg: DataConfig, where: str, ends_document: bool = True) -> Example:
    """Check one raw record (a JSON object / table row, or a text piece) against `cfg`; one-line DataError.

    `ends_document`: a text piece (builtin / .txt chunk) that ends its file gets EOS after it."""
    if isinstance(raw, str):  # builtin / .txt: a piece of one document
        return Example(where, text=raw, ends_document=ends_document)
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    weight = _weight(raw, cfg.weight_field, where) if cfg.weight_field else 1.0
    if cfg.format == "text":
        missing = [f for f in cfg.text_fields if f not in raw]
        if missing:
            raise DataError(f"{where}: no field {missing[0]!r} (data.text_fields)")
        return Example(where, text="\n\n".join(str(raw[f]) for f in cfg.text_fields), weight=weight)
    if cfg.format == "prompt_completion":
        parts = []
        for name in (cfg.prompt_field, cfg.completion_field):
            if name not in raw:
                raise DataError(f"{where}: no field {name!r} (data.{'prompt' if name == cfg.prompt_field else 'completion'}_field)")
            if not isinstance(raw[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(raw[name]).__name__}")
            parts.append(raw[name])
        if not parts[1]:
            raise DataError(f"{where}: field {cfg.completion_field!r} is empty (nothing to train on)")
        return Example(where, prompt=parts[0], completion=parts[1], weight=weight)
    return Example(where, messages=_messages(raw, cfg, where), weight=weight)


def _messages(raw: dict, cfg: DataConfig, where: str) -> list[dict[str, str]]:
    if cfg.chat_fields:
        out = []
        for role, name in cfg.chat_fields.items():
            if name not in raw:
                raise DataError(f"{where}: no field {name!r} (data.chat_fields.{role})")
            out.append({"role": role, "content": str(raw[name])})
    else:
        if cfg.messages_field not in raw:
            raise DataError(f"{where}: no field {cfg.messages_field!r} (data.messages_field)")
        out = raw[cfg.messages_field]
        if not isinstance(out, list) or not out:
            raise DataError(f"{where}: {cfg.messages_field!r} must be a non-empty list of {{role, content}} messages")
        for i, m in enumerate(out):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise DataError(f"{where}: message {i} has no 'role' string")
            if not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {i} ({m['role']}) has no 'content' string")
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: no assistant message (nothing to train on)")
    return out


def _weight(raw: dict, name: str, where: str) -> float:
    if name not in raw:
        raise DataError(f"{where}: no field {name!r} (data.weight_field)")
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DataError(f"{where}: {name!r} (data.weight_field) must be a finite number >= 0, got {value!r}")
    return float(value)


def load_chat_template(cfg: DataConfig, tokenizer, tokenizer_path: str = "the tokenizer") -> str | None:
    """The Jinja template chat data is rendered with: `data.chat_template` (text or a .jinja file) or the
    tokenizer's; None for other formats. A chat source without one is a one-line ConfigError."""
    if cfg.format != "chat":
        return None
    given = cfg.chat_template
    if given:
        from pathlib import Path

        path = Path(given).expanduser()
        if given.endswith((".jinja", ".j2")) or ("\n" not in given and "{" not in given and path.is_file()):
            if not path.is_file():
                raise ConfigError(f"data.chat_template: file not found: {path}")
            return path.read_text()
        return given
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"data.chat_template: {tokenizer_path} has no chat template; give one (a Jinja string or "
                          "a .jinja file) to render format: chat")
    return None  # the tokenizer's own


class RecordEncoder:
    """Token ids and the trained-token mask of Examples, for one tokenizer and data config.

    `template`: the chat template (None: the tokenizer's). Picklable through its arguments only: build one
    per process (a Ray Data actor builds its own)."""

    def __init__(self, tokenizer, cfg: DataConfig, template: str | None = None):
        self.tok, self.cfg, self.template = tokenizer, cfg, template
        self.fast = getattr(tokenizer, "backend_tokenizer", None)  # Rust: no max-length warnings, offsets, faster
        self.eos = tokenizer.eos_token_id
        if cfg.format != "text" and self.eos is None:
            raise ConfigError(f"data.format: {cfg.format} needs a tokenizer with an EOS token")

    def _ids(self, text: str) -> list[int]:
        if self.fast is not None:
            return self.fast.encode(text, add_special_tokens=False).ids
        return self.tok.encode(text, add_special_tokens=False)

    def encode(self, ex: Example) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int32, mask (n,) uint8) of one record; mask[0] is always 0 (first token of a record)."""
        if self.cfg.format == "chat" and ex.messages is not None:
            from raykd.data.chat import render_with_spans

            text, spans = render_with_spans(self.tok, ex.messages, self.template, ex.where)
            ids, mask = self._masked_by_spans(text, spans)
        elif ex.completion is not None:
            prompt, completion = self._ids(ex.prompt), self._ids(ex.completion) + [self.eos]
            ids = prompt + completion
            mask = np.concatenate([np.zeros(len(prompt), np.uint8), np.ones(len(completion), np.uint8)])
        else:
            ids = self._ids(ex.text)
            if ex.ends_document and self.eos is not None:
                ids.append(self.eos)
            mask = np.ones(len(ids), np.uint8)
        ids = np.asarray(ids, np.int32)
        if len(mask):
            mask[0] = 0
        return ids, mask

    def _masked_by_spans(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], np.ndarray]:
        """Tokenize the rendered text once; a token is trained when its characters overlap an assistant span."""
        if self.fast is not None:
            enc = self.fast.encode(text, add_special_tokens=False)
            ids, offsets = enc.ids, np.asarray(enc.offsets, np.int64).reshape(-1, 2)
        else:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
        mask = np.zeros(len(ids), np.uint8)
        for a, b in spans:
            mask |= ((offsets[:, 0] < b) & (offsets[:, 1] > a)).astype(np.uint8)
        return ids, mask
