"""The packed teacher-signal format: `TeacherSignals` <-> Arrow record batches (memory, wire and disk).

Pure: numpy + pyarrow, no Ray, no torch, no files (IPC bytes are built in memory).

    batch = pack(signals, vocab_size=4096, teacher_fingerprint=fp, seq_hashes=[sequence_hash(s) for s in seqs])
    wire = to_ipc(batch)                               # bytes: what a Serve reply or a cache shard carries
    back = unpack(from_ipc(wire), expect_fingerprint=fp, expect_top_k=20)   # TeacherSignals, float32
    bytes_per_token(batch)                             # ≈ 86.5 at k=20, vocab 128k

Layout (version 1). One Arrow row per *sequence*; sequence b has n_b scored positions (see
raykd/signals/teacher_signals.py), so the list of `num_positions` is the sequence offsets (offsets = cumsum). Each
per-position array of a sequence is one binary value, so a row is self-contained (a cache entry) and
rows can be sliced, taken and concatenated without re-encoding:

    seq_hash        fixed_size_binary(16), nullable   blake2b-128 of the sequence's int32 token ids (the key)
    num_positions   int32                             n_b
    topk_ids        binary   n_b*k ids of `id_bits` = ceil(log2(vocab)) bits each, position-major, MSB first,
                             zero-padded to a whole byte (np.packbits order)
    topk_logprobs   binary   n_b*k float16, little-endian
    tail_logprob    binary   n_b float16 (log mass outside the top-k; -inf when k = vocab)
    target_logprob  binary   n_b float16 (log-prob of the actual next token)
    extra.<name>    binary   optional: n_b * prod(shape) values of the dtype named in the metadata

Schema metadata (all values are UTF-8 strings): `raykd.format` = "teacher-signals", `raykd.version`,
`raykd.teacher_fingerprint`, `raykd.top_k`, `raykd.vocab_size`, `raykd.id_bits`, `raykd.logprob_dtype`
= "float16", `raykd.extras` = JSON {name: {"dtype": str, "shape": [...]}} (trailing shape per position).

Why float16 for log-probs (and not a scaled uint16): log-probs live in (-inf, 0]; float16 has relative
precision 2^-11, so the positions that carry the KL (log p near 0, i.e. large p) are stored with an
absolute error below 2.5e-4, the far tail (log p ≈ -10, p ≈ 5e-5) with ~4e-3 but weighted by its tiny
p; -inf (k = vocab) is native. A fixed-step uint16 over [-64, 0] has a uniform 5e-4 step: worse where
the mass is and it needs a sentinel for -inf. Measured on real teacher signals (benchmarks/
signals_bench.py, tests/signals/test_format.py) the KD loss from the packed form is within ~1e-4
relative of the unpacked one (issue bound: 1e-3).

Bytes per scored token at top-k with vocabulary V: k*ceil(log2 V)/8 + 2k + 4 (+ ~40 bytes per sequence
for the hash, the count and the Arrow offsets): 86.5 at k=20, V=128256 (17-bit ids); 74 at V=4096.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raykd.signals.teacher_signals import TeacherSignals

FORMAT_NAME = "teacher-signals"
FORMAT_VERSION = 1
HASH_BYTES = 16
LOGPROB_DTYPE = np.dtype("<f2")
_PER_POSITION = ("topk_logprobs", "tail_logprob", "target_logprob")


class SignalFormatError(ValueError):
    """Packed signals that cannot be trusted: wrong version, teacher or top-k, or inconsistent bytes."""


@dataclass(frozen=True)
class SignalMeta:
    """What the schema metadata of a packed batch says."""

    version: int
    teacher_fingerprint: str
    top_k: int
    vocab_size: int
    id_bits: int
    extras: dict[str, dict] = field(default_factory=dict)


def id_bits(vocab_size: int) -> int:
    """Bits per token id: ceil(log2(vocab_size)), at least 1."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return max(1, math.ceil(math.log2(vocab_size)))


def sequence_hash(tokens: np.ndarray) -> bytes:
    """Key of a token sequence: blake2b-128 of its ids as little-endian int32."""
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype="<i4").tobytes(), digest_size=HASH_BYTES).digest()


