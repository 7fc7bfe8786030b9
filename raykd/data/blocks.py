"""Documents in, fixed-length token blocks out.

    blocks = tokenize_blocks(texts, tokenizer, 128)    # (N, 128) int32: documents joined by EOS, chopped
    train, val = split_blocks(blocks, 0.1)             # the tail of the stream is held out
"""

from __future__ import annotations

import numpy as np

from raykd.config import ConfigError


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
