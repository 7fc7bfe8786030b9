"""Teacher signals that are never computed twice: Parquet shard stores (the signal cache, offline captures).

    store = SignalStore(cache_directory(cfg.signals, fp, 20, "hf-float32"), fingerprint=fp, top_k=20)
    found, where = store.get([sequence_hash(s) for s in batch])     # TeacherSignals of those found, positions
    store.put(packed_table)                                           # one new shard, atomically

Training reads stores through raykd/train/signal_source.py (cache -> offline shards -> live teacher).
A store is a directory of Parquet shards in the packed format of raykd/signals/format.py, keyed by the
sequence hash of every row; the cache lives at `<cache_dir>/<teacher fingerprint>/k<top_k>/` (default
cache_dir: `<RAYKD_CACHE>/signals`), and `raykd capture` writes the same shards (by default into the
cache, so a capture pre-warms training). Shards are written to a dot-file and renamed into place
(raykd/files.py), so a reader (another Train worker, another trial) never sees half a file; each process
writes its own shards.

Trust: every shard is checked before use — Parquet footer and page CRCs (a truncated or bit-flipped file
fails here), format version, teacher fingerprint, top_k, vocabulary and each blob's size. A shard that
fails is *reported* (logged once with its path and reason, kept in `store.problems`, counted in
`signal_cache_bad_shards`) and never used: in a cache its sequences are re-scored by the teacher; in an
offline store (`strict=True`, user-given data) it is an error naming the file.

Offline shards with a larger top_k than asked are truncated (dropped mass goes to the tail); the cache
keys top_k exactly (its directory name).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raykd.config import ConfigError, SignalsConfig, default_cache_dir
from raykd.files import atomic_file
from raykd.signals.format import SignalFormatError, read_meta, sequence_hash, unpack
from raykd.signals.teacher_signals import TeacherSignals

log = logging.getLogger("raykd.signals")

SHARD_SUFFIX = ".parquet"


class SignalStoreError(ConfigError):
    """Offline signals that cannot be used (missing, corrupt, another teacher): one line naming the file."""


def cache_directory(cfg: SignalsConfig, fingerprint: str, top_k: int, variant: str) -> Path:
    """`<root>/<weights fingerprint>/<backend>-<dtype>/k<top_k>`: `variant` is TeacherConfig.signal_variant (a
    bfloat16 vLLM teacher's log-probs are not a float32 transformers teacher's)."""
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir() / "signals"
    return root / fingerprint / variant / f"k{top_k}"


def write_shard(directory: Path, table: pa.Table | pa.RecordBatch, name: str | None = None) -> Path:
    """Write packed rows as one Parquet shard (page checksums on), atomically; return its path."""
    name = name or f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path = Path(directory) / f"{name}{SHARD_SUFFIX}"
    table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
    with atomic_file(path) as tmp:
        # No compression: ids are bit-packed and log-probs are float16 noise; zstd saves < 5 % and costs CPU.
        pq.write_table(table, tmp, compression="none", write_page_checksum=True, write_statistics=False)
    return path


class SignalStore:
    """A directory of signal shards for one teacher, indexed by sequence hash.

    `strict`: a bad shard raises SignalStoreError (offline data) instead of being reported and skipped (cache).
    `exact_k`: only shards with exactly `top_k` (cache); else shards with top_k >= `top_k` are truncated.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        fingerprint: str,
        top_k: int,
        vocab_size: int | None = None,
        strict: bool = False,
        exact_k: bool = True,
        max_open_shards: int = 16,
        field: str = "signals.cache_dir",
    ):
        self.directory = Path(directory).expanduser()
        self.fingerprint, self.top_k, self.vocab_size = fingerprint, top_k, vocab_size
        self.strict, self.exact_k, self.field = strict, exact_k, field
        self.index: dict[bytes, tuple[Path, int]] = {}
        self.problems: list[str] = []
        self.hits = 0
        self.misses = 0
        self._seen: set[Path] = set()
        self._open: OrderedDict[Path, pa.Table] = OrderedDict()
        self._max_open = max_open_shards
        self.refresh()

    def __len__(self) -> int:
        return len(self.index)

    # ------------------------------------------------------------------------------------------ problems
    def _report(self, path: Path, reason: str) -> None:
        msg = f"{path}: {reason}"
        if self.strict:
            raise SignalStoreError(f"{self.field}: {msg}")
        self.problems.append(msg)
        log.warning("raykd: ignoring signal shard %s (never used; its sequences go to the teacher)", msg)

    def _check_meta(self, schema: pa.Schema) -> None:
        meta = read_meta(schema)
        if meta.teacher_fingerprint != self.fingerprint:
            raise SignalFormatError(f"signals of another teacher ({meta.teacher_fingerprint}, expected {self.fingerprint})")
        if meta.top_k < self.top_k or (self.exact_k and meta.top_k != self.top_k):
            raise SignalFormatError(f"top_k={meta.top_k}, expected {'' if self.exact_k else '>= '}{self.top_k}")
        if self.vocab_size is not None and meta.vocab_size != self.vocab_size:
            raise SignalFormatError(f"vocab_size={meta.vocab_size}, expected {self.vocab_size}")

    # ------------------------------------------------------------------------------------------ index
    def refresh(self) -> int:
        """Index shards that appeared since the last call (written by other workers); return how many."""
        if not self.directory.is_dir():
            return 0
        added = 0
        for path in sorted(self.directory.glob(f"*{SHARD_SUFFIX}")):
            if path in self._seen or path.name.startswith("."):
                continue
            self._seen.add(path)
            try:
                pf = pq.ParquetFile(path, page_checksum_verification=True)
                self._check_meta(pf.schema_arrow)
                hashes = pf.read(columns=["seq_hash"]).column("seq_hash").to_pylist()
            except (OSError, pa.ArrowException, SignalFormatError, ValueError) as e:
                self._report(path, _reason(e))
                continue
            for row, h in enumerate(hashes):
                if h is not None:
                    self.index.setdefault(h, (path, row))
            added += 1
        return added

    def _table(self, path: Path) -> pa.Table:
        table = self._open.get(path)
        if table is None:
            table = pq.read_table(path, page_checksum_verification=True)
            self._check_meta(table.schema)
            self._open[path] = table
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(path)
        return table

    def _drop(self, path: Path) -> None:
        self._open.pop(path, None)
        for h in [h for h, (p, _) in self.index.items() if p == path]:
            del self.index[h]

    # ------------------------------------------------------------------------------------------ get / put
    def get(self, hashes: list[bytes]) -> tuple[TeacherSignals | None, list[int]]:
        """Signals of the sequences found (in the order of `hashes`) and the positions found.

        Counts one hit per position found and one miss per position not found.
        """
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, h in enumerate(hashes):
            entry = self.index.get(h)
            if entry is not None:
                by_shard.setdefault(entry[0], []).append((pos, entry[1]))
        parts: list[TeacherSignals] = []
        found: list[int] = []
        for path, items in by_shard.items():
            try:
                table = self._table(path)
                signals = unpack(table.take([row for _, row in items]), expect_fingerprint=self.fingerprint)
            except (OSError, pa.ArrowException, SignalFormatError, ValueError) as e:
                self._drop(path)
                self._report(path, _reason(e))
                continue
            parts.append(signals.truncate_k(self.top_k))
            found.extend(pos for pos, _ in items)
        self.hits += len(found)
        self.misses += len(hashes) - len(found)
        if not parts:
            return None, []
        order = np.argsort(found, kind="stable")
        return TeacherSignals.concat(parts).take_sequences(order), sorted(found)

    def put(self, table: pa.Table | pa.RecordBatch) -> Path | None:
        """Store packed rows not yet indexed as one new shard; rows without a seq_hash are skipped."""
        self._check_meta(table.schema)
        hashes = table.column("seq_hash").to_pylist()
        keep = [i for i, h in enumerate(hashes) if h is not None and h not in self.index]
        if not keep:
            return None
        new = table.take(keep) if len(keep) < len(hashes) else table
        path = write_shard(self.directory, new)
        self._seen.add(path)
        for row, i in enumerate(keep):
            self.index[hashes[i]] = (path, row)
        return path


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "magic bytes" in text or "footer" in text.lower() or "size" in text.lower() and "file" in text.lower():
        return f"truncated or not a Parquet file ({text})"
    if "checksum" in text.lower() or "crc" in text.lower():
        return f"corrupt data (page checksum mismatch: {text})"
    return text


def check_offline(path: str, fingerprint: str, top_k: int, vocab_size: int, hashes=None) -> "SignalStore":
    """Offline shards exist and are this teacher's (before any cluster starts); with `hashes` (the
    `sequence_hash` of every training sequence, any iterable), that they cover every one. Returns the store."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise SignalStoreError(f"signals.offline_path: not a directory: {p}")
    store = SignalStore(p, fingerprint=fingerprint, top_k=top_k, vocab_size=vocab_size, strict=True, exact_k=False,
                        field="signals.offline_path")
    if not len(store):
        raise SignalStoreError(f"signals.offline_path: {p} holds no signal shards (*{SHARD_SUFFIX})")
    if hashes is not None:
        total = missing = 0
        for h in hashes:
            total += 1
            missing += h not in store.index
        if missing:
            raise SignalStoreError(
                f"signals.offline_path: {missing} of {total} training sequences are not in {p}; run "
                f"`raykd capture` with the same teacher and data and top_k >= {top_k}"
            )
    return store