def schema(meta: SignalMeta) -> pa.Schema:
    fields = [
        pa.field("seq_hash", pa.binary(HASH_BYTES)),
        pa.field("num_positions", pa.int32(), nullable=False),
        pa.field("topk_ids", pa.binary(), nullable=False),
        *(pa.field(name, pa.binary(), nullable=False) for name in _PER_POSITION),
        *(pa.field(f"extra.{name}", pa.binary(), nullable=False) for name in sorted(meta.extras)),
    ]
    metadata = {
        "raykd.format": FORMAT_NAME,
        "raykd.version": str(meta.version),
        "raykd.teacher_fingerprint": meta.teacher_fingerprint,
        "raykd.top_k": str(meta.top_k),
        "raykd.vocab_size": str(meta.vocab_size),
        "raykd.id_bits": str(meta.id_bits),
        "raykd.logprob_dtype": "float16",
        "raykd.extras": json.dumps(meta.extras, sort_keys=True),
    }
    return pa.schema(fields, metadata=metadata)


def read_meta(s: pa.Schema) -> SignalMeta:
    """Parse and check the schema metadata; raises SignalFormatError on anything unexpected."""
    md = {k.decode(): v.decode() for k, v in (s.metadata or {}).items()}
    if md.get("raykd.format") != FORMAT_NAME:
        raise SignalFormatError("not a raykd teacher-signals table (schema metadata raykd.format missing)")
    try:
        meta = SignalMeta(
            version=int(md["raykd.version"]),
            teacher_fingerprint=md["raykd.teacher_fingerprint"],
            top_k=int(md["raykd.top_k"]),
            vocab_size=int(md["raykd.vocab_size"]),
            id_bits=int(md["raykd.id_bits"]),
            extras=json.loads(md.get("raykd.extras", "{}")),
        )
    except (KeyError, ValueError) as e:
        raise SignalFormatError(f"bad teacher-signals schema metadata ({e})") from None
    if meta.version != FORMAT_VERSION:
        raise SignalFormatError(f"teacher-signals format version {meta.version}; this raykd reads {FORMAT_VERSION}")
    if md.get("raykd.logprob_dtype") != "float16" or meta.id_bits != id_bits(meta.vocab_size):
        raise SignalFormatError("teacher-signals metadata is inconsistent (logprob dtype or id bits)")
    return meta


