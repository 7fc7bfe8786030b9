"""Files that are never half-written: every file and directory raykd leaves behind appears whole or not at all.

    with atomic_dir(out_dir) as tmp:          # a temporary directory beside out_dir
        model.save_pretrained(tmp)            # ... moved into place (replacing out_dir) when the block ends
    with atomic_file(path) as tmp:            # a temporary file beside path, renamed to path at the end
        pq.write_table(table, tmp)
    write_text(path, text)                    # atomic_file for a string
    with file_lock(lock_path): ...            # one process at a time (fcntl)
    build_once(dest, is_complete, build)      # a cache entry built by one process, the others wait for it

The temporary names start with a dot and the destination's name, so readers that list a directory skip
them and a killed writer's leftovers are recognisable (`stale_temporaries`). On an error the temporary is
removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty directory beside `dest`; on success it replaces `dest` (an existing one is moved aside
    first, then removed), on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; give it the permissions a mkdir would
    try:
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest` to write; on success it is renamed to `dest`, on error removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(dest: str | Path, text: str) -> Path:
    """`dest.write_text(text)`, atomically."""
    with atomic_file(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def stale_temporaries(dest: str | Path) -> list[Path]:
    """Temporaries an interrupted `atomic_dir`/`atomic_file` for `dest` left behind (call under a lock)."""
    dest = Path(dest)
    return sorted(dest.parent.glob(f".{dest.name}.*")) if dest.parent.is_dir() else []


@contextlib.contextmanager
def file_lock(path: str | Path, on_wait=None) -> Iterator[None]:
    """Hold an exclusive `fcntl` lock on `path` (created if needed); `on_wait()` is called if another holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(dest: str | Path, is_complete: Callable[[Path], bool], build: Callable[[], object],
               on_wait: Callable[[], None] | None = None) -> bool:
    """Make sure `dest` is complete: if not, `build()` it under a lock (`<dest>.lock` beside it) after removing
    what an interrupted build left; concurrent callers wait, then find it complete. True if this call built."""
    dest = Path(dest)
    if is_complete(dest):
        return False
    with file_lock(dest.parent / f"{dest.name}.lock", on_wait):
        if is_complete(dest):
            return False
        for stale in stale_temporaries(dest):  # we hold the lock: no build of dest is running
            shutil.rmtree(stale, ignore_errors=True)
        build()
    return True
