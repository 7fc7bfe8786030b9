"""The training order: which block each Train worker gets at each step. Pure numpy, the one definition.

    rows = next(batch_indices(n, batch=16, world=2, rank=0, seed=0, start_step=0))    # (16,) block indices
    pos, index = stream_positions(index, n, seed, first_pos, end_pos)                  # the same order, inverted

The blocks `0..n-1` are read as an endless stream of epochs; epoch e is the permutation
`default_rng([seed, e]).permutation(n)`. Stream position p holds block `perm_{p // n}[p % n]`; step s of
worker `rank` (of `world`) takes positions `(s * world + rank) * batch ... + batch`. So a batch can span two
epochs, every block is seen once per epoch, and a run resumed at step s continues at position
`s * world * batch` with the very same blocks.

`batch_indices` walks the stream forward (the in-process reference); `stream_positions` answers the
inverse question for a set of blocks — at which positions of `[first_pos, end_pos)` does each appear — which
is what the Ray Data ingest (raykd/data/ingest.py) computes on each chunk of blocks before sorting the rows
of one worker by position. Tests check the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch: int, world: int, rank: int, seed: int, start_step: int) -> Iterator[np.ndarray]:
    """Blocks of this worker's shard for steps start_step, start_step+1, ...: seeded per-epoch permutations."""
    perms: dict[int, np.ndarray] = {}

    def perm(epoch: int) -> np.ndarray:
        if epoch not in perms:
            if len(perms) > 2:
                perms.pop(min(perms))  # a batch spans at most two epochs
            perms[epoch] = epoch_permutation(n, seed, epoch)
        return perms[epoch]

    step = start_step
    while True:
        first = (step * world + rank) * batch
        yield np.array([perm(pos // n)[pos % n] for pos in range(first, first + batch)], np.int64)
        step += 1


def micro_batch_indices(n: int, batch: int, accum: int, world: int, rank: int, seed: int,
                        start_step: int) -> Iterator[np.ndarray]:
    """This worker's micro-batches of `batch` blocks, `accum` per step, in order: each step's `batch * accum`
    blocks (batch_indices) split in `accum`, so the global batch of a step is the same for any split."""
    for rows in batch_indices(n, batch * accum, world, rank, seed, start_step):
        yield from np.split(rows, accum)


class InversePermutations:
    """`inverse(epoch)[block]` = the block's place in that epoch; a few epochs cached (an O(n) array each)."""

    def __init__(self, n: int, seed: int, keep: int = 4):
        self.n, self.seed, self.keep = n, seed, keep
        self.cache: dict[int, np.ndarray] = {}

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch not in self.cache:
            if len(self.cache) >= self.keep:
                self.cache.pop(min(self.cache))
            inv = np.empty(self.n, np.int64)
            inv[epoch_permutation(self.n, self.seed, epoch)] = np.arange(self.n)
            self.cache[epoch] = inv
        return self.cache[epoch]


def stream_positions(index: np.ndarray, n: int, seed: int, first_pos: int, end_pos: int,
                     inverse: InversePermutations | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, which of `index`) of every appearance of the blocks `index` (ints in 0..n-1) at stream
    positions first_pos <= p < end_pos, in no particular order."""
    inverse = inverse or InversePermutations(n, seed)
    index = np.asarray(index, np.int64)
    positions, which = [], []
    for epoch in range(first_pos // n, (end_pos - 1) // n + 1):
        pos = epoch * n + inverse(epoch)[index]
        keep = np.flatnonzero((pos >= first_pos) & (pos < end_pos))
        positions.append(pos[keep])
        which.append(keep)
    if not positions:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(positions), np.concatenate(which)


def owner(pos: np.ndarray, batch: int, world: int) -> np.ndarray:
    """The worker (rank) whose batch holds stream position `pos`."""
    return (np.asarray(pos) // batch) % world