# --------------------------------------------------------------------------------------------- bits
def pack_ids(ids: np.ndarray, bits: int) -> bytes:
    """Non-negative ints (any shape) -> `bits` bits each, MSB first, zero-padded to a byte."""
    flat = np.ascontiguousarray(ids, dtype=np.uint32).reshape(-1)
    # Big-endian bytes -> their bits (C loops, uint8 throughout) -> the low `bits` of each: 2-3x faster at
    # k = 64 than shifting a (count, bits) uint32 matrix, byte-identical.
    width = 16 if bits <= 16 else 32
    be = flat.astype(">u2" if width == 16 else ">u4").view(np.uint8).reshape(-1, width // 8)
    return np.packbits(np.unpackbits(be, axis=1)[:, width - bits :]).tobytes()


def unpack_ids(blob: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of pack_ids: `count` ids as int32."""
    bit_array = np.unpackbits(np.frombuffer(blob, np.uint8), count=count * bits).reshape(count, bits)
    weights = np.left_shift(np.uint32(1), np.arange(bits - 1, -1, -1, dtype=np.uint32))
    return (bit_array.astype(np.uint32) @ weights).astype(np.int32)


def packed_id_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# --------------------------------------------------------------------------------------------- pack
def pack(
    signals: TeacherSignals,
    *,
    vocab_size: int,
    teacher_fingerprint: str,
    seq_hashes: list[bytes] | None = None,
) -> pa.RecordBatch:
    """TeacherSignals (B sequences) -> a RecordBatch of B rows in the layout above."""
    k = signals.top_k
    bits = id_bits(vocab_size)
    ids = np.asarray(signals.topk_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"topk_ids outside [0, {vocab_size})")
    if seq_hashes is not None and len(seq_hashes) != signals.num_sequences:
        raise ValueError(f"{len(seq_hashes)} seq_hashes for {signals.num_sequences} sequences")
    extras_meta = {
        name: {"dtype": np.asarray(a).dtype.str, "shape": list(np.asarray(a).shape[1:])}
        for name, a in signals.extras.items()
    }
    meta = SignalMeta(FORMAT_VERSION, teacher_fingerprint, k, vocab_size, bits, extras_meta)
    offsets = np.asarray(signals.offsets, np.int64)
    counts = np.diff(offsets)
    # float16 saturates to -inf below -65504: log-probs never get there except as -inf itself.
    per_pos = {name: np.asarray(getattr(signals, name), np.float32).astype(LOGPROB_DTYPE) for name in _PER_POSITION}
    extras = {name: np.ascontiguousarray(a) for name, a in signals.extras.items()}
    columns: dict[str, list] = {name: [] for name in schema(meta).names}
    for b in range(signals.num_sequences):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        columns["topk_ids"].append(pack_ids(ids[lo:hi], bits))
        for name, arr in per_pos.items():
            columns[name].append(arr[lo:hi].tobytes())
        for name, arr in extras.items():
            columns[f"extra.{name}"].append(arr[lo:hi].tobytes())
    columns["seq_hash"] = list(seq_hashes) if seq_hashes is not None else [None] * signals.num_sequences
    columns["num_positions"] = counts.astype(np.int32)
    s = schema(meta)
    return pa.RecordBatch.from_arrays([pa.array(columns[f.name], f.type) for f in s], schema=s)


def unpack(
    data: pa.RecordBatch | pa.Table,
    *,
    expect_fingerprint: str | None = None,
    expect_top_k: int | None = None,
) -> TeacherSignals:
    """Packed rows -> TeacherSignals (float32 log-probs, int32 ids). Checks metadata and every blob's size."""
    meta = read_meta(data.schema)
    if expect_fingerprint is not None and meta.teacher_fingerprint != expect_fingerprint:
        raise SignalFormatError(
            f"signals are from teacher {meta.teacher_fingerprint}, expected {expect_fingerprint}"
        )
    if expect_top_k is not None and meta.top_k != expect_top_k:
        raise SignalFormatError(f"signals have top_k={meta.top_k}, expected {expect_top_k}")
    k, bits = meta.top_k, meta.id_bits
    counts = np.asarray(data.column("num_positions").to_numpy(zero_copy_only=False), np.int64)
    if (counts < 0).any():
        raise SignalFormatError("negative num_positions")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(offsets[-1])

    def blobs(name: str) -> list[bytes]:
        col = data.column(name)
        if col.null_count:
            raise SignalFormatError(f"column {name} has nulls")
        return col.to_pylist()

    id_blobs = blobs("topk_ids")
    ids = np.empty((n, k), np.int32)
    for b, blob in enumerate(id_blobs):
        c = int(counts[b])
        if len(blob) != packed_id_bytes(c * k, bits):
            raise SignalFormatError(f"row {b}: topk_ids has {len(blob)} bytes, expected {packed_id_bytes(c * k, bits)}")
        ids[offsets[b] : offsets[b + 1]] = unpack_ids(blob, c * k, bits).reshape(c, k)
    if n and ids.max() >= meta.vocab_size:
        raise SignalFormatError(f"topk_ids outside the vocabulary ({meta.vocab_size})")

    def join(name: str, width: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        parts = blobs(name)
        buf = b"".join(parts)
        expected = n * width * dtype.itemsize
        if len(buf) != expected or any(len(p) != c * width * dtype.itemsize for p, c in zip(parts, counts)):
            raise SignalFormatError(f"column {name} has {len(buf)} bytes, expected {expected}")
        return np.frombuffer(buf, dtype).reshape((n, *shape))

    topk_lp = join("topk_logprobs", k, LOGPROB_DTYPE, (k,)).astype(np.float32)
    tail = join("tail_logprob", 1, LOGPROB_DTYPE, ()).astype(np.float32)
    target = join("target_logprob", 1, LOGPROB_DTYPE, ()).astype(np.float32)
    if (topk_lp > 0).any() or np.isnan(topk_lp).any():
        raise SignalFormatError("topk_logprobs has values > 0 or NaN")
    extras = {}
    for name, spec in meta.extras.items():
        shape = tuple(int(d) for d in spec["shape"])
        extras[name] = join(f"extra.{name}", int(np.prod(shape, dtype=np.int64)), np.dtype(spec["dtype"]), shape)
    return TeacherSignals(ids, topk_lp, tail, target, offsets, extras)


def bytes_per_token(data: pa.RecordBatch | pa.Table) -> float:
    """Arrow buffer bytes (all columns, offsets and metadata-free) per scored position."""
    positions = int(np.sum(data.column("num_positions").to_numpy(zero_copy_only=False)))
    return data.nbytes / max(positions, 1)


# --------------------------------------------------------------------------------------------- wire
def to_ipc(batch: pa.RecordBatch | pa.Table) -> bytes:
    """Arrow IPC stream bytes (schema + metadata + batches): the wire form."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as e:  # OSError: a truncated stream
        raise SignalFormatError(f"not a valid Arrow IPC stream ({e})") from None
