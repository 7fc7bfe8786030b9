"""Masked-LM data: DistilBERT's masking and [CLS] ... [SEP] blocks. Pure numpy.

    inputs, selected = distilbert_mask(ids, rng, mask_id=tok.mask_token_id, vocab_size=len(tok),
                                       special_ids=special_ids(tok))      # labels: ids[selected]
    blocks = mlm_blocks(texts, tok, seq_len=64)                          # (N, 64) int32
"""

from __future__ import annotations

import numpy as np

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def distilbert_mask(
    ids: np.ndarray,  # (B, L) int token ids
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...] = (),
    mask_prob: float = 0.15,
    mask_token: float = 0.8,
    random_token: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT/DistilBERT masking. Returns `(inputs (B, L), selected (B, L) bool)`; labels are `ids[selected]`.

    Each non-special position is selected with probability `mask_prob` (at least one per sequence);
    a selected position becomes [MASK] with probability `mask_token`, a uniformly random token with
    `random_token`, and keeps its token otherwise.
    """
    ids = np.asarray(ids)
    candidates = ~np.isin(ids, np.asarray(special_ids, ids.dtype))
    selected = (rng.random(ids.shape) < mask_prob) & candidates
    for b in np.flatnonzero(~selected.any(1) & candidates.any(1)):  # every sequence teaches something
        selected[b, rng.choice(np.flatnonzero(candidates[b]))] = True
    action = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[selected & (action < mask_token)] = mask_id
    swap = selected & (action >= mask_token) & (action < mask_token + random_token)
    inputs[swap] = rng.integers(0, vocab_size, int(swap.sum()))
    return inputs, selected


def mlm_blocks(texts: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """`(N, seq_len)` int32: [CLS] + seq_len - 2 tokens of the concatenated texts + [SEP]."""
    body = seq_len - 2
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)
    n = len(ids) // body
    core = np.asarray(ids[: n * body], np.int32).reshape(n, body)
    cls = np.full((n, 1), tokenizer.cls_token_id, np.int32)
    sep = np.full((n, 1), tokenizer.sep_token_id, np.int32)
    return np.concatenate([cls, core, sep], 1)


def special_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL]
