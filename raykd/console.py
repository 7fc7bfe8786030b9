"""What raykd prints while it works: one-line messages and progress bars with rate and ETA, on stderr.

    say("deploying teacher (hf, 1 replica(s))")                   # [raykd] deploying teacher ...
    say("12 shards written", scope="raykd.capture")               # [raykd.capture] 12 shards written
    with Bar("training", total=150, unit="steps") as bar:         # one bar per phase
        bar.update(40, "loss 2.31  6,774 tok/s  teacher wait 7%")
    # [raykd] training [#####...............]  40/150 steps  loss 2.31  6,774 tok/s  teacher wait 7%  eta 1m02s
    progress = Progress(total=240, every_s=10)                    # rate/ETA arithmetic and throttling
    if progress.due(done):
        say(f"seqkd: {done}/240 prompts ({progress.rate_eta(done, 'prompts')})")

A bar redraws one line in place on a terminal; in a log or a pipe it prints a line at each quarter of the
work (and at least every 5 minutes), so a run's console stays a few dozen lines long whatever its length.

Ray's own output (worker logs, Serve/Train/Tune messages) stays in Ray's log directory unless the command
ran with `--verbose` (`set_verbose(True)`, inherited by child processes through RAYKD_VERBOSE=1).
Inside Ray workers print() is patched to tee lines into Ray's logs; they pass `stream=sys.__stderr__`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

VERBOSE_ENV = "RAYKD_VERBOSE"


def set_verbose(on: bool) -> None:
    """Show Ray's logs and messages live (`--verbose`); child processes inherit it."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0", "false")


def say(msg: str, scope: str = "raykd", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    bar = Bar.active if out is sys.stderr else None
    if bar is not None:
        bar._clear()
    print(f"[{scope}] {msg}", file=out, flush=True)
    if bar is not None:
        bar._draw()


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


class Bar:
    """One phase's progress bar: `[scope] label [####....] done/total unit  <details>  eta 1m02s`.

    On a terminal the line is redrawn in place (at most every `redraw_s`); elsewhere (a file, a pipe,
    `ray job logs`) a line is printed when another quarter of the work is done or `log_every_s` passed,
    and at `close()`. `say()` lines printed meanwhile appear above a terminal bar.
    `eta_s` overrides the ETA computed from the rate since construction (e.g. a resumed run).
    """

    active: "Bar | None" = None  # the bar on the terminal now (say() draws around it)
    WIDTH = 20

    def __init__(self, label: str, total: float, unit: str = "steps", scope: str = "raykd",
                 stream: TextIO | None = None, log_every_s: float = 300.0, redraw_s: float = 0.2,
                 tty: bool | None = None, start_done: float = 0):
        self.label, self.total, self.unit, self.scope = label, max(total, 1e-9), unit, scope
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_every_s, self.redraw_s = log_every_s, redraw_s
        self.done, self.details, self.eta_s = start_done, "", None
        self.progress = Progress(total - start_done)
        self.start_done = start_done
        self.quarter = int(4 * start_done / self.total)
        self.last_line = time.monotonic()
        self.last_draw = float("-inf")
        self.lines = 0  # lines printed (not counting redraws in place)
        self.closed = False
        if self.tty:
            Bar.active = self

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close(final=exc[0] is None)

    def text(self) -> str:
        frac = min(1.0, self.done / self.total)
        filled = int(round(frac * self.WIDTH))
        eta = self.eta_s if self.eta_s is not None else self.progress.eta(self.done - self.start_done)
        eta_s = "" if self.done >= self.total else f"  eta {duration(eta) if eta != float('inf') else '?'}"
        if self.done >= self.total:
            eta_s = f"  in {duration(self.progress.elapsed())}"
        details = f"  {self.details}" if self.details else ""
        total = int(self.total) if float(self.total).is_integer() else self.total
        done = int(self.done) if float(self.done).is_integer() else self.done
        return (f"[{self.scope}] {self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{done}/{total} {self.unit}{details}{eta_s}")

    def update(self, done: float, details: str | None = None, eta_s: float | None = None) -> None:
        self.done = done
        if details is not None:
            self.details = details
        self.eta_s = eta_s
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= self.redraw_s or done >= self.total:
                self._draw()
            return
        quarter = int(4 * min(done, self.total) / self.total)
        if quarter > self.quarter or now - self.last_line >= self.log_every_s:
            self.quarter = max(quarter, self.quarter)
            self._line()

    def close(self, final: bool = True) -> None:
        """Leave the bar's last state on its own line (unless that line was just printed)."""
        if self.closed:
            return
        if self.tty:
            self._draw()
            self.closed = True
            print(file=self.stream, flush=True)
            self.lines += 1
            if Bar.active is self:
                Bar.active = None
        elif final and self.quarter < 4 and self.done > self.start_done:
            self._line()
        self.closed = True

    def _line(self) -> None:
        print(self.text(), file=self.stream, flush=True)
        self.last_line = time.monotonic()
        self.lines += 1

    def _clear(self) -> None:
        if self.tty and not self.closed:
            print("\r\x1b[2K", end="", file=self.stream, flush=True)

    def _draw(self) -> None:
        if self.tty and not self.closed:
            print("\r\x1b[2K" + self.text(), end="", file=self.stream, flush=True)
            self.last_draw = time.monotonic()
