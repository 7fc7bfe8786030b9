"""Each Train worker's batches, from Ray Data through `ray.train.get_dataset_shard`, in the seeded order.

Driver side (raykd/train/fit.py `make_trainer`):

    windows = plan_windows(data.n_train, data.seq_len, batch=16, world=2, first_step=0, max_steps=200)
    datasets, dataset_config = train_datasets(data, cfg, windows)    # -> TorchTrainer(datasets=..., dataset_config=...)

Worker side (raykd/train/loop.py):

    for batch in step_batches(loop, rank, world, start_step):        # StepBatch: ids, mask, weight, index (B, L)
        ...

The steps of a run are cut into windows of at most `WINDOW_TOKENS` tokens per worker. For window w every
worker gets the Ray Dataset `train.<w>` from `StepOrderData.configure`: the packed chunks in the object store
(raykd/data/ingest.py) scanned for the (position, block) rows this worker takes in those steps. The worker
reads its window, orders it by stream position and yields B rows per step; the next window is read in a
background thread meanwhile, so at most two windows are in a worker's memory. The order is
raykd/data/order.py's: the same blocks at the same steps as the in-process reference.

Resume: a run restarted from a checkpoint at step s needs the rows from s on. The driver plans the windows
from `resume_point` (the oldest checkpoint step present, so never later than the one the workers load; a
whole checkpoint Ray Train's snapshot does not list is loaded as `init_checkpoint`); the worker skips the rows of the steps between that and its checkpoint's step.

`RAYKD_BATCH_TRACE=<dir>` (in the driver's environment; it travels in the loop config): every worker appends `{"step", "rank", "index": [blocks]}` lines to
`<dir>/rank<r>.jsonl` (tests check that a killed and resumed run trains on every sample).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # Ray Train's ingest hook; the class below is only used where Ray is installed (always, with raykd)
    from ray.train import DataConfig as _TrainDataConfig
except ImportError:  # pragma: no cover
    _TrainDataConfig = object

WINDOW_TOKENS = 1 << 24  # tokens of one worker's window (~115 MB of ids + mask; two windows in memory at most)
TRACE_ENV = "RAYKD_BATCH_TRACE"


@dataclass
class StepBatch:
    ids: np.ndarray  # (B, L) int32 token ids
    mask: np.ndarray  # (B, L) uint8: 1 = the token is trained (raykd/data/records.py)
    weight: np.ndarray | None  # (B, L) float32 per-token sample weights, or None
    index: np.ndarray  # (B,) global block numbers


def window_name(w: int) -> str:
    return f"train.{w}"


def plan_windows(n_train: int, seq_len: int, batch: int, world: int, first_step: int, max_steps: int,
                 window_tokens: int = WINDOW_TOKENS) -> list[tuple[int, int]]:
    """Step ranges [s0, s1) covering first_step..max_steps-1, each at most window_tokens per worker."""
    steps = max(1, window_tokens // (seq_len * batch))
    return [(s, min(s + steps, max_steps)) for s in range(first_step, max_steps, steps)]


def resume_point(storage_path: str | Path, name: str, init_checkpoint: str | None = None) -> tuple[int, str | None]:
    """Where a run named `name` resumes: (the step to plan its data from, a checkpoint for the loop to load
    when Ray Train restores none (`LoopConfig.init_checkpoint`), or None).

    The step is the oldest checkpoint present (or init_checkpoint's), never later than the one the workers
    load. Ray Train restores the latest checkpoint its snapshot (`checkpoint_manager_snapshot.json`) lists; a
    driver killed after a checkpoint was written but before the controller recorded it (or before the first
    snapshot) leaves whole checkpoints Ray does not know of: the newest whole one is then handed to the loop, so no finished step is trained again and the data plan holds."""
    from raykd.train.checkpoint import checkpoint_step
    from raykd.train.integrity import CHECKSUMS, checksum_problem

    if init_checkpoint:
        return checkpoint_step(init_checkpoint) or 0, None
    run = Path(storage_path, name)
    present = {d: checkpoint_step(d) for d in run.glob("checkpoint_*") if d.is_dir()}
    present = {d: s for d, s in present.items() if s is not None}
    if not present:
        return 0, None
    first = min(present.values())
    try:
        snapshot = (run / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        snapshot = ""
    if any(d.name in snapshot for d in present):
        return first, None  # Ray Train restores its latest recorded checkpoint, at or after `first`
    whole = [(s, d) for d, s in present.items()
             if any(d.glob(CHECKSUMS.format(rank="*"))) and checksum_problem(d) is None]
    return first, (str(max(whole)[1]) if whole else None)


class StepOrderData(_TrainDataConfig):
    """Ray Train DataConfig: dataset `train.<w>` becomes, for each worker, its rows of window w."""

    def __init__(self, offsets: np.ndarray, n_train: int, seq_len: int, batch: int, seed: int,
                 windows: list[tuple[int, int]]):
        super().__init__(datasets_to_split=[])
        self.offsets, self.n_train, self.seq_len = offsets, n_train, seq_len
        self.batch, self.seed, self.windows = batch, seed, windows

    def configure(self, datasets: dict, world_size: int, worker_handles=None, worker_node_ids=None, **kwargs):
        from raykd.data.ingest import window_rows

        out: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, chunks in datasets.items():
            s0, s1 = self.windows[int(name.rsplit(".", 1)[1])]
            for rank in range(world_size):
                rows = window_rows(chunks, self.offsets, self.n_train, self.seq_len, rank, world_size, self.batch,
                                   self.seed, s0, s1)
                out[rank][name] = rows.iterator()
        return out


def train_datasets(data, cfg, windows: list[tuple[int, int]]) -> tuple[dict[str, Any], StepOrderData]:
    """TorchTrainer `datasets` and `dataset_config` for `data` (a BlockData) and these windows."""
    datasets = {window_name(w): data.chunks for w in range(len(windows))}
    step_blocks = cfg.train.batch_size * cfg.train.grad_accum_steps  # one worker's blocks per optimizer step
    return datasets, StepOrderData(data.offsets, data.n_train, data.seq_len, step_blocks, cfg.seed, windows)


def _read_window(iterator) -> dict[str, np.ndarray]:
    from raykd.data.ingest import sorted_rows

    return sorted_rows(iterator.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))


def step_batches(windows: list[tuple[int, int]], batch: int, start_step: int, shard=None,
                 rank: int = 0, trace_dir: str | None = None) -> Iterator[StepBatch]:
    """This worker's batches for steps start_step.. to the end of the last window.

    `shard(name)` returns the DataIterator of a window (default `ray.train.get_dataset_shard`); `trace_dir`
    (default $RAYKD_BATCH_TRACE) receives each step's block numbers."""
    if shard is None:
        import ray.train

        shard = ray.train.get_dataset_shard
    todo = [(w, s0, s1) for w, (s0, s1) in enumerate(windows) if s1 > start_step]
    if todo and start_step < todo[0][1]:
        raise RuntimeError(f"resuming at step {start_step}, but the data was planned from step {todo[0][1]}")
    iterators = {w: shard(window_name(w)) for w, _, _ in todo}  # in this thread: Train's context lives here
    trace = _tracer(rank, trace_dir)
    with ThreadPoolExecutor(1, thread_name_prefix="raykd-window") as pool:
        pending = pool.submit(_read_window, iterators[todo[0][0]]) if todo else None
        for i, (w, s0, s1) in enumerate(todo):
            rows = pending.result()
            pending = pool.submit(_read_window, iterators[todo[i + 1][0]]) if i + 1 < len(todo) else None
            if len(rows.get("index", ())) != (s1 - s0) * batch:
                raise RuntimeError(f"window {w} has {len(rows.get('index', ()))} rows, expected {(s1 - s0) * batch}")
            for step in range(max(s0, start_step), s1):
                at = slice((step - s0) * batch, (step - s0 + 1) * batch)
                out = StepBatch(rows["ids"][at], rows["mask"][at], rows["weight"][at] if "weight" in rows else None,
                                rows["index"][at])
                trace(step, out.index)
                yield out
            del rows


def _tracer(rank: int, directory: str | None = None):
    directory = directory or os.environ.get(TRACE_ENV)
    if not directory:
        return lambda step, index: None
    path = Path(directory) / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def trace(step: int, index: np.ndarray) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps({"step": step, "rank": rank, "index": [int(i) for i in index]}) + "\n")

    return trace
