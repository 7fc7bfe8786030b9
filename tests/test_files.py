"""Atomic files and directories: a reader sees the old version or the new one, never half of either."""

from __future__ import annotations

import threading

import pytest

from raykd.files import atomic_dir, atomic_file, build_once, stale_temporaries, write_text


def test_atomic_dir_replaces_only_on_success(tmp_path):
    dest = tmp_path / "model"
    with atomic_dir(dest) as tmp:
        (tmp / "weights").write_text("v1")
        assert not dest.exists()  # nothing at the destination until the block ends
    assert (dest / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (dest / "weights").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_dir(dest) as tmp:
        (tmp / "other").write_text("v2")
    assert sorted(p.name for p in dest.iterdir()) == ["other"]  # replaced whole, not merged
    assert stale_temporaries(dest) == []


def test_atomic_file_and_write_text(tmp_path):
    path = tmp_path / "sub" / "rows.json"
    write_text(path, "[1]")
    with pytest.raises(ValueError), atomic_file(path) as tmp:
        tmp.write_text("[1, 2")
        raise ValueError("bad")
    assert path.read_text() == "[1]" and [p.name for p in path.parent.iterdir()] == ["rows.json"]


def test_build_once_builds_once_and_clears_a_killed_builds_leftovers(tmp_path):
    dest = tmp_path / "teacher"
    (tmp_path / ".teacher.tmp-killed").mkdir()  # what an interrupted atomic_dir leaves
    calls = []

    def build():
        calls.append(1)
        with atomic_dir(dest) as tmp:
            (tmp / "done").write_text("x")

    threads = [threading.Thread(target=build_once, args=(dest, lambda p: (p / "done").is_file(), build))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and (dest / "done").is_file() and stale_temporaries(dest) == []
    assert build_once(dest, lambda p: (p / "done").is_file(), build) is False
