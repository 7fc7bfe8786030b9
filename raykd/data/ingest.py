"""Training data through Ray Data: chunks read, tokenized and packed in parallel into the object store.

    data = ingest(cfg.data, tokenizer_path, template, chunks)      # Ray up; chunks = plan_chunks(cfg.data)
    data.n_train, data.n_val, data.stats                            # block counts, PackStats (too long, padding)
    val = data.take(data.n_train_end, data.n_train_end + 64)        # TokenBlocks in this process (small)
    ds = data.window_rows(rank=0, world=2, batch=16, seed=0, first_step=0, end_step=200)   # one worker's rows
    rows = sorted_rows(ds.iter_batches(batch_size=None, batch_format="numpy"))             # ... in step order
    ds = data.blocks(0, data.n_train)                               # block rows in order (capture)

Sources up to `data.driver_ingest_mb` skip the actor pool: the driver runs the same EncodeChunks on each chunk
and puts its row in the object store (identical rows; the pool costs ~10 s to start on a small machine).

Pipeline: `from_items(chunks)` → `map_batches(EncodeChunks)` (an actor pool; each actor loads the tokenizer
once and runs raykd/data/blocks.py `encode_chunk`: read → check → render/tokenize → pack) → one Arrow row per
chunk with its blocks flattened (`ids`, `mask`, `segment`, `weight` lists) and its PackStats. The rows stay in
the object store (Ray spills them to disk when it must); the driver keeps the per-chunk block counts only,
so block `g` of the packed stream is block `g - offsets[c]` of chunk c. The driver never holds the tokens.

Order: the last `n_val` blocks of the stream are held out; training reads blocks `0..n_train-1` in the order
of raykd/data/order.py. `window_rows` gives one Train worker's rows for a window of steps: every chunk row is
exploded into the (position, block) pairs that worker takes there (`stream_positions`), a scan of the
object store that keeps only that worker's rows; the worker orders its window by position (`sorted_rows`;
a window is sized to fit in its memory, raykd/train/batches.py). The result is the same blocks in the same
order as the in-process reference `batch_indices` over `pack_in_process` (tests/data/test_ingest.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from raykd.config import ConfigError, DataConfig
from raykd.console import Progress, say
from raykd.data.blocks import TokenBlocks, encode_chunk, held_out_count
from raykd.data.order import InversePermutations, owner, stream_positions
from raykd.data.packing import PackStats
from raykd.data.sources import Chunk

STAT_FIELDS = ("records", "too_long", "longest_dropped", "first_dropped", "blocks", "tokens", "trained", "padding")


def pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


class EncodeChunks:
    """Ray Data actor: chunk specs (one per batch row) → one Arrow row of packed blocks + stats per chunk."""

    def __init__(self, tokenizer_path: str, data: dict, template: str | None, routing: dict | None = None):
        from transformers import AutoTokenizer

        from raykd.data.records import RecordEncoder
        from raykd.data.routing import Router

        self.router = Router.from_dict(routing) if routing else None  # teachers.routing: blocks per teacher
        self.cfg = DataConfig.model_validate(data)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.encoder = RecordEncoder(tokenizer, self.cfg, template)
        self.pad = pad_id(tokenizer)

    def __call__(self, batch):
        return chunk_table([(row["index"], encode_chunk(row, self.cfg, self.encoder, self.pad, self.router))
                            for row in batch.to_pylist()], self.cfg.weight_field is not None)


def chunk_table(parts: list[tuple[int, Any]], weighted: bool):
    """Arrow table, one row per (chunk index, Packed)."""
    import pyarrow as pa

    def flat(arrays, kind):
        return pa.array([a.reshape(-1) for a in arrays], type=pa.large_list(kind))

    packed = [p for _, p in parts]
    cols = {
        "chunk": pa.array([i for i, _ in parts], pa.int64()),
        "ids": flat([p.ids for p in packed], pa.int32()),
        "mask": flat([p.mask for p in packed], pa.uint8()),
        "segment": flat([p.segment for p in packed], pa.int16()),
    }
    if weighted:
        cols["weight"] = flat([p.weight for p in packed], pa.float32())
    if packed and packed[0].route is not None:  # teachers.routing: each block's teacher (raykd/data/routing.py)
        cols["route"] = pa.array([p.route for p in packed], type=pa.large_list(pa.int8()))
    for name in STAT_FIELDS:
        cols[name] = pa.array([getattr(p.stats, name) for p in packed])
    return pa.table(cols)


def _chunk_stats(table) -> list[dict]:
    return table.select(["chunk", *STAT_FIELDS, *(["route"] if "route" in table.column_names else [])]).to_pylist()


def _data_error(e: BaseException) -> ConfigError | None:
    """The DataError/ConfigError a Ray Data task raised, unwrapped from Ray's exception chain."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, ConfigError):
            return ConfigError(str(x).splitlines()[0])
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return None


