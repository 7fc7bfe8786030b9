"""Deterministic, resumable data order and the LR schedule of the training loop."""

import numpy as np

from raykd.train.loop import global_batch_indices, lr_lambda


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_shards_are_disjoint_and_cover_each_epoch():
    n, batch, world = 24, 3, 2
    r0 = _take(global_batch_indices(n, batch, world, 0, seed=1, start_step=0), 4)
    r1 = _take(global_batch_indices(n, batch, world, 1, seed=1, start_step=0), 4)
    rows = np.concatenate(r0 + r1)
    assert sorted(rows.tolist()) == list(range(n))  # 4 steps x 2 workers x 3 = one epoch, no repeats


def test_resume_continues_the_same_order():
    full = _take(global_batch_indices(10, 4, 2, 1, seed=3, start_step=0), 7)
    resumed = _take(global_batch_indices(10, 4, 2, 1, seed=3, start_step=4), 3)
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)
    other_seed = _take(global_batch_indices(10, 4, 2, 1, seed=4, start_step=0), 1)
    assert not np.array_equal(full[0], other_seed[0])


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    f = lr_lambda(warmup=4, total=20)
    assert f(0) == 0.25 and f(3) == 1.0
    assert abs(f(19) - 0.1) < 0.02 and f(10) < f(5)
