"""Where training data comes from: `data.source` resolved into files, cut into chunks, records read and checked.

    chunks = plan_chunks(cfg)                          # list[Chunk]: the units Ray Data reads in parallel
    for where, raw in read_chunk(chunk, cfg): ...      # ("<file>:<line>", record) in file order
    examples = list(iter_examples(cfg))                # every record as an Example, in the driver (small data)

Sources: `builtin` (generated text), `shakespeare` (the public-domain text shipped in raykd/data/corpora/,
the part after the offline teacher's), a `.txt`, `.jsonl` or `.parquet` file, a directory or glob of those,
or a directory written by `datasets` `save_to_disk` (Arrow stream files listed in `state.json`; a
DatasetDict directory is read at `data.split`). Files are read in sorted path order. With `data.task_fraction`
task-suite problems (raykd/data/task_suite.py) are mixed into the one text of `builtin` or `shakespeare`.

A chunk is about `data.chunk_mb` of one file: a byte range cut at line ends (.txt, .jsonl), a run of row
groups (.parquet) or of record batches (Arrow). Planning streams each text file once in 1 MiB reads to find
line ends and count lines, so every record keeps its absolute line number, and, while the first
`data.validate_mb` have not been read, parses and checks each record there (`plan_chunks(..., validate=True)`):
a malformed record is one `DataError` line `<file>:<line>: <problem>` before any cluster starts.

Records become `Example`s (raykd/data/records.py checks them): text (format text, a .txt chunk is one
piece of a document that ends at the end of its file), a conversation (chat) or a prompt and a completion.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raykd.config import ConfigError, DataConfig
from raykd.config.teacher import SHAKESPEARE_TEACHER_CHARS
from raykd.data.records import DataError, example_of

_READ = 1 << 20
CORPORA_DIR = Path(__file__).resolve().parent / "corpora"
SHAKESPEARE_HELDOUT_CHARS = 40_000  # the text's end: used by nothing (kept for probes of the teacher itself)
_KINDS = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class Chunk:
    """One unit of parallel reading: part of one file (or the generated text). Plain data: crosses Ray as a dict."""

    index: int  # position in the source: chunks (and the blocks made from them) keep this order
    kind: str  # builtin | shakespeare | text | jsonl | parquet | arrow
    path: str = ""
    start: int = 0  # bytes (text, jsonl), row group (parquet) or record batch (arrow)
    end: int = 0  # exclusive
    first_line: int = 1  # line (text, jsonl) or row (parquet, arrow) number of the chunk's first record
    last_of_file: bool = True  # text: the document (the file) ends with this chunk
    nbytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shakespeare_text(part: str) -> str:
    """The packaged tinyshakespeare: 'teacher' (the first 900k characters), 'student' (the rest, less the
    last 40k) or 'all'."""
    text = (CORPORA_DIR / "tinyshakespeare.txt").read_text(encoding="utf-8")
    if part == "teacher":
        return text[:SHAKESPEARE_TEACHER_CHARS]
    if part == "student":
        return text[SHAKESPEARE_TEACHER_CHARS:-SHAKESPEARE_HELDOUT_CHARS]
    if part == "all":
        return text
    raise ValueError(f"part must be 'teacher', 'student' or 'all', got {part!r}")


def source_files(cfg: DataConfig, field: str = "data") -> list[tuple[str, Path]]:
    """(kind, path) of every file of `data.source`, sorted; one-line errors for what is not there."""
    src = cfg.source
    path = Path(src).expanduser()
    if any(c in src for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not paths:
            raise ConfigError(f"{field}.source: no file matches {src}")
    elif path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return [("arrow", p) for p in _saved_dataset_files(path, cfg.split, field)]
        paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _KINDS and not p.name.startswith("."))
        if not paths:
            raise ConfigError(f"{field}.source: {path} has no .txt, .jsonl or .parquet file")
    elif path.is_file():
        paths = [path]
    else:
        raise ConfigError(f"{field}.source: file not found: {path}")
    out = []
    for p in paths:
        kind = _KINDS.get(p.suffix)
        if kind is None:
            raise ConfigError(f"{field}.source: {p} must be 'builtin', a .txt, .jsonl or .parquet file, or a "
                              "save_to_disk directory")
        out.append((kind, p))
    if cfg.format != "text" and any(k == "text" for k, _ in out):
        raise ConfigError(f"{field}.format: {cfg.format} needs records; {next(p for k, p in out if k == 'text')} is "
                          "plain text")
    return out


def _saved_dataset_files(path: Path, split: str, field: str) -> list[Path]:
    """The Arrow files of a `save_to_disk` directory (a Dataset, or DatasetDict at `split`)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise ConfigError(f"{field}.split: {path} has splits {splits}, not {split!r}")
        path = path / split
    try:
        state = json.loads((path / "state.json").read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{field}.source: {path}/state.json is not a save_to_disk state ({e})") from None
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"{field}.source: {missing[0]} (listed in {path}/state.json) is missing")
    return files


