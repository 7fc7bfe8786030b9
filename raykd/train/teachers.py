"""Several teachers (`teachers:`, raykd/config/teachers.py): resolved, deployed, and asked by the Train workers.

Driver, before any cluster (raykd/train/prepare.py):

    prep.teachers = prepare_teachers(cfg, path, fp, check_same_vocab)   # [ResolvedTeacher], tokenizers = the primary's

Driver, Ray up (raykd/train/fit.py):

    handles = launch_teachers(cfg, prep)          # each app its own Serve application (the primary already is)

Worker (raykd/train/loop.py):

    source = worker_signal_source(cfg, handle, extras, routes)   # one teacher: signal_source(...) as before
    pending = source.submit_step(step_batch); signals = pending.result()

Routing: each block's teacher is `routes[block index]` (raykd/data/routing.py packs each teacher's records
apart); the batch is split by teacher, each part goes through that teacher's SignalSource (its own cache,
keyed by its own fingerprint, backend and top-k: raykd/signals/store.py) and the parts come back in batch
order. Ensemble: every teacher scores the whole batch (each through its own cache) and the signals are
mixed (raykd/signals/ensemble.py) into top-(n * k) signals with their tail. The mixture is never cached:
only each teacher's own signals are, so changing the weights (a sweep) re-uses every cached teacher row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raykd.signals.ensemble import mix_signals
from raykd.signals.teacher_signals import TeacherSignals


@dataclass(frozen=True)
class ResolvedTeacher:
    name: str
    path: str  # HF directory (the tiny teacher built when the app's path is null)
    fingerprint: str


def prepare_teachers(cfg: Any, primary_path: str, primary_fingerprint: str, check_same_vocab) -> list[ResolvedTeacher]:
    """Every app of `cfg.teachers` resolved (tiny ones built, cached) and checked against the primary: the same
    tokenizer (the student learns all of them on the same ids; `check_same_vocab(path, other, field)` is
    raykd/train/prepare.py's, passed in by it). No cluster. [] without `teachers`."""
    from raykd.config import ConfigError
    from raykd.models import check_model_dir, model_fingerprint

    ts = cfg.teachers
    if ts is None:
        return []
    out = [ResolvedTeacher(ts.primary.name, primary_path, primary_fingerprint)]
    for i, app in enumerate(ts.apps[1:], 1):
        field = f"teachers.apps.{i}.path"
        if app.path is not None:
            check_model_dir(app.path, field)
            path = app.path
        else:
            from raykd.teacher.build import ensure_tiny_teacher

            path = str(ensure_tiny_teacher(app.build))
        check_same_vocab(primary_path, path, f"teachers.apps.{i} ({app.name})")
        if app.backend == "vllm":
            from raykd.teacher.vllm_backend import check_vllm_teacher

            check_vllm_teacher(path, app.as_teacher(), top_k=cfg.loss.top_k, seq_len=cfg.data.seq_len)
        out.append(ResolvedTeacher(app.name, path, model_fingerprint(path)))
    fps = [t.fingerprint for t in out]
    if ts.ensemble is not None:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(primary_path).vocab_size
        if len(out) * cfg.loss.top_k > vocab:  # the mixture has one outcome per teacher's top-k entry
            raise ConfigError(f"teachers.ensemble: {len(out)} teachers x loss.top_k={cfg.loss.top_k} outcomes exceed "
                              f"the vocabulary ({vocab}); lower loss.top_k")
        if len(set(fps)) < len(fps):
            raise ConfigError("teachers.ensemble: two apps serve the same weights (the mixture would be one teacher)")
    return out


def teacher_cpus(cfg: Any) -> float:
    """Logical CPUs the teacher apps other than the primary reserve (the primary is counted as `teacher`)."""
    if cfg.teachers is None:
        return 0.0
    return sum(a.num_replicas * a.num_cpus for a in cfg.teachers.apps[1:])


def launch_teachers(cfg: Any, resolved: list[ResolvedTeacher]) -> list[Any]:
    """Deploy (or re-use) the apps after the primary; returns their handles in `apps` order (the primary's too)."""
    from raykd.teacher.service import launch_teacher, teacher_handle

    if cfg.teachers is None:
        return []
    handles = [teacher_handle(cfg.teachers.primary.app_name)]
    for app, r in zip(cfg.teachers.apps[1:], resolved[1:]):
        handles.append(launch_teacher(app.as_teacher(), r.path, r.fingerprint))
    return handles


class _Routed:
    """Signals of one batch gathered from the teachers its blocks are routed to; `.result()` in batch order."""

    def __init__(self, parts: list[tuple[Any, np.ndarray]], n: int):
        self.parts, self.n = parts, n

    def result(self) -> TeacherSignals:
        got = [(pending.result(), rows) for pending, rows in self.parts]
        if len(got) == 1:
            return got[0][0]
        merged = TeacherSignals.concat([sig for sig, _ in got])
        order = np.empty(self.n, np.int64)
        order[np.concatenate([rows for _, rows in got])] = np.arange(self.n)
        return merged.take_sequences(order)


class _Mixed:
    def __init__(self, pendings: list[Any], weights: list[float], vocab_size: int):
        self.pendings, self.weights, self.vocab_size = pendings, weights, vocab_size

    def result(self) -> TeacherSignals:
        return mix_signals([p.result() for p in self.pendings], self.weights, self.vocab_size)


class MultiSignalSource:
    """The SignalSources of several teachers behind one `submit_step` (routing or ensemble).

    `sources[i]` is teacher i's (raykd/train/signal_source.py); `routes` (n_blocks,) int8 each block's teacher
    (routing) or None (ensemble, mixed with `weights`, which sum to 1)."""

    def __init__(self, names: list[str], sources: list[Any], *, routes: np.ndarray | None = None,
                 weights: list[float] | None = None, vocab_size: int = 0):
        if (routes is None) == (weights is None):
            raise ValueError("MultiSignalSource needs routes (routing) or weights (ensemble)")
        self.names, self.sources, self.routes, self.weights = names, sources, routes, weights
        self.vocab_size = vocab_size
        self.fingerprint = sources[0].fingerprint

    def submit_step(self, batch: Any) -> Any:
        """Start getting the signals of a StepBatch (ids (B, L), index (B,) global block numbers)."""
        ids = batch.ids
        if self.routes is None:
            return _Mixed([s.submit(ids) for s in self.sources], self.weights, self.vocab_size)
        teacher_of = self.routes[np.asarray(batch.index, np.int64)]
        parts = []
        for t in np.unique(teacher_of):
            rows = np.flatnonzero(teacher_of == t)
            parts.append((self.sources[int(t)].submit(ids[rows]), rows))
        return _Routed(parts, len(ids))

    def submit(self, ids: np.ndarray) -> Any:
        """Ensemble only (routing needs the blocks' numbers: `submit_step`)."""
        if self.routes is not None:
            raise ValueError("routed signals need the blocks' numbers: use submit_step")
        return _Mixed([s.submit(ids) for s in self.sources], self.weights, self.vocab_size)

    def counters(self) -> dict[str, float]:
        """The SignalSource counters summed over the teachers, and each teacher's requests and sequences."""
        out: dict[str, float] = {}
        for name, s in zip(self.names, self.sources):
            c = s.counters()
            for k, v in c.items():
                out[k] = out.get(k, 0.0) + v
            out[f"signal_teacher_requests.{name}"] = c["signal_teacher_requests"]
            out[f"signal_teacher_sequences.{name}"] = float(s.teacher_sequences)
        return out

    def metrics(self) -> dict[str, float]:
        from raykd.train.signal_source import SignalSource

        return SignalSource.metrics(self)  # the same all-reduce over workers of `counters()`


def worker_signal_source(cfg: Any, handle: Any, extras: dict | None, routes: Any = None):
    """A Train worker's source of teacher signals: `signal_source` for one teacher, else a MultiSignalSource
    over every app of `cfg.teachers` (`routes`: the blocks' teachers, an ObjectRef or array, for routing)."""
    from raykd.teacher.service import teacher_handle
    from raykd.train.signal_source import signal_source

    ts = cfg.teachers
    if ts is None or len(ts.apps) == 1:
        return signal_source(cfg, handle, extras)
    handles = [handle] + [teacher_handle(a.app_name) for a in ts.apps[1:]]
    sources = [signal_source(cfg, h, extras) for h in handles]
    if ts.routing is not None:
        if routes is not None and not isinstance(routes, np.ndarray):
            import ray

            routes = ray.get(routes)
        if routes is None:
            raise RuntimeError("teachers.routing: the data carries no teacher per block (ingested without routing)")
        return MultiSignalSource(ts.names, sources, routes=np.asarray(routes))
    vocab = handle.info.remote().result().vocab_size
    return MultiSignalSource(ts.names, sources, weights=ts.weights(), vocab_size=vocab)
