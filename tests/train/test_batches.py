"""A worker's batches from its window datasets: step order, windows, resume inside a window, the trace."""

import json

import numpy as np
import pytest

from raykd.data.order import batch_indices, owner, stream_positions
from raykd.train.batches import TRACE_ENV, plan_windows, resume_point, step_batches, window_name

N, L, B, WORLD, SEED = 13, 6, 3, 2, 7
IDS = np.arange(N * L, dtype=np.int32).reshape(N, L)


class _Shard:
    """What get_dataset_shard returns for one window: its rows in arbitrary order, in pieces."""

    def __init__(self, rank, s0, s1):
        pos, which = stream_positions(np.arange(N), N, SEED, s0 * B * WORLD, s1 * B * WORLD)
        mine = owner(pos, B, WORLD) == rank
        pos, rows = pos[mine], which[mine]
        perm = np.random.default_rng(s0).permutation(len(pos))  # Ray Data gives no order: scramble
        self.pos, self.rows = pos[perm], rows[perm]
        self.reads = 0

    def iter_batches(self, batch_size=None, batch_format="numpy", prefetch_batches=1):
        self.reads += 1
        for i in range(0, len(self.pos), 5):
            r = self.rows[i : i + 5]
            yield {"pos": self.pos[i : i + 5], "index": r.astype(np.int64), "ids": IDS[r],
                   "mask": np.ones((len(r), L), np.uint8)}


def _shards(rank, windows):
    made = {window_name(w): _Shard(rank, s0, s1) for w, (s0, s1) in enumerate(windows)}
    return made, made.__getitem__


@pytest.mark.parametrize("start", [0, 5, 9])
def test_batches_follow_the_reference_order_across_windows(start):
    windows = plan_windows(N, L, B, WORLD, 0, 17, window_tokens=L * B * 4)  # 4 steps per window
    assert windows == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 17)]
    for rank in range(WORLD):
        made, shard = _shards(rank, windows)
        got = list(step_batches(windows, B, start, shard, rank))
        ref = batch_indices(N, B, WORLD, rank, SEED, start)
        assert len(got) == 17 - start
        for b in got:
            want = next(ref)
            assert (b.index == want).all() and (b.ids == IDS[want]).all() and b.weight is None
        untouched = [name for name, s in made.items() if s.reads == 0]
        assert untouched == [window_name(w) for w, (_, s1) in enumerate(windows) if s1 <= start]


def test_a_resume_before_the_planned_windows_fails_loudly():
    windows = [(4, 8)]
    _, shard = _shards(0, windows)
    with pytest.raises(RuntimeError, match="resuming at step 2"):
        next(step_batches(windows, B, 2, shard, 0))


def test_trace_lists_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv(TRACE_ENV, str(tmp_path))
    windows = [(0, 3)]
    _, shard = _shards(1, windows)
    list(step_batches(windows, B, 0, shard, 1))
    lines = [json.loads(x) for x in (tmp_path / "rank1.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2] and all(len(x["index"]) == B for x in lines)


def test_resume_point_plans_from_the_oldest_checkpoint(tmp_path):
    from raykd.train.integrity import write_checksums

    assert resume_point(tmp_path, "run") == (0, None)
    dirs = {}
    for name, step in (("checkpoint_2026-01-01_00-00-01", 40), ("checkpoint_2026-01-01_00-00-00", 20)):
        dirs[step] = tmp_path / "run" / name
        dirs[step].mkdir(parents=True)
        (dirs[step] / "state.json").write_text(json.dumps({"step": step}))
    (tmp_path / "run" / "checkpoint_tmp").mkdir()  # half written: no state
    # No checksums: nothing proves these whole, so Ray Train alone decides (it restores none without a snapshot).
    assert resume_point(tmp_path, "run") == (20, None)
    assert resume_point(tmp_path, "run", str(dirs[40])) == (40, None)
    # Whole checkpoints Ray Train's snapshot does not list (a driver killed before the controller recorded
    # them): the newest whole one is loaded by the loop.
    write_checksums(dirs[20])
    write_checksums(dirs[40])
    (dirs[40] / "state.json").write_text(json.dumps({"step": 40, "x": 1}))  # damaged after its checksums
    assert resume_point(tmp_path, "run") == (20, str(dirs[20]))
    write_checksums(dirs[40])
    assert resume_point(tmp_path, "run") == (20, str(dirs[40]))
    # Listed in the snapshot: Ray Train restores its latest, at or after step 20.
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text(json.dumps({"latest": dirs[20].name}))
    assert resume_point(tmp_path, "run") == (20, None)
