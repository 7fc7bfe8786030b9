"""Trainer-side teacher client: a bounded window of requests in flight, so teacher inference overlaps
student steps and memory holds at most `window` batches of signals.

    prefetch = SignalPrefetcher(lambda batch: handle.score.remote(list(batch), 20), batches, window=4)
    for batch, signals in prefetch:        # signals: TeacherSignals, in batch order
        ...
    prefetch.wait_seconds                  # time the consumer spent blocked on the teacher

`submit` must return something with `.result()` (a Serve `DeploymentResponse`, a `concurrent.futures.Future`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class SignalPrefetcher:
    def __init__(self, submit: Callable[[np.ndarray], Any] | None, batches: Iterator[np.ndarray], window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.submit = submit
        self.batches = batches
        self.window = window
        self.inflight: deque[tuple[np.ndarray, Any]] = deque()
        self.wait_seconds = 0.0
        self.requests = 0

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
            signals = response.result()
            self.wait_seconds += time.perf_counter() - start
        self._fill()  # top the window up before the caller starts its step
        return batch, signals
