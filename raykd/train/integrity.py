"""Checksums of checkpoints and exported students, and falling back from a damaged checkpoint on resume.

    write_checksums(directory, rank=0, writers=1)    # last, after every file of this rank is written
    checksum_problem(directory)                      # None, or why the directory is not what was written
    path = whole_checkpoint(Path(ckpt.path), tell)   # the latest whole checkpoint: this one or an earlier one

Each rank that writes files into a checkpoint (rank 0 under DDP; every rank under FSDP, whose files Ray Train
merges into one directory) lists their sizes and sha256 in `checksums.rank<r>.json`, written after them;
rank 0's also says how many ranks wrote. A checkpoint whose files are missing, truncated or changed (a disk
that filled during an upload, a copy cut short, bit rot) is reported in one line on resume and the newest
earlier checkpoint that is whole is used instead (Ray Train keeps two: `CheckpointConfig(num_to_keep=2)`).
A checkpoint with no checksums at all was written before raykd wrote them: it is used as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from raykd.files import write_text

CHECKSUMS = "checksums.rank{rank}.json"


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_checksums(directory: Path, rank: int = 0, writers: int = 1) -> Path:
    """List every file now in `directory` (except other checksum lists) with its size and sha256."""
    directory = Path(directory)
    files = {str(f.relative_to(directory)): {"size": f.stat().st_size, "sha256": _sha256(f)}
             for f in sorted(directory.rglob("*")) if f.is_file() and not f.name.startswith("checksums.")}
    return write_text(directory / CHECKSUMS.format(rank=rank), json.dumps({"writers": writers, "files": files}))


def checksum_problem(directory: Path) -> str | None:
    """Why `directory` is not whole (a missing list or file, a size or hash that differs), or None."""
    directory = Path(directory)
    lists = sorted(directory.glob(CHECKSUMS.format(rank="*")))
    if not lists:
        return None  # written before checksums existed
    try:
        listed = {p.name: json.loads(p.read_text()) for p in lists}
    except (OSError, ValueError) as e:
        return f"unreadable checksums ({e})"
    writers = listed.get(CHECKSUMS.format(rank=0), {}).get("writers")
    if writers is None:
        return f"{CHECKSUMS.format(rank=0)} is missing"
    missing = [CHECKSUMS.format(rank=r) for r in range(writers) if CHECKSUMS.format(rank=r) not in listed]
    if missing:
        return f"{missing[0]} is missing"
    for content in listed.values():
        for name, want in content.get("files", {}).items():
            f = directory / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != want["size"]:
                return f"{name} has {f.stat().st_size} bytes, {want['size']} were written"
            if _sha256(f) != want["sha256"]:
                return f"{name} differs from what was written (sha256)"
    return None


def whole_checkpoint(path: Path, tell: Callable[[str], None]) -> Path:
    """`path` if whole; else the newest earlier checkpoint beside it that is whole, said in one line by `tell`.
    Raises RuntimeError (one line) when none is."""
    from raykd.train.checkpoint import checkpoint_step

    path = Path(path)
    problem = checksum_problem(path)
    if problem is None:
        return path
    newest = checkpoint_step(path)
    earlier = sorted(((checkpoint_step(d), d) for d in path.parent.glob("checkpoint_*") if d.is_dir() and d != path),
                     key=lambda sd: -1 if sd[0] is None else sd[0], reverse=True)
    for step, d in earlier:
        if step is not None and (newest is None or step < newest) and checksum_problem(d) is None:
            tell(f"checkpoint {path.name} is damaged ({problem}); resuming from the previous one, {d.name} "
                 f"(step {step})")
            return d
    raise RuntimeError(f"checkpoint {path} is damaged ({problem}) and no earlier whole checkpoint is beside it")
