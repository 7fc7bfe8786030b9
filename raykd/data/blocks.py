"""Packed blocks held in one process (small sets only), and the packing of one chunk from its records.

    packed = encode_chunk(chunk, cfg, encoder, pad_id)     # a chunk read, checked, tokenized, packed (packing.py)
    ref = pack_in_process(cfg, encoder, pad_id, chunks)    # every chunk, here: the in-process reference of ingest
    val = TokenBlocks(ids, mask)                            # (M, L) blocks for evaluation, seqkd prompts, tests

The product reads training data through Ray Data (raykd/data/ingest.py runs `encode_chunk` in parallel);
`pack_in_process` is the same work done in one process, in order: tests prove the Ray Data path yields
exactly these blocks, and benchmarks/data_ingest.py measures one against the other.
`tokenize_blocks`/`split_blocks` cut plain documents for the small held-out sets of pipeline evaluation
and masked-LM distillation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raykd.config import ConfigError, DataConfig
from raykd.data.packing import Packed, PackStats, pack_chunk
from raykd.data.sources import Chunk, read_chunk


@dataclass
class TokenBlocks:
    """Packed blocks in memory: ids (M, L) int32, mask (M, L) uint8 (1 = token trained), weight or None,
    index (M,) their global block numbers."""

    ids: np.ndarray
    mask: np.ndarray
    weight: np.ndarray | None = None
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows) -> "TokenBlocks":
        pick = (lambda a: None if a is None else a[rows])
        return TokenBlocks(self.ids[rows], self.mask[rows], pick(self.weight), pick(self.index))


def encode_chunk(chunk: Chunk | dict, cfg: DataConfig, encoder, pad_id: int, router=None) -> Packed:
    """Read, check, tokenize and pack one chunk (what each Ray Data task of the ingest does). `router`
    (raykd/data/routing.py, teachers.routing) packs each teacher's records apart and sets `Packed.route`."""
    from raykd.data.records import example_of

    c = chunk if isinstance(chunk, Chunk) else Chunk(**chunk)
    encoded, routes = [], []
    for where, raw in read_chunk(c, cfg):
        ex = example_of(raw, cfg, where, c.last_of_file)
        ids, mask = encoder.encode(ex)
        encoded.append((ids, mask, ex.weight, where))
        routes.append(router(raw, where) if router is not None else 0)
    if router is not None:
        from raykd.data.routing import pack_routed

        return pack_routed(encoded, routes, cfg.format, cfg.seq_len, pad_id, cfg.weight_field is not None)
    return pack_chunk(encoded, cfg.format, cfg.seq_len, pad_id, cfg.weight_field is not None)


def pack_in_process(cfg: DataConfig, encoder, pad_id: int, chunks: list[Chunk]) -> tuple[TokenBlocks, PackStats]:
    """Every chunk packed here, in order, concatenated: the reference the Ray Data ingest must equal."""
    parts = [encode_chunk(c, cfg, encoder, pad_id) for c in chunks]
    stats = PackStats()
    for p in parts:
        stats = stats.add(p.stats)
    weight = np.concatenate([p.weight for p in parts]) if cfg.weight_field is not None else None
    ids = np.concatenate([p.ids for p in parts])
    return TokenBlocks(ids, np.concatenate([p.mask for p in parts]), weight, np.arange(len(ids))), stats


def tokenize_blocks(texts: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """Documents joined by EOS and cut into `(N, seq_len)` int32 blocks (the tail is dropped)."""
    eos = tokenizer.eos_token_id
    fast = getattr(tokenizer, "backend_tokenizer", None)
    ids: list[int] = []
    for text in texts:
        ids.extend(fast.encode(text, add_special_tokens=False).ids if fast else tokenizer.encode(text, add_special_tokens=False))
        if eos is not None:
            ids.append(eos)
    n = len(ids) // seq_len
    return np.asarray(ids[: n * seq_len], dtype=np.int32).reshape(n, seq_len)


def split_blocks(blocks: np.ndarray, val_fraction: float, field: str = "data") -> tuple[np.ndarray, np.ndarray]:
    n_val = held_out_count(len(blocks), val_fraction, blocks.shape[1] if blocks.ndim == 2 else None, field)
    return blocks[:-n_val], blocks[-n_val:]


def held_out_count(n: int, val_fraction: float, seq_len: int | None, field: str = "data") -> int:
    """Blocks held out at the end of a stream of n: round(n * val_fraction), at least 1, leaving at least 1."""
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise ConfigError(f"{field}: only {n} sequence(s) of {seq_len or '?'} tokens; need at least 2 (one to "
                          "train, one held out)")
    return n_val
