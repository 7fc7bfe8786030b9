"""What raykd prints while it works: one-line messages and progress with rate and ETA, on stderr.

    say("deploying teacher (hf, 1 replica(s))")                   # [raykd] deploying teacher ...
    say("12 shards written", scope="raykd.capture")               # [raykd.capture] 12 shards written
    progress = Progress(total=240, every_s=10)
    for done in ...:
        if progress.due(done):                                    # every 10 s, and at the end
            say(f"seqkd: {done}/240 prompts ({progress.rate_eta(done, 'prompts')})")
                                                                  # ... (3.1 prompts/s, eta 1m12s)

Inside Ray Train workers print() is patched to tee lines into Ray's logs; they pass `stream=sys.__stderr__`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def say(msg: str, scope: str = "raykd", stream: TextIO | None = None) -> None:
    print(f"[{scope}] {msg}", file=stream or sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """`42s`, `3m07s`: how long, for a person."""
    s = max(0, int(round(seconds)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Rate and ETA of `total` units of work done since construction (or `start`); throttles the printing."""

    def __init__(self, total: float, every_s: float = 10.0, start: float | None = None):
        self.total, self.every_s = total, every_s
        self.start = time.monotonic() if start is None else start
        self.last = float("-inf")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rate(self, done: float) -> float:
        """Units per second so far."""
        return done / max(self.elapsed(), 1e-9)

    def eta(self, done: float) -> float:
        """Seconds left at the rate so far."""
        rate = self.rate(done)
        return (self.total - done) / rate if rate > 0 else float("inf")

    def due(self, done: float) -> bool:
        """True every `every_s` seconds and when the work is done (then the caller prints a line)."""
        now = time.monotonic()
        if now - self.last >= self.every_s or done >= self.total:
            self.last = now
            return True
        return False

    def rate_eta(self, done: float, unit: str, scale: float = 1.0) -> str:
        """`3.1 prompts/s, eta 1m12s`; `scale` converts the rate (e.g. steps/s x tokens per step = tok/s)."""
        rate = self.rate(done) * scale
        eta = self.eta(done)
        return f"{rate:,.1f} {unit}/s, eta {duration(eta) if eta != float('inf') else '?'}"
