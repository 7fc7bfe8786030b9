"""Teacher signals that are never computed twice: Parquet shard stores and the trainer's signal source.

    store = SignalStore(cache_directory(cfg.signals, fp, 20), fingerprint=fp, top_k=20)
    found, where = store.get([sequence_hash(s) for s in batch])     # TeacherSignals of those found, positions
    store.put(packed_table)                                           # one new shard, atomically

    source = SignalSource(score_packed, top_k=20, fingerprint=fp, cache=store)   # cache -> offline -> teacher
    prefetch = SignalPrefetcher(source.submit, batches, window=4)    # raykd/train/teacher_client.py

A store is a directory of Parquet shards in the packed format of raykd/signal_format.py, keyed by the
sequence hash of every row; the cache lives at `<cache_dir>/<teacher fingerprint>/k<top_k>/` (default
cache_dir: `<RAYKD_CACHE>/signals`), and `raykd capture` writes the same shards (by default into the
cache, so a capture pre-warms training). Shards are written to a dot-file and renamed into place, so a
reader (another Train worker, another trial) never sees half a file; each process writes its own shards.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raykd.config import ConfigError, SignalsConfig, default_cache_dir
from raykd.signal_format import SignalFormatError, from_ipc, read_meta, sequence_hash, unpack
from raykd.signals import TeacherSignals

log = logging.getLogger("raykd.signals")

SHARD_SUFFIX = ".parquet"


class SignalStoreError(ConfigError):
    """Offline signals that cannot be used (missing, corrupt, another teacher): one line naming the file."""


def cache_directory(cfg: SignalsConfig, fingerprint: str, top_k: int) -> Path:
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir() / "signals"
    return root / fingerprint / f"k{top_k}"


def take_sequences(signals: TeacherSignals, order: list[int] | np.ndarray) -> TeacherSignals:
    """The sequences `order` of `signals` (in that order), as new TeacherSignals."""
    offsets = np.asarray(signals.offsets)
    counts = np.diff(offsets)[np.asarray(order, np.int64)]
    rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order] or [np.zeros(0, np.int64)])
    return TeacherSignals(
        signals.topk_ids[rows], signals.topk_logprobs[rows], signals.tail_logprob[rows],
        signals.target_logprob[rows], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        {name: a[rows] for name, a in signals.extras.items()},
    )


def write_shard(directory: Path, table: pa.Table | pa.RecordBatch, name: str | None = None) -> Path:
    """Write packed rows as one Parquet shard (page checksums on), atomically; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    name = name or f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path = directory / f"{name}{SHARD_SUFFIX}"
    tmp = directory / f".{name}.tmp"
    table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
    # No compression: ids are bit-packed and log-probs are float16 noise; zstd saves < 5 % and costs CPU.
    pq.write_table(table, tmp, compression="none", write_page_checksum=True, write_statistics=False)
    os.replace(tmp, path)
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
        return take_sequences(TeacherSignals.concat(parts), order), sorted(found)

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


