"""`raykd capture`: score a whole dataset once with the teacher deployment (Ray Data) into Parquet shards.

    raykd capture --config jobs/configs/capture.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/capture.py --config jobs/configs/capture.yaml

The token blocks are made exactly as `raykd distill` makes them (same `teacher` and `data` sections, the
same Ray Data ingest, raykd/data/ingest.py, and split), so training finds every captured sequence by its
hash: as cache hits when the shards go to the signal cache (the default `output_dir`), or with
`signals.offline_path: <output_dir>` and no teacher queries at all. Pipeline, all in Ray Data: the packed
blocks of the split (`BlockData.blocks`) → drop those already captured (a re-run resumes; the captured
hashes go to the tasks through the object store) → `map_batches(ScoreShard)`: an actor pool of
`concurrency` actors, each taking `sequences_per_shard` sequences, sending them to the Teacher deployment's
`score_packed` in requests of `request_sequences` (all in flight at once), and writing the packed replies as
one shard (raykd/signals/store.py `write_shard`: atomic, page checksums) → the driver prints progress with
rate and ETA from the actors' one-row summaries. The driver never holds the token blocks.

It lives here, with the command, rather than in raykd/signals/: it runs the teacher deployment
(raykd/teacher/), which itself packs signals, so signals/ stays below teacher/.
"""

from __future__ import annotations

import hashlib
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from raykd import console
from raykd.config import CaptureConfig, ConfigError, DistillConfig, LossConfig, SignalsConfig, default_cache_dir
from raykd.console import Progress, duration

say = partial(console.say, scope="raykd.capture")


class ScoreShard:
    """Ray Data actor: one batch of sequences -> one shard of packed signals, written by the actor itself."""

    def __init__(self, app_name: str, top_k: int, out_dir: str, request_sequences: int):
        from raykd.teacher.service import teacher_handle

        self.handle = teacher_handle(app_name)
        self.top_k, self.out_dir, self.request_sequences = top_k, Path(out_dir), request_sequences

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa

        from raykd.signals.format import from_ipc
        from raykd.signals.store import write_shard

        start = time.perf_counter()
        seqs = np.asarray(batch["data"], np.int32)  # (B, L)
        step = self.request_sequences
        replies = [self.handle.score_packed.remote(list(seqs[i : i + step]), self.top_k) for i in range(0, len(seqs), step)]
        table = pa.concat_tables([from_ipc(r.result()) for r in replies])
        # Named by content: a re-run that scores the same sequences replaces the shard instead of duplicating it.
        name = "capture-" + hashlib.blake2b(b"".join(table.column("seq_hash").to_pylist()), digest_size=8).hexdigest()
        path = write_shard(self.out_dir, table, name)
        return {
            "sequences": np.array([len(seqs)]),
            "positions": np.array([int(np.sum(table.column("num_positions").to_numpy()))]),
            "file_bytes": np.array([path.stat().st_size]),
            "seconds": np.array([time.perf_counter() - start]),
        }


def capture_prepare(cfg: CaptureConfig):
    """The distill preparation of this capture's teacher and data (checks before any cluster starts)."""
    from raykd.train.prepare import prepare

    return prepare(DistillConfig(teacher=cfg.teacher, data=cfg.data, loss=LossConfig(top_k=cfg.top_k)))


def split_range(data, split: str) -> tuple[int, int]:
    """Block range [lo, hi) of the split, as `raykd distill` splits (train, held out, or all)."""
    return {"train": (0, data.n_train), "val": (data.val_start, data.n_blocks), "all": (0, data.n_blocks)}[split]


def _not_captured(batch: dict, captured) -> dict:
    from raykd.signals.format import sequence_hash

    keep = np.array([sequence_hash(s) not in captured for s in batch["ids"]], bool)
    return {"data": np.asarray(batch["ids"])[keep]}


def output_directory(cfg: CaptureConfig, fingerprint: str) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir).expanduser()
    from raykd.signals.store import cache_directory

    return cache_directory(SignalsConfig(cache_dir=cfg.cache_dir), fingerprint, cfg.top_k, cfg.teacher.signal_variant)


