"""Per-step schedules: of the loss coefficients (temperature T, alpha) and of the learning rate. Pure functions.

    value = schedule_value(step, total_steps, kind="cosine", start=4.0, end=1.0, warmup_steps=10, warmup_from=1.0)
    sched = Schedule.from_config(cfg.loss.temperature_schedule, base=cfg.loss.temperature, total_steps=200)
    sched(step)                                   # the value used at optimizer step `step` (0-based)
    lr = lr_factor(step, warmup_steps=20, progress=0.3, base=3e-3)   # learning rate (warm-up, cosine decay)

Shape of every schedule, for step s in [0, total_steps):

    s <  W:  warmup_from + (start - warmup_from) * s / W           linear warm-up (W = warmup_steps)
    s >= W:  progress u = (s - W) / max(1, total_steps - 1 - W)     in [0, 1], 1 at the last step
             constant  start
             linear    start + (end - start) * u
             cosine    end + (start - end) * (1 + cos(pi u)) / 2    (start at u = 0, end at u = 1)
             step      start * gamma ** (number of milestones <= s) (milestones are absolute steps)

So `constant` with W = 0 is the plain fixed value (the quickstart's behaviour), and every schedule
reaches `end` exactly at the last step. `bounds` gives the smallest and largest value a schedule can
take (raykd.config.loss.schedule_bounds), which the config validators use to reject, before training,
an alpha schedule leaving [0, 1] or a temperature schedule reaching 0.

Every learning rate in raykd (the student, the teacher builds, a domain teacher's adaptation, the
masked-LM student) follows `lr_factor`: a linear warm-up, then a decay from 1 to `floor` as progress goes
0 -> 1, cosine or linear. Each caller says what progress is (steps, or the time budget of a build).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from raykd.config.loss import schedule_bounds

KINDS = ("constant", "linear", "cosine", "step")


def schedule_value(
    step: int,
    total_steps: int,
    *,
    kind: str = "constant",
    start: float,
    end: float | None = None,
    warmup_steps: int = 0,
    warmup_from: float | None = None,
    milestones: list[int] | tuple[int, ...] = (),
    gamma: float = 1.0,
) -> float:
    """The value at 0-based `step` of a `total_steps` run (module doc)."""
    if kind not in KINDS:
        raise ValueError(f"schedule kind must be one of {KINDS}, got {kind!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        if warmup_from is None:
            raise ValueError("warmup_from is required when warmup_steps > 0")
        return warmup_from + (start - warmup_from) * step / warmup_steps
    end = start if end is None else end
    u = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    if kind == "constant":
        return start
    if kind == "linear":
        return start + (end - start) * u
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * u))
    return start * gamma ** sum(1 for m in milestones if m <= step)


@dataclass(frozen=True)
class Schedule:
    """A schedule with its parameters bound; call it with the step."""

    total_steps: int
    start: float
    kind: str = "constant"
    end: float | None = None
    warmup_steps: int = 0
    warmup_from: float | None = None
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 1.0

    @classmethod
    def from_config(cls, cfg: Any, base: float, total_steps: int) -> "Schedule":
        """From a `raykd.config.ScheduleConfig`; `start: null` means the base value (loss.temperature/alpha)."""
        return cls(
            total_steps, base if cfg.start is None else cfg.start, cfg.kind, cfg.end, cfg.warmup_steps,
            cfg.warmup_from, tuple(cfg.milestones), cfg.gamma,
        )

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" and self.warmup_steps == 0

    def __call__(self, step: int) -> float:
        return schedule_value(
            step, self.total_steps, kind=self.kind, start=self.start, end=self.end, warmup_steps=self.warmup_steps,
            warmup_from=self.warmup_from, milestones=self.milestones, gamma=self.gamma,
        )

    def bounds(self) -> tuple[float, float]:
        """(min, max) over all steps: every shape is monotone between its start, end and warm-up points."""
        return schedule_bounds(kind=self.kind, start=self.start, end=self.end, warmup_steps=self.warmup_steps,
                               warmup_from=self.warmup_from, milestones=self.milestones, gamma=self.gamma)


def lr_factor(
    step: int,
    warmup_steps: int,
    progress: float,
    *,
    floor: float = 0.1,
    decay: Literal["cosine", "linear"] = "cosine",
    warmup_progress: float | None = None,
    base: float = 1.0,
) -> float:
    """`base` (a peak learning rate, or 1 for a multiplier) times warm-up times decay at 0-based `step`.

    warm-up: (step + 1) / warmup_steps, up to 1 (none when warmup_steps is 0); with `warmup_progress` it also
    ends once `progress` reaches that fraction (a slow build must not spend its time budget warming up).
    decay over progress p in [0, 1]: cosine `floor + (1 - floor) (1 + cos(pi p)) / 2`, or linear
    `max(floor, 1 - p)`.
    """
    p = min(1.0, max(0.0, progress))
    warm = (step + 1) / warmup_steps if warmup_steps > 0 else 1.0
    if warmup_progress is not None:
        warm = max(warm, p / warmup_progress)
    if decay == "cosine":
        shape = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        shape = max(floor, 1.0 - p)
    return base * min(1.0, warm) * shape


def lr_lambda(warmup: int, total: int):
    """The student's LR multiplier per step (a LambdaLR function): linear warm-up, then cosine to 10 % over the
    remaining steps (raykd/train/student.py)."""
    return lambda step: lr_factor(step, warmup, max(0, step - warmup) / max(1, total - warmup))
