"""Trainer-side teacher client: a bounded window of requests in flight, so teacher inference overlaps
student steps and memory holds at most `window` batches of signals.

    prefetch = SignalPrefetcher(lambda batch: handle.score.remote(list(batch), 20), batches, window=4)
    for batch, signals in prefetch:        # signals: TeacherSignals, in batch order
        ...
    prefetch.wait_seconds                  # time the consumer spent blocked on the teacher

`submit` must return something with `.result()` (a Serve `DeploymentResponse`, a `concurrent.futures.Future`).

A request whose teacher replica died while it was in flight (`retry_on`, default Ray's actor-death errors)
is re-submitted once, and Serve routes it to a live replica: the consumer still gets exactly one result per
batch, in order (scoring is deterministic, so the lost attempt changes nothing). A second failure of the same
batch is raised. `retries` counts re-submissions.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def replica_death_errors() -> tuple[type[BaseException], ...]:
    """What a handle raises when the replica holding the request died (not an error of the request itself)."""
    try:
        from ray.exceptions import ActorUnavailableError, RayActorError
    except ImportError:
        return ()
    return (RayActorError, ActorUnavailableError)


class SignalPrefetcher:
    def __init__(self, submit: Callable[[np.ndarray], Any] | None, batches: Iterator[np.ndarray], window: int,
                 retry_on: tuple[type[BaseException], ...] | None = None):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.submit = submit
        self.batches = batches
        self.window = window
        self.inflight: deque[tuple[np.ndarray, Any]] = deque()
        self.wait_seconds = 0.0
        self.requests = 0
        self.retries = 0
        self.retry_on = retry_on  # None: replica_death_errors(), looked up on the first failure

    def _fill(self) -> None:
        while len(self.inflight) < self.window:
            batch = next(self.batches, None)
            if batch is None:
                return
            response = self.submit(batch) if self.submit is not None else None
            self.requests += response is not None
            self.inflight.append((batch, response))

    def __iter__(self) -> "SignalPrefetcher":
        return self

    def __next__(self) -> tuple[np.ndarray, Any]:
        self._fill()
        if not self.inflight:
            raise StopIteration
        batch, response = self.inflight.popleft()
        signals = None
        if response is not None:
            start = time.perf_counter()
            signals = self._result(batch, response)
            self.wait_seconds += time.perf_counter() - start
        self._fill()  # top the window up before the caller starts its step
        return batch, signals

    def _result(self, batch: np.ndarray, response: Any) -> Any:
        try:
            return response.result()
        except Exception as e:
            if not isinstance(e, self.retry_on if self.retry_on is not None else replica_death_errors()):
                raise
            self.retries += 1
            log.warning("teacher replica died with a request in flight (%s); re-submitting that batch once",
                        type(e).__name__)
            return self.submit(batch).result()