def run_capture(cfg: CaptureConfig) -> dict[str, Any]:
    import ray

    from raykd.cluster import init_ray, shutdown_ray
    from raykd.data.ingest import ingest
    from raykd.signals.store import SignalStore
    from raykd.teacher.service import launch_teacher

    from raykd.preflight import preflight

    cache = default_cache_dir()
    preflight({"output_dir": cfg.output_dir, "cache_dir": None if cfg.output_dir else (cfg.cache_dir or cache / "signals"),
               "RAYKD_CACHE": cache if cfg.teacher.path is None else None})
    prep = capture_prepare(cfg)
    out = output_directory(cfg, prep.fingerprint)
    vocab = len(prep.tokenizer)
    captured: set[bytes] = set()
    if not cfg.overwrite:
        store = SignalStore(out, fingerprint=prep.fingerprint, top_k=cfg.top_k)  # reports foreign/corrupt shards
        captured = set(store.index)
    tc = cfg.teacher
    started = False
    summary: dict[str, Any] = {"output_dir": str(out), "fingerprint": prep.fingerprint, "shards": 0, "positions": 0,
                               "file_bytes": 0}
    try:
        started = init_ray(tc.num_replicas * tc.num_cpus + cfg.concurrency * cfg.num_cpus_per_actor + 1)
        data = ingest(cfg.data, prep.teacher_path, prep.chat_template, prep.chunks)
        lo, hi = split_range(data, cfg.split)
        ctx = ray.data.DataContext.get_current()
        # Drop what is captured already, then one Ray Data batch per shard (actors write the shards themselves).
        todo = data.blocks(lo, hi).map_batches(_not_captured, batch_format="numpy",
                                               fn_kwargs=dict(captured=captured)).materialize()
        n_todo = todo.count()
        summary.update(sequences=hi - lo, skipped=hi - lo - n_todo)
        say(f"teacher {prep.teacher_path} ({prep.fingerprint}); {hi - lo} {cfg.split} sequences of "
            f"{cfg.data.seq_len} tokens, {hi - lo - n_todo} already captured; top_k={cfg.top_k}; shards -> {out}")
        if n_todo == 0:
            return summary
        handle = launch_teacher(tc, prep.teacher_path, prep.fingerprint)
        info = handle.info.remote().result()
        if cfg.top_k > info.max_top_k:
            raise ConfigError(f"top_k={cfg.top_k} exceeds the teacher's max_top_k={info.max_top_k}")
        if vocab > info.vocab_size:  # token ids the teacher cannot score
            raise ConfigError(f"tokenizer has {vocab} tokens, the teacher's vocab_size is {info.vocab_size}")
        ctx.enable_progress_bars = False  # our own line below carries rate and ETA
        ds = todo.map_batches(
            ScoreShard,
            fn_constructor_kwargs=dict(app_name=tc.app_name, top_k=cfg.top_k, out_dir=str(out),
                                       request_sequences=cfg.request_sequences),
            batch_size=cfg.sequences_per_shard, batch_format="numpy", concurrency=cfg.concurrency,
            num_cpus=cfg.num_cpus_per_actor,
        )
        progress = Progress(n_todo, every_s=0)  # a line per shard: shards take seconds each
        done = 0
        for row in ds.iter_rows():
            done += int(row["sequences"])
            summary["shards"] += 1
            summary["positions"] += int(row["positions"])
            summary["file_bytes"] += int(row["file_bytes"])
            tokens_per_s = summary["positions"] / max(progress.elapsed(), 1e-9)
            say(f"{done}/{n_todo} sequences ({done / n_todo:.0%}), {tokens_per_s:,.0f} teacher tokens/s, "
                f"{summary['file_bytes'] / summary['positions']:.1f} bytes/token on disk, "
                f"eta {duration(progress.eta(done))}")
        summary["seconds"] = progress.elapsed()
        summary["tokens_per_s"] = summary["positions"] / summary["seconds"]
        summary["bytes_per_token"] = summary["file_bytes"] / max(summary["positions"], 1)
    finally:
        shutdown_ray(started)
    say(f"wrote {summary['shards']} shard(s), {summary['positions']:,} positions in {summary['seconds']:.1f}s -> {out}")
    return summary