def plan_chunks(cfg: DataConfig, field: str = "data", validate: bool = True) -> list[Chunk]:
    """Every chunk of the source, in order; with `validate`, the first `validate_mb` checked record by record."""
    if cfg.source == "builtin":
        return [Chunk(0, "builtin", nbytes=cfg.builtin_chars)]
    if cfg.source == "shakespeare":
        return [Chunk(0, "shakespeare", nbytes=len(shakespeare_text("student")))]

    chunk_bytes = max(1, int(cfg.chunk_mb * (1 << 20)))
    budget = [int(cfg.validate_mb * (1 << 20)) if validate else 0]
    chunks: list[Chunk] = []
    records = 0
    files = source_files(cfg, field)
    for kind, path in files:
        if kind in ("text", "jsonl"):
            new, n = _plan_lines(kind, path, chunk_bytes, len(chunks), budget, cfg)
        else:
            new, n = _plan_tables(kind, path, chunk_bytes, len(chunks), budget, cfg)
        chunks += new
        records += n
    if not chunks or records == 0:
        empty = "is empty" if all(kind == "text" for kind, _ in files) else "has no records"
        raise DataError(f"{field}.source: {cfg.source} {empty}")
    return chunks


def _plan_lines(kind: str, path: Path, chunk_bytes: int, first_index: int, budget: list[int], cfg: DataConfig):
    """Cut a text/jsonl file at line ends into chunks of ~chunk_bytes; check records while budget lasts.

    Returns (chunks, records): records counts the checked ones, or 1 for a file that is not blank when
    the budget is spent (the count only serves the "no records" error)."""

    chunks: list[Chunk] = []
    start = pos = lines_before = records = 0
    chunk_line = 1
    pending = b""  # the partial last line of the previous read (while validating)
    nonblank = False
    with path.open("rb") as fh:
        while buf := fh.read(_READ):
            nonblank = nonblank or bool(buf.strip())
            if kind == "jsonl" and budget[0] > 0:
                lines = (pending + buf).split(b"\n")
                pending = lines.pop()
                for i, raw in enumerate(lines):  # lines[0] continues the previous read: line lines_before + 1
                    if budget[0] <= 0:
                        pending = b""
                        break
                    records += _check_line(raw, path, lines_before + 1 + i, cfg)
                    budget[0] -= len(raw) + 1
            # Close chunks at the first line end at or after start + chunk_bytes, as often as this read allows.
            while pos + len(buf) - start >= chunk_bytes:
                cut = buf.find(b"\n", max(0, start + chunk_bytes - 1 - pos))
                if cut < 0:
                    break
                chunks.append(Chunk(first_index + len(chunks), kind, str(path), start, pos + cut + 1, chunk_line,
                                    False, pos + cut + 1 - start))
                chunk_line = lines_before + buf.count(b"\n", 0, cut + 1) + 1
                start = pos + cut + 1
            lines_before += buf.count(b"\n")
            pos += len(buf)
    if kind == "jsonl" and budget[0] > 0 and pending.strip():
        records += _check_line(pending, path, lines_before + 1, cfg)
    if not nonblank:  # an empty or blank file holds nothing
        return [], 0
    if pos > start:
        chunks.append(Chunk(first_index + len(chunks), kind, str(path), start, pos, chunk_line, True, pos - start))
    else:
        last = chunks[-1]
        chunks[-1] = Chunk(last.index, kind, str(path), last.start, last.end, last.first_line, True, last.nbytes)
    return chunks, max(records, int(budget[0] <= 0 or kind == "text"))


def _check_line(raw: bytes, path: Path, line: int, cfg: DataConfig) -> int:
    if not raw.strip():
        return 0
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}:{line}: not valid JSON") from None
    example_of(record, cfg, f"{path}:{line}")
    return 1


