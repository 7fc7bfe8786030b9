"""Where a Train worker's teacher signals come from: the cache, else offline shards, else the live teacher.

    source = signal_source(cfg, handle, extras)                     # from a DistillConfig and the Serve handle
    prefetch = SignalPrefetcher(source.submit, batches, window=4)    # raykd/train/prefetch.py
    source.metrics()                                                 # cache hits / misses over all workers

Requests for extras (hidden states, attention maps) bypass the cache: those are large and keyed by layer.
The stores are raykd/signals/store.py; the packed wire format raykd/signals/format.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from raykd.signals.format import SignalFormatError, from_ipc, sequence_hash, unpack
from raykd.signals.store import SignalStore, SignalStoreError, cache_directory
from raykd.signals.teacher_signals import TeacherSignals


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
        return merged.take_sequences(order)


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
        cache = SignalStore(cache_directory(sc, info.fingerprint, top_k, info.variant), fingerprint=info.fingerprint, top_k=top_k,
                            vocab_size=info.vocab_size)
    score = None if offline is not None else (lambda seqs, k: handle.score_packed.remote(seqs, k, extras))
    return SignalSource(score, top_k=top_k, fingerprint=info.fingerprint, cache=cache, offline=offline)