def check_offline(path: str, fingerprint: str, top_k: int, vocab_size: int, sequences: np.ndarray) -> None:
    """Before any cluster starts: offline shards exist, are this teacher's, and cover every training sequence."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise SignalStoreError(f"signals.offline_path: not a directory: {p}")
    store = SignalStore(p, fingerprint=fingerprint, top_k=top_k, vocab_size=vocab_size, strict=True, exact_k=False,
                        field="signals.offline_path")
    if not len(store):
        raise SignalStoreError(f"signals.offline_path: {p} holds no signal shards (*{SHARD_SUFFIX})")
    missing = sum(sequence_hash(s) not in store.index for s in sequences)
    if missing:
        raise SignalStoreError(
            f"signals.offline_path: {missing} of {len(sequences)} training sequences are not in {p}; run "
            f"`raykd capture` with the same teacher and data and top_k >= {top_k}"
        )


# --------------------------------------------------------------------------------------------- source
class _Pending:
    """The signals of one batch, being gathered; `.result()` returns them in batch order.

    `parts`: (signals, batch positions) already found in a store. `sent`: positions being scored by the
    teacher (`response`). `deferred`: positions whose sequences an earlier, still unresolved batch already
    sent to the teacher; they are read from the cache at `.result()` time (the prefetcher resolves batches
    in order, so the earlier one has stored them by then) instead of being scored twice.
    """

    def __init__(self, source: "SignalSource", batch: np.ndarray, hashes: list[bytes],
                 parts: list[tuple[TeacherSignals, list[int]]], sent: list[int], deferred: list[int], response: Any):
        self.source, self.batch, self.hashes = source, batch, hashes
        self.parts, self.sent, self.deferred, self.response = parts, sent, deferred, response

    def result(self) -> TeacherSignals:
        src, parts = self.source, list(self.parts)
        if self.response is not None:
            parts.append((src.receive(self.response, [self.hashes[p] for p in self.sent]), self.sent))
        if self.deferred:
            found, where = src.cache.get([self.hashes[p] for p in self.deferred])
            if found is not None:
                parts.append((found, [self.deferred[i] for i in where]))
            late = [p for i, p in enumerate(self.deferred) if i not in set(where)]
            if late:  # the earlier request failed or was dropped: score them now
                response = src.send([self.batch[p] for p in late])
                parts.append((src.receive(response, [self.hashes[p] for p in late]), late))
        if len(parts) == 1 and parts[0][1] == list(range(len(self.batch))):
            return parts[0][0]
        merged = TeacherSignals.concat([sig for sig, _ in parts])
        order = np.empty(len(self.batch), np.int64)
        order[[p for _, where in parts for p in where]] = np.arange(len(self.batch))
        return take_sequences(merged, order)


class SignalSource:
    """Signals for a batch of token sequences: from the cache, else offline shards, else the live teacher.

    `score_packed(sequences, top_k)` returns something with `.result()` giving packed IPC bytes (the
    teacher deployment's `score_packed`); None when only stores may be used. With an `offline` store,
    a sequence that no store holds is an error (the capture does not cover the training data).
    """

    def __init__(
        self,
        score_packed: Callable[[list[np.ndarray], int], Any] | None,
        *,
        top_k: int,
        fingerprint: str,
        cache: SignalStore | None = None,
        offline: SignalStore | None = None,
    ):
        if score_packed is None and offline is None:
            raise ValueError("SignalSource needs a teacher (score_packed) or an offline store")
        self.score_packed, self.top_k, self.fingerprint = score_packed, top_k, fingerprint
        self.cache, self.offline = cache, offline
        self.teacher_requests = 0  # score calls sent to the teacher
        self.teacher_sequences = 0
        self._inflight: set[bytes] = set()  # hashes sent to the teacher, not yet stored

    def send(self, sequences: list[np.ndarray]) -> Any:
        self.teacher_requests += 1
        self.teacher_sequences += len(sequences)
        return self.score_packed([np.asarray(s) for s in sequences], self.top_k)

    def receive(self, response: Any, hashes: list[bytes]) -> TeacherSignals:
        """Unpack (and check) a teacher reply, store it in the cache."""
        reply = response.result()
        table = from_ipc(reply) if isinstance(reply, (bytes, bytearray)) else reply
        signals = unpack(table, expect_fingerprint=self.fingerprint, expect_top_k=self.top_k)
        if self.cache is not None:
            self.cache.put(table)
        self._inflight.difference_update(hashes)
        return signals

    def submit(self, batch: np.ndarray) -> _Pending:
        """Start getting the signals of `batch` (B, L); `.result()` returns them in batch order."""
        hashes = [sequence_hash(seq) for seq in batch]
        parts: list[tuple[TeacherSignals, list[int]]] = []
        missing = list(range(len(batch)))
        for store in (self.cache, self.offline):
            if store is None or not missing:
                continue
            if any(hashes[p] not in store.index for p in missing):
                store.refresh()  # another worker (or trial) may have written them since
            found, where = store.get([hashes[p] for p in missing])
            if found is not None:
                positions = [missing[i] for i in where]
                expected = [len(batch[p]) - 1 for p in positions]
                if np.diff(found.offsets).tolist() != expected:
                    raise SignalFormatError("stored signals do not match their sequences' lengths (hash collision?)")
                parts.append((found, positions))
                taken = set(positions)
                missing = [p for p in missing if p not in taken]
        if missing and self.score_packed is None:
            raise SignalStoreError(
                f"signals.offline_path: {len(missing)} of {len(batch)} sequences of this batch are not in "
                f"{self.offline.directory}; capture this data with `raykd capture` (same data and teacher)"
            )
        deferred = [p for p in missing if hashes[p] in self._inflight] if self.cache is not None else []
        sent = [p for p in missing if p not in set(deferred)]
        response = None
        if sent:
            response = self.send([batch[p] for p in sent])
            self._inflight.update(hashes[p] for p in sent)
        return _Pending(self, batch, hashes, parts, sent, deferred, response)

    def counters(self) -> dict[str, float]:
        """Cumulative counts of this process: hits/misses in sequences (a miss is scored by the teacher)."""
        stores = [s for s in (self.cache, self.offline) if s is not None]
        return {
            "signal_cache_hits": float(sum(s.hits for s in stores)),
            "signal_cache_misses": float(self.teacher_sequences),
            "signal_teacher_requests": float(self.teacher_requests),
            "signal_cache_bad_shards": float(sum(len(s.problems) for s in stores)),
        }

    def metrics(self) -> dict[str, float]:
        """`counters()` summed over the Train workers (every worker must call it at the same step)."""
        values = self.counters()
        try:
            import torch
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch is a dependency of training
            return values
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor(list(values.values()), dtype=torch.float64)
            dist.all_reduce(t)
            values = dict(zip(values, t.tolist()))
        return values


def signal_source(cfg: Any, handle: Any, extras: dict | None = None) -> SignalSource:
    """The SignalSource a Train worker uses for `cfg` (a DistillConfig) and the teacher deployment `handle`.

    Requests for extras (hidden states, attention maps) bypass the cache: those are large and keyed by layer.
    """
    sc, top_k = cfg.signals, cfg.loss.top_k
    info = handle.info.remote().result()  # fingerprint and vocabulary of the weights actually served
    cache = offline = None
    if sc.offline_path:
        if extras:
            raise SignalStoreError("signals.offline_path: offline shards hold top-k signals only; this loss also "
                                   f"needs {sorted(extras)} from the live teacher")
        offline = SignalStore(sc.offline_path, fingerprint=info.fingerprint, top_k=top_k, vocab_size=info.vocab_size,
                              strict=True, exact_k=False, field="signals.offline_path")
    if sc.cache and not extras:
        cache = SignalStore(cache_directory(sc, info.fingerprint, top_k), fingerprint=info.fingerprint, top_k=top_k,
                            vocab_size=info.vocab_size)
    score = None if offline is not None else (lambda seqs, k: handle.score_packed.remote(seqs, k, extras))
    return SignalSource(score, top_k=top_k, fingerprint=info.fingerprint, cache=cache, offline=offline)
