"""Text in, fixed-length token blocks out.

    texts = load_texts(cfg.data)                       # list[str], validated
    blocks = tokenize_blocks(texts, tokenizer, 128)    # (N, 128) int32: documents joined by EOS, chopped
    train, val = split_blocks(blocks, 0.1)             # the tail of the stream is held out

Sources: `builtin` (generated text, no files needed), a `.txt` file, or a `.jsonl` file whose
`text_fields` are joined with a blank line (e.g. GSM8K's `question` + `answer`).

Feedback-weighted samples: with `data.weight_field: score`, each jsonl record carries a loss weight,
e.g. `{"text": "...", "score": 0.25}` (finite, >= 0; 0 drops the record from the loss, 2 counts it
double). `load_weighted_texts` + `tokenize_weighted_blocks` give every token its record's weight.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from raykd.config import ConfigError, DataConfig


def load_texts(cfg: DataConfig, field: str = "data") -> list[str]:
    return load_weighted_texts(cfg, field)[0]


def load_weighted_texts(cfg: DataConfig, field: str = "data") -> tuple[list[str], list[float] | None]:
    """Documents, and with `weight_field` each jsonl record's loss weight (finite, >= 0), else None."""
    if cfg.source == "builtin":
        from raykd.corpus import generate_corpus

        return [generate_corpus(cfg.builtin_chars, cfg.builtin_seed)], None
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{field}.source: file not found: {path}")
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise ConfigError(f"{field}.source: {path} is empty")
        return [text], None
    if path.suffix != ".jsonl":
        raise ConfigError(f"{field}.source: {path} must be 'builtin', a .txt or a .jsonl file")
    texts, weights = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{field}.source: {path}:{lineno} is not valid JSON") from None
            missing = [f for f in cfg.text_fields if f not in row]
            if missing:
                raise ConfigError(f"{field}.text_fields: {path}:{lineno} has no field {missing[0]!r}")
            texts.append("\n\n".join(str(row[f]) for f in cfg.text_fields))
            if cfg.weight_field is not None:
                weights.append(_record_weight(row, cfg.weight_field, f"{field}.weight_field: {path}:{lineno}"))
    if not texts:
        raise ConfigError(f"{field}.source: {path} has no records")
    return texts, (weights if cfg.weight_field is not None else None)


def _record_weight(row: dict, name: str, where: str) -> float:
    if name not in row:
        raise ConfigError(f"{where} has no field {name!r}")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def tokenize_blocks(texts: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """Concatenate documents (EOS between them) and cut into `(N, seq_len)` int32 blocks."""
    return tokenize_weighted_blocks(texts, None, tokenizer, seq_len)[0]


def tokenize_weighted_blocks(
    texts: list[str], weights: list[float] | None, tokenizer, seq_len: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """`tokenize_blocks`, plus `(N, seq_len)` float32 per-token weights: each token (and the EOS after its
    document) carries its document's weight, so a block spanning two records mixes their weights exactly."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    counts: list[int] = []
    fast = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: no max-length warnings, faster
    for text in texts:
        before = len(ids)
        ids.extend(fast.encode(text, add_special_tokens=False).ids if fast else tokenizer.encode(text, add_special_tokens=False))
        if eos is not None:
            ids.append(eos)
        counts.append(len(ids) - before)
    n = len(ids) // seq_len
    blocks = np.asarray(ids[: n * seq_len], dtype=np.int32).reshape(n, seq_len)
    if weights is None:
        return blocks, None
    per_token = np.repeat(np.asarray(weights, np.float32), counts)[: n * seq_len]
    return blocks, per_token.reshape(n, seq_len)


def split_blocks(blocks: np.ndarray, val_fraction: float, field: str = "data") -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, int(round(len(blocks) * val_fraction)))
    if len(blocks) - n_val < 1:
        raise ConfigError(
            f"{field}: only {len(blocks)} sequence(s) of {blocks.shape[1] if blocks.ndim == 2 else '?'} tokens; "
            "need at least 2 (one to train, one held out)"
        )
    return blocks[:-n_val], blocks[-n_val:]
