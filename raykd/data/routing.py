"""Routing records to teachers (`teachers.routing`): each record's teacher index, and blocks that never mix them.

    router = Router.of(cfg)                        # None without routing; crosses to Ray Data actors as to_dict()
    router({"text": "...", "domain": "math"}, "data.jsonl:7")    # -> 1 (the index of teacher `math`)
    packed = pack_routed(encoded, routes, "text", seq_len, pad_id, weighted)   # Packed with .route (n,) int8

Records are grouped by teacher within their chunk and each group is packed on its own (raykd/data/packing.py),
so a block holds the records of one teacher only and `Packed.route` names it. The block's teacher travels with
the chunk (raykd/data/ingest.py: a `route` column, gathered by the driver into `BlockData.routes`) and the
Train worker looks it up by global block number (raykd/train/teachers.py). Pure Python + numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from typing import Any

import numpy as np

from raykd.data.packing import Encoded, Packed, PackStats, pack_chunk


@dataclass(frozen=True)
class Router:
    by: str  # "field" or "file"
    field: str
    rules: tuple[tuple[str, int], ...]  # (field value or file glob, teacher index), first match wins
    default: int  # teacher index of records no rule matches

    @classmethod
    def of(cls, cfg: Any) -> "Router | None":
        """The router of a DistillConfig (None: no `teachers.routing`)."""
        ts = getattr(cfg, "teachers", None)
        if ts is None or ts.routing is None:
            return None
        rules, default = ts.route_table()
        return cls(ts.routing.by, ts.routing.field, tuple(rules), default)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Router":
        return cls(d["by"], d["field"], tuple((str(k), int(i)) for k, i in d["rules"]), int(d["default"]))

    def __call__(self, raw: Any, where: str) -> int:
        """Teacher index of one raw record read at `where` ("<file>:<line>")."""
        if self.by == "file":
            path = where.rsplit(":", 1)[0]
            name = path.rsplit("/", 1)[-1]
            for pattern, teacher in self.rules:
                if fnmatch(path, pattern) or fnmatch(path, "*/" + pattern) or fnmatch(name, pattern):
                    return teacher
            return self.default
        if isinstance(raw, dict) and self.field in raw and raw[self.field] is not None:
            value = str(raw[self.field])
            for key, teacher in self.rules:
                if value == key:
                    return teacher
        return self.default


def pack_routed(encoded: list[Encoded], routes: list[int], fmt: str, seq_len: int, pad_id: int,
                weighted: bool) -> Packed:
    """`pack_chunk` per teacher (records in file order within each), the teachers' blocks interleaved in
    proportion; `route` (n,) int8 is each block's teacher."""
    parts: list[Packed] = []
    for teacher in sorted(set(routes)):
        group = [e for e, r in zip(encoded, routes) if r == teacher]
        p = pack_chunk(group, fmt, seq_len, pad_id, weighted)
        p.route = np.full(len(p.ids), teacher, np.int8)
        parts.append(p)
    if not parts:  # an empty chunk: what pack_chunk gives, with an empty route column
        p = pack_chunk([], fmt, seq_len, pad_id, weighted)
        p.route = np.zeros(len(p.ids), np.int8)
        return p
    stats = PackStats()
    for p in parts:
        stats = stats.add(p.stats)
    stats.records = len(encoded)
    # Interleave the teachers' blocks in proportion (block j of n at (j + 1/2) / n), each teacher's in order: the
    # stream's held-out tail (its last blocks) then holds every teacher's last records, as the file's end would,
    # not the last teacher's alone.
    key = np.concatenate([(np.arange(len(p.ids)) + 0.5) / len(p.ids) for p in parts])
    order = np.argsort(key, kind="stable")
    cat = (lambda name: np.concatenate([getattr(p, name) for p in parts])[order])
    return Packed(cat("ids"), cat("mask"), cat("segment"), cat("weight") if weighted else None, stats, cat("route"))