def _plan_tables(kind: str, path: Path, chunk_bytes: int, first_index: int, budget: list[int], cfg: DataConfig):
    """Chunks of row groups (Parquet) or record batches (Arrow stream); rows checked while budget lasts."""
    units = _table_units(kind, path)  # (rows, bytes) per row group / record batch
    chunks: list[Chunk] = []
    row = 1
    start, start_row, size = 0, 1, 0
    for i, (rows, nbytes) in enumerate(units):
        size += nbytes
        row += rows
        if size >= chunk_bytes or i == len(units) - 1:
            chunks.append(Chunk(first_index + len(chunks), kind, str(path), start, i + 1, start_row,
                                i == len(units) - 1, size))
            start, start_row, size = i + 1, row, 0
    records = row - 1
    if budget[0] > 0:
        for c in chunks:
            if budget[0] <= 0:
                break
            for where, record in read_chunk(c, cfg):
                example_of(record, cfg, where)
            budget[0] -= c.nbytes
    return chunks, records


def _table_units(kind: str, path: Path) -> list[tuple[int, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            meta = pq.ParquetFile(path).metadata
            return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]
        with pa.memory_map(str(path)) as source:
            return [(b.num_rows, b.nbytes) for b in pa.ipc.open_stream(source)]
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable {kind} file ({str(e).splitlines()[0]})") from None


def read_chunk(chunk: Chunk | dict, cfg: DataConfig) -> Iterator[tuple[str, Any]]:
    """(where, raw record) of one chunk in order; where is "<file>:<line>" (rows for Parquet/Arrow).

    builtin and .txt chunks yield their text as one record (a piece of a document)."""
    c = chunk if isinstance(chunk, Chunk) else Chunk(**chunk)
    if c.kind == "builtin":
        from raykd.data.corpus import generate_corpus

        yield "builtin", _with_tasks(generate_corpus(cfg.builtin_chars, cfg.builtin_seed), cfg)
        return
    if c.kind == "shakespeare":
        yield "shakespeare", _with_tasks(shakespeare_text("student"), cfg)
        return
    if c.kind in ("text", "jsonl"):
        with open(c.path, "rb") as fh:
            fh.seek(c.start)
            data = fh.read(c.end - c.start)
        if c.kind == "text":
            yield f"{c.path}:{c.first_line}", data.decode("utf-8", errors="replace")
            return
        for i, raw in enumerate(data.split(b"\n")):
            if raw.strip():
                try:
                    yield f"{c.path}:{c.first_line + i}", json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise DataError(f"{c.path}:{c.first_line + i}: not valid JSON") from None
        return
    for offset, row in enumerate(_table_rows(c)):
        yield f"{c.path}:{c.first_line + offset}", row


def _table_rows(c: Chunk) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if c.kind == "parquet":
        table = pq.ParquetFile(c.path).read_row_groups(list(range(c.start, c.end)))
        yield from table.to_pylist()
        return
    with pa.memory_map(c.path) as source:
        for i, batch in enumerate(pa.ipc.open_stream(source)):
            if i >= c.end:
                break
            if i >= c.start:
                yield from batch.to_pylist()


def iter_examples(cfg: DataConfig, field: str = "data", chunks: list[Chunk] | None = None):
    """Every record of the source as an Example, in order, in this process (small data and tests)."""

    for c in chunks if chunks is not None else plan_chunks(cfg, field):
        for where, raw in read_chunk(c, cfg):
            yield example_of(raw, cfg, where, c.last_of_file)


def load_texts(cfg: DataConfig, field: str = "data") -> list[str]:
    """The documents of a text source, in the driver: for small held-out sets (pipeline evaluation, masked-LM).

    Training data goes through Ray Data instead (raykd/data/ingest.py)."""
    if cfg.format != "text":
        raise ConfigError(f"{field}.format: {cfg.format} data cannot be read as plain documents here")
    docs: list[str] = []
    piece: list[str] = []
    for ex in iter_examples(cfg, field):
        piece.append(ex.text)
        if ex.ends_document:
            docs.append("".join(piece))
            piece = []
    if piece:
        docs.append("".join(piece))
    return docs


def mb(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MB" if nbytes >= 1 << 20 else f"{math.ceil(nbytes / 1024)} kB"


def _with_tasks(text: str, cfg: DataConfig) -> str:
    if cfg.task_fraction <= 0:
        return text
    from raykd.data.task_suite import TaskSuite, mix_with_tasks

    return mix_with_tasks(text, TaskSuite(), cfg.task_fraction, cfg.builtin_seed)
