"""Text in, fixed-length token blocks out.

    texts = load_texts(cfg.data)                       # list[str], validated
    blocks = tokenize_blocks(texts, tokenizer, 128)    # (N, 128) int32: documents joined by EOS, chopped
    train, val = split_blocks(blocks, 0.1)             # the tail of the stream is held out

Sources: `builtin` (generated text, no files needed), a `.txt` file, or a `.jsonl` file whose
`text_fields` are joined with a blank line (e.g. GSM8K's `question` + `answer`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raykd.config import ConfigError, DataConfig


def load_texts(cfg: DataConfig, field: str = "data") -> list[str]:
    if cfg.source == "builtin":
        from raykd.corpus import generate_corpus

        return [generate_corpus(cfg.builtin_chars, cfg.builtin_seed)]
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{field}.source: file not found: {path}")
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise ConfigError(f"{field}.source: {path} is empty")
        return [text]
    if path.suffix != ".jsonl":
        raise ConfigError(f"{field}.source: {path} must be 'builtin', a .txt or a .jsonl file")
    texts = []
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
    if not texts:
        raise ConfigError(f"{field}.source: {path} has no records")
    return texts


def tokenize_blocks(texts: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """Concatenate documents (EOS between them) and cut into `(N, seq_len)` int32 blocks."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // seq_len
    return np.asarray(ids[: n * seq_len], dtype=np.int32).reshape(n, seq_len)


def split_blocks(blocks: np.ndarray, val_fraction: float, field: str = "data") -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, int(round(len(blocks) * val_fraction)))
    if len(blocks) - n_val < 1:
        raise ConfigError(
            f"{field}: only {len(blocks)} sequence(s) of {blocks.shape[1] if blocks.ndim == 2 else '?'} tokens; "
            "need at least 2 (one to train, one held out)"
        )
    return blocks[:-n_val], blocks[-n_val:]