def _configure_context(ctx) -> None:
    ctx.enable_progress_bars = False  # raykd prints its own lines (rate, ETA)
    ctx.execution_options.preserve_order = True
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def ingest(cfg: DataConfig, tokenizer_path: str, template: str | None, chunks: list[Chunk], field: str = "data",
           max_actors: int | None = None, routing: dict | None = None) -> "BlockData":
    """Run the Ray Data pipeline over `chunks` (in the driver up to cfg.driver_ingest_mb); raise the first malformed
    record as a one-line ConfigError."""
    import ray

    ctx = ray.data.DataContext.get_current()
    _configure_context(ctx)
    total_bytes = sum(c.nbytes for c in chunks) or 1
    if total_bytes <= cfg.driver_ingest_mb * 2**20:
        return _ingest_in_driver(cfg, tokenizer_path, template, chunks, field, routing)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, min(len(chunks), max_actors or cpus))
    ds = ray.data.from_items([c.to_dict() for c in chunks], override_num_blocks=len(chunks))
    with warnings.catch_warnings():  # Ray 2.60 deprecates max_restarts as a keyword of map_batches; no named one yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(EncodeChunks, fn_constructor_kwargs=dict(tokenizer_path=tokenizer_path,
                                                                     data=cfg.model_dump(), template=template,
                                                                     routing=routing),
                            batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors), num_cpus=1,
                            # no restarts: a lost actor fails the ingest (re-run it) instead of Ray printing that
                            # a restart could not rebuild it (its constructor arguments live in the object store)
                            max_restarts=0)
    stats_of = ray.remote(num_cpus=0)(_chunk_stats)
    bytes_of = {c.index: c.nbytes for c in chunks}
    progress = Progress(total_bytes, every_s=10)
    refs: list[Any] = []
    rows: list[dict] = []
    done_bytes = tokens = 0
    try:
        for bundle in ds.iter_internal_ref_bundles():
            for ref in bundle.block_refs:
                refs.append(ref)
                for row in ray.get(stats_of.remote(ref)):
                    rows.append(row)
                    done_bytes += bytes_of[row["chunk"]]
                    tokens += row["tokens"]
            if progress.due(done_bytes) and len(chunks) > 1:
                say(f"data: {len(rows)}/{len(chunks)} chunks, {tokens:,} tokens "
                    f"({progress.rate(tokens):,.0f} tokens/s, {progress.rate_eta(done_bytes, 'B')})")
    except Exception as e:  # noqa: BLE001 - a malformed record past validate_mb: its one line, not Ray's trace
        err = _data_error(e)
        if err is not None:
            raise err from None
        raise
    return _block_data(cfg, refs, rows, progress.elapsed(), field, "Ray Data")


def _ingest_in_driver(cfg: DataConfig, tokenizer_path: str, template: str | None, chunks: list[Chunk],
                      field: str, routing: dict | None = None) -> "BlockData":
    """The same chunk rows as the Ray Data pipeline, made by EncodeChunks in this process (small sources)."""
    import pyarrow as pa
    import ray

    progress = Progress(1)
    encode = EncodeChunks(tokenizer_path, cfg.model_dump(), template, routing)
    refs, rows = [], []
    for c in chunks:
        table = encode(pa.Table.from_pylist([c.to_dict()]))
        refs.append(ray.put(table))
        rows += _chunk_stats(table)
    return _block_data(cfg, refs, rows, progress.elapsed(), field, "in the driver")


def _block_data(cfg: DataConfig, refs: list, rows: list[dict], seconds: float, field: str, where: str) -> "BlockData":
    import ray

    rows.sort(key=lambda r: r["chunk"])
    stats = PackStats()
    for r in rows:
        stats = stats.add(PackStats(**{k: r[k] for k in STAT_FIELDS}))
    counts = np.array([r["blocks"] for r in rows], np.int64)
    data = BlockData(ray.data.from_arrow_refs(refs), counts, cfg.seq_len, stats, cfg.weight_field is not None,
                     seconds=seconds, made_by=where)
    if rows and "route" in rows[0]:  # teachers.routing: the teacher of every block, in block order
        data.routes = np.concatenate([np.asarray(r["route"], np.int8) for r in rows]).astype(np.int8)
    data.split(cfg.val_fraction, cfg.max_sequences, field)
    return data


