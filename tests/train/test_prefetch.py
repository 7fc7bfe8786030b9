"""The prefetch window: order kept, at most `window` requests outstanding, wait time measured; and when a
replica dies, a request lost with its replica is re-submitted once, so each batch still yields exactly one
result, in order; request errors and second failures are raised.

The same path against real vLLM replicas killed mid-run: tests/e2e/test_vllm_serve.py (slow).
"""

from concurrent.futures import Future

import numpy as np
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from raykd.train.prefetch import SignalPrefetcher, replica_death_errors


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


# --------------------------------------------------------------------------------------------- replica death
def done(value=None, error: BaseException | None = None) -> Future:
    fut: Future = Future()
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
    return fut


class FlakyTeacher:
    """Scores batch b as ("signals", b); the first attempts of the batches in `die_on` lose their replica."""

    def __init__(self, die_on: dict[int, int], error=ActorDiedError):  # error: a no-argument factory
        self.die_on = dict(die_on)  # batch -> how many attempts fail
        self.error = error
        self.calls: list[int] = []

    def submit(self, batch: np.ndarray) -> Future:
        b = int(batch[0])
        self.calls.append(b)
        if self.die_on.get(b, 0) > 0:
            self.die_on[b] -= 1
            return done(error=self.error())
        return done(("signals", b))


def test_replica_death_resubmits_each_lost_batch_once_in_order():
    teacher = FlakyTeacher({2: 1, 3: 1, 7: 1})
    pf = SignalPrefetcher(teacher.submit, (np.array([i]) for i in range(10)), window=4)
    got = [(int(b[0]), s) for b, s in pf]
    assert got == [(i, ("signals", i)) for i in range(10)]  # none lost, none twice, in order
    assert pf.retries == 3 and pf.requests == 10
    assert sorted(teacher.calls) == sorted(list(range(10)) + [2, 3, 7])  # exactly one extra call per lost batch


def test_unavailable_replica_is_retried_too():
    def unavailable() -> ActorUnavailableError:
        return ActorUnavailableError("replica unreachable", None)

    pf = SignalPrefetcher(FlakyTeacher({0: 1}, unavailable).submit, iter([np.array([0])]), window=1)
    assert [s for _, s in pf] == [("signals", 0)] and pf.retries == 1


def test_second_failure_of_the_same_batch_is_raised():
    pf = SignalPrefetcher(FlakyTeacher({1: 2}).submit, (np.array([i]) for i in range(3)), window=2)
    assert next(pf)[1] == ("signals", 0)
    with pytest.raises(ActorDiedError):
        next(pf)


def test_request_errors_are_not_retried():
    def submit(batch):
        return done(error=ValueError("top_k=99 exceeds this teacher's max_top_k=64"))

    calls = []
    pf = SignalPrefetcher(lambda b: (calls.append(1), submit(b))[1], iter([np.array([0])]), window=1)
    with pytest.raises(ValueError, match="max_top_k"):
        next(pf)
    assert len(calls) == 1 and pf.retries == 0


def test_retryable_errors_are_configurable():
    assert issubclass(ActorDiedError, replica_death_errors())
    pf = SignalPrefetcher(FlakyTeacher({0: 1}, TimeoutError).submit, iter([np.array([0])]), window=1,
                          retry_on=(TimeoutError,))
    assert [s for _, s in pf] == [("signals", 0)] and pf.retries == 1
