"""Encoded records in, fixed-length training blocks out: the packing of one chunk. Pure numpy.

    packed = pack_chunk(encoded, fmt, seq_len, pad_id, where)   # encoded: [(ids, mask, weight, where), ...]
    packed.ids (n, L) int32 · packed.mask (n, L) uint8 · packed.segment (n, L) int16 · packed.weight (n, L) | None
    packed.stats                                                # PackStats: records, too long, padding, ...

* text: the chunk's documents are concatenated (each already ends in EOS) and cut every L tokens, as
  language-model pre-training does; a document may continue into the next block. The last block of the
  chunk is filled up with padding (mask 0), so no token of the chunk is dropped.
* chat / prompt_completion: whole records only. Records are placed best-fit-decreasing (each, longest
  first, into the fullest block it still fits) and a block's records keep their order in the file; the
  rest of each block is padding. A record longer than L is dropped and counted (`too_long`, the longest
  and the first one's file:line are kept for the report): it is never cut mid-answer.

`segment` numbers the records (documents) of a block from 1 (0 = padding), so a test or a document mask can
tell where one record ends. The loss mask already stops every loss at a record boundary (raykd/data/records.py:
a record's first token is never trained).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, fields

import numpy as np

Encoded = tuple[np.ndarray, np.ndarray, float, str]  # ids (n,), mask (n,), weight, where


@dataclass
class PackStats:
    records: int = 0  # records read
    too_long: int = 0  # records longer than seq_len, dropped (chat / prompt_completion)
    longest_dropped: int = 0  # tokens of the longest dropped record
    first_dropped: str = ""  # file:line of the first dropped record
    blocks: int = 0
    tokens: int = 0  # record tokens in blocks (padding excluded)
    trained: int = 0  # tokens that carry loss (the mask's ones)
    padding: int = 0

    def add(self, other: "PackStats") -> "PackStats":
        out = PackStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                           if isinstance(getattr(self, f.name), int)})
        out.longest_dropped = max(self.longest_dropped, other.longest_dropped)
        out.first_dropped = self.first_dropped or other.first_dropped
        return out


@dataclass
class Packed:
    ids: np.ndarray  # (n, L) int32
    mask: np.ndarray  # (n, L) uint8: 1 = token trained
    segment: np.ndarray  # (n, L) int16: record number within the block from 1, 0 = padding
    weight: np.ndarray | None  # (n, L) float32 per-token sample weights, or None
    stats: PackStats
    route: np.ndarray | None = None  # (n,) int8 teacher of each block (teachers.routing: raykd/data/routing.py)


def pack_chunk(encoded: list[Encoded], fmt: str, seq_len: int, pad_id: int, weighted: bool) -> Packed:
    """Pack one chunk's encoded records (in file order) into (n, seq_len) blocks."""
    out = (_pack_stream if fmt == "text" else _pack_records)(encoded, seq_len, pad_id, weighted)
    out.mask[:, 0] = 0  # nothing in the block predicts its first token
    out.stats.trained = int(out.mask.sum())
    return out


def _empty(seq_len: int, n: int, pad_id: int, weighted: bool) -> Packed:
    return Packed(np.full((n, seq_len), pad_id, np.int32), np.zeros((n, seq_len), np.uint8),
                  np.zeros((n, seq_len), np.int16), np.zeros((n, seq_len), np.float32) if weighted else None,
                  PackStats())


def _pack_stream(encoded: list[Encoded], seq_len: int, pad_id: int, weighted: bool) -> Packed:
    lengths = np.array([len(e[0]) for e in encoded], np.int64)
    total = int(lengths.sum())
    n = -(-total // seq_len)
    out = _empty(seq_len, n, pad_id, weighted)
    if total:
        flat = slice(0, total)
        out.ids.reshape(-1)[flat] = np.concatenate([e[0] for e in encoded])
        out.mask.reshape(-1)[flat] = np.concatenate([e[1] for e in encoded])
        doc = np.repeat(np.arange(len(encoded), dtype=np.int64), lengths)  # document of every token
        block_first_doc = doc[np.arange(n) * seq_len]  # the document each block starts in
        seg = doc - np.repeat(block_first_doc, seq_len)[:total] + 1
        out.segment.reshape(-1)[flat] = seg.astype(np.int16)
        if weighted:
            out.weight.reshape(-1)[flat] = np.repeat(np.array([e[2] for e in encoded], np.float32), lengths)
    out.stats = PackStats(records=len(encoded), blocks=n, tokens=total, padding=n * seq_len - total)
    return out


def _pack_records(encoded: list[Encoded], seq_len: int, pad_id: int, weighted: bool) -> Packed:
    stats = PackStats(records=len(encoded))
    keep = []
    for i, (ids, _, _, where) in enumerate(encoded):
        if len(ids) > seq_len:
            stats.too_long += 1
            stats.longest_dropped = max(stats.longest_dropped, len(ids))
            stats.first_dropped = stats.first_dropped or where
        elif len(ids):
            keep.append(i)
    # Best-fit decreasing: bins sorted by free space; each record goes to the tightest bin that holds it.
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin), sorted
    for i in sorted(keep, key=lambda i: (-len(encoded[i][0]), i)):
        size = len(encoded[i][0])
        at = bisect_left(free, (size, -1))
        if at < len(free):
            space, b = free.pop(at)
        else:
            space, b = seq_len, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - size > 0:
            insort(free, (space - size, b))
    out = _empty(seq_len, len(bins), pad_id, weighted)
    for b, members in enumerate(bins):
        pos = 0
        for s, i in enumerate(sorted(members), 1):  # file order within the block
            ids, mask, weight, _ = encoded[i]
            end = pos + len(ids)
            out.ids[b, pos:end], out.mask[b, pos:end], out.segment[b, pos:end] = ids, mask, s
            if weighted:
                out.weight[b, pos:end] = weight
            pos = end
    stats.blocks = len(bins)
    stats.tokens = int(sum(len(encoded[i][0]) for i in keep))
    stats.padding = stats.blocks * seq_len - stats.tokens
    out.stats = stats
    return out