@dataclass
class BlockData:
    """Packed blocks in the object store: a Ray Dataset of one row per chunk, and the block counts."""

    chunks: Any  # ray.data MaterializedDataset: chunk, ids/mask/segment(/weight) flattened, stats
    counts: np.ndarray  # (C,) blocks per chunk, in chunk order
    seq_len: int
    stats: PackStats
    weighted: bool = False
    seconds: float = 0.0  # ingest wall time
    made_by: str = "Ray Data"  # or "in the driver" (small sources: raykd/config DataConfig.driver_ingest_mb)
    n_train: int = 0  # blocks trained on: 0..n_train-1
    n_val: int = 0  # held-out blocks: the last n_val of the stream
    routes: np.ndarray | None = None  # (n_blocks,) int8 teacher of each block (teachers.routing), else None

    @property
    def n_blocks(self) -> int:
        return int(self.counts.sum())

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def val_start(self) -> int:
        return self.n_blocks - self.n_val

    def split(self, val_fraction: float | None, max_sequences: int | None, field: str = "data") -> None:
        """Hold out the last round(n * val_fraction) blocks (None: none), train on (at most max_sequences of) the rest."""
        n = self.n_blocks
        if n == 0:
            raise ConfigError(f"{field}.source: no record fits in a block of {self.seq_len} tokens"
                              + (f" ({self.stats.too_long} longer than that)" if self.stats.too_long else ""))
        self.n_val = held_out_count(n, val_fraction, self.seq_len, field) if val_fraction else 0
        self.n_train = min(n - self.n_val, max_sequences or n)

    @classmethod
    def from_arrays(cls, blocks: TokenBlocks) -> "BlockData":
        """Blocks made in this process (sequence-level KD's teacher text) as one chunk in the object store."""
        import ray

        from raykd.data.packing import Packed

        n, seq_len = blocks.ids.shape
        stats = PackStats(records=n, blocks=n, tokens=n * seq_len, trained=int(blocks.mask.sum()))
        packed = Packed(blocks.ids.astype(np.int32), blocks.mask.astype(np.uint8), np.ones((n, seq_len), np.int16),
                        None if blocks.weight is None else blocks.weight.astype(np.float32), stats)
        table = chunk_table([(0, packed)], blocks.weight is not None)
        data = cls(ray.data.from_arrow_refs([ray.put(table)]), np.array([n]), seq_len, stats, blocks.weight is not None)
        data.split(None, None)
        return data

    def describe(self) -> str:
        s = self.stats
        line = (f"{self.n_blocks:,} blocks of {self.seq_len} tokens from {s.records:,} records: {self.n_train:,} train, "
                f"{self.n_val:,} held out; {s.tokens:,} tokens, {s.trained / max(1, s.tokens):.0%} trained, "
                f"{s.padding / max(1, self.n_blocks * self.seq_len):.1%} padding")
        if s.too_long:
            line += (f"; {s.too_long:,} record(s) longer than {self.seq_len} tokens dropped (longest "
                     f"{s.longest_dropped}, first at {s.first_dropped})")
        return line

    def metrics(self) -> dict[str, float]:
        """The ingest's counts, for MLflow."""
        s = self.stats
        return {"data_records": s.records, "data_records_too_long": s.too_long, "data_blocks": self.n_blocks,
                "data_train_blocks": self.n_train, "data_val_blocks": self.n_val, "data_tokens": s.tokens,
                "data_trained_tokens": s.trained, "data_padding_tokens": s.padding,
                "data_ingest_tokens_per_s": s.tokens / max(self.seconds, 1e-9) if self.seconds else 0.0}

    # ------------------------------------------------------------------ reading blocks back
    def blocks(self, lo: int, hi: int):
        """Ray Dataset of the blocks lo <= g < hi, in order: columns index, ids, mask(, weight)."""
        return self.chunks.map_batches(_explode, batch_format="pyarrow", batch_size=None, num_cpus=0,
                                       fn_kwargs=dict(offsets=self.offsets, lo=lo, hi=hi, seq_len=self.seq_len))

    def take(self, lo: int, hi: int) -> TokenBlocks:
        """Blocks lo..hi-1 in this process (small ranges: evaluation, sequence-level KD prompts, tests)."""
        hi = min(hi, self.n_blocks)
        if hi <= lo:
            width = self.seq_len
            return TokenBlocks(np.zeros((0, width), np.int32), np.zeros((0, width), np.uint8),
                               np.zeros((0, width), np.float32) if self.weighted else None, np.zeros(0, np.int64))
        parts = list(self.blocks(lo, hi).iter_batches(batch_size=None, batch_format="numpy"))
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(cat["index"], kind="stable")
        return TokenBlocks(cat["ids"][order], cat["mask"][order], cat["weight"][order] if "weight" in cat else None,
                           cat["index"][order])

    def window_rows(self, rank: int, world: int, batch: int, seed: int, first_step: int, end_step: int):
        """Ray Dataset of the rows worker `rank` trains on at steps first_step..end_step-1 (B per step), in no
        particular order: columns pos (stream position), index, ids, mask(, weight). `sorted_rows` orders them."""
        return window_rows(self.chunks, self.offsets, self.n_train, self.seq_len, rank, world, batch, seed,
                           first_step, end_step)


