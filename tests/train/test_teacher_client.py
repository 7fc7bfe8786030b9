"""The prefetch window: order kept, at most `window` requests outstanding, wait time measured."""

from concurrent.futures import Future

import numpy as np
import pytest

from raykd.train.teacher_client import SignalPrefetcher


class Recorder:
    def __init__(self):
        self.pending: list[Future] = []
        self.max_outstanding = 0

    def submit(self, batch):
        fut = Future()
        fut.set_result(("signals", int(batch[0])))
        self.pending.append(fut)
        outstanding = len(self.pending) - self.consumed
        self.max_outstanding = max(self.max_outstanding, outstanding)
        return fut

    consumed = 0


def test_window_bounds_requests_and_keeps_order():
    rec = Recorder()
    batches = (np.array([i]) for i in range(10))
    pf = SignalPrefetcher(rec.submit, batches, window=3)
    seen = []
    for batch, signals in pf:
        rec.consumed += 1
        assert signals == ("signals", int(batch[0]))
        seen.append(int(batch[0]))
        assert len(pf.inflight) <= 3
    assert seen == list(range(10))
    assert rec.max_outstanding <= 4  # the window, plus the one being handed to the caller
    assert pf.requests == 10 and pf.wait_seconds >= 0


def test_no_teacher_passes_batches_through():
    pf = SignalPrefetcher(None, iter([np.zeros(2), np.ones(2)]), window=2)
    out = list(pf)
    assert len(out) == 2 and out[0][1] is None and pf.requests == 0
    with pytest.raises(ValueError):
        SignalPrefetcher(None, iter([]), window=0)
