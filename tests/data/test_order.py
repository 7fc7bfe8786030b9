"""The training order, walked forward (batch_indices) and inverted per block (stream_positions), agrees."""

import numpy as np
import pytest

from raykd.data.order import batch_indices, owner, stream_positions


@pytest.mark.parametrize("n, batch, world, seed, start, steps", [(7, 3, 2, 0, 0, 12), (50, 4, 3, 5, 3, 20),
                                                                  (5, 8, 1, 1, 2, 6)])
def test_inverse_positions_reproduce_every_workers_batches(n, batch, world, seed, start, steps):
    lo, hi = start * batch * world, (start + steps) * batch * world
    pos, which = stream_positions(np.arange(n), n, seed, lo, hi)
    assert len(pos) == hi - lo and sorted(pos) == list(range(lo, hi))  # each position once
    for rank in range(world):
        mine = owner(pos, batch, world) == rank
        got = which[mine][np.argsort(pos[mine])]
        it = batch_indices(n, batch, world, rank, seed, start)
        want = np.concatenate([next(it) for _ in range(steps)])
        assert (got == want).all()


def test_every_block_once_per_epoch_and_a_new_order_each_epoch():
    it = batch_indices(10, 5, 2, 0, seed=3, start_step=0)
    e0 = np.concatenate([next(it), next(batch_indices(10, 5, 2, 1, 3, 0))])
    assert sorted(e0) == list(range(10))
    e1 = np.concatenate([next(batch_indices(10, 5, 2, 0, 3, 1)), next(batch_indices(10, 5, 2, 1, 3, 1))])
    assert sorted(e1) == list(range(10)) and (e0 != e1).any()


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_shards_are_disjoint_and_cover_each_epoch():
    n, batch, world = 24, 3, 2
    r0 = _take(batch_indices(n, batch, world, 0, seed=1, start_step=0), 4)
    r1 = _take(batch_indices(n, batch, world, 1, seed=1, start_step=0), 4)
    rows = np.concatenate(r0 + r1)
    assert sorted(rows.tolist()) == list(range(n))  # 4 steps x 2 workers x 3 = one epoch, no repeats


def test_resume_continues_the_same_order():
    full = _take(batch_indices(10, 4, 2, 1, seed=3, start_step=0), 7)
    resumed = _take(batch_indices(10, 4, 2, 1, seed=3, start_step=4), 3)
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)
    other_seed = _take(batch_indices(10, 4, 2, 1, seed=4, start_step=0), 1)
    assert not np.array_equal(full[0], other_seed[0])