def window_rows(chunks, offsets: np.ndarray, n_train: int, seq_len: int, rank: int, world: int, batch: int, seed: int,
                first_step: int, end_step: int):
    """`BlockData.window_rows` on the chunk dataset itself (what a Train DataConfig receives)."""
    per_step = batch * world
    # num_cpus=0: a scan of the object store that keeps a few rows; it must run while the Train workers (and a
    # teacher) hold every CPU of the cluster, as they do in a run sized to its cores.
    return chunks.map_batches(_positions, batch_format="pyarrow", batch_size=16, num_cpus=0, fn_kwargs=dict(
        offsets=offsets, n=n_train, seed=seed, lo=first_step * per_step, hi=end_step * per_step, batch=batch,
        world=world, rank=rank, seq_len=seq_len))


def sorted_rows(batches) -> dict[str, np.ndarray]:
    """The numpy batches of a `window_rows` dataset, concatenated and ordered by stream position."""
    parts = [b for b in batches if len(b["pos"])]
    if not parts:
        return {}
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cat["pos"], kind="stable")
    return {k: v[order] for k, v in cat.items()}


def _blocks_of(table, offsets: np.ndarray):
    """Per chunk row: (global index of its first block, ids (n, L), mask, weight or None)."""
    for i in range(table.num_rows):
        c = table.column("chunk")[i].as_py()
        ids = table.column("ids")[i].values.to_numpy()
        n = int(offsets[c + 1] - offsets[c])
        if n == 0:
            continue
        width = len(ids) // n
        yield (int(offsets[c]), ids.reshape(n, width), table.column("mask")[i].values.to_numpy().reshape(n, width),
               table.column("weight")[i].values.to_numpy().reshape(n, width) if "weight" in table.column_names else None)


def _rows(parts: list[dict], seq_len: int, weighted: bool, with_pos: bool) -> dict[str, np.ndarray]:
    """Concatenated numpy columns (Ray Data stores (m, L) arrays as tensor columns); (0, L) when none."""
    names = (["pos"] if with_pos else []) + ["index", "ids", "mask"] + (["weight"] if weighted else [])
    if not parts:
        empty = {"pos": np.zeros(0, np.int64), "index": np.zeros(0, np.int64),
                 "ids": np.zeros((0, seq_len), np.int32), "mask": np.zeros((0, seq_len), np.uint8),
                 "weight": np.zeros((0, seq_len), np.float32)}
        return {k: empty[k] for k in names}
    return {k: np.concatenate([p[k] for p in parts]) for k in names}


def _explode(table, offsets: np.ndarray, lo: int, hi: int, seq_len: int):
    """Chunk rows → block rows with lo <= index < hi."""
    out = []
    for first, ids, mask, weight in _blocks_of(table, offsets):
        g = np.arange(first, first + len(ids))
        keep = np.flatnonzero((g >= lo) & (g < hi))
        if len(keep):
            out.append({"index": g[keep], "ids": ids[keep], "mask": mask[keep],
                        "weight": None if weight is None else weight[keep]})
    return _rows(out, seq_len, "weight" in table.column_names, with_pos=False)


def _positions(table, offsets: np.ndarray, n: int, seed: int, lo: int, hi: int, batch: int, world: int, rank: int,
               seq_len: int):
    """Chunk rows → (pos, block) rows of worker `rank` at stream positions lo <= pos < hi (training blocks only)."""
    inverse = InversePermutations(n, seed)
    out = []
    for first, ids, mask, weight in _blocks_of(table, offsets):
        g = np.arange(first, first + len(ids))
        train = np.flatnonzero(g < n)
        if not len(train):
            continue
        pos, which = stream_positions(g[train], n, seed, lo, hi, inverse)
        mine = owner(pos, batch, world) == rank
        pos, rows = pos[mine], train[which[mine]]
        if len(rows):
            out.append({"pos": pos, "index": g[rows], "ids": ids[rows], "mask": mask[rows],
                        "weight": None if weight is None else weight[rows]})
    return _rows(out, seq_len, "weight" in table.column_names, with_pos=True)
