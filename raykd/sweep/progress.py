"""Progress of a sweep on the driver's console: a Tune callback (imports Ray Tune; used by raykd/sweep/run.py).

    [raykd] sweep asha: 3/6 trials done, 2 running, best val_loss 4.1234 (a1b2c_00002); 410 steps in 1m30s
            (4.6 steps/s), eta 0m52s

Tune pickles its callbacks with the experiment and unpickles them on `Tuner.restore`, so the driver finds the
live instance through `ACTIVE[name]` (registered in `setup`), not through the object it created.
"""

from __future__ import annotations

import time

from ray.tune import Callback

from raykd.console import duration, say

ACTIVE: dict[str, "SweepProgress"] = {}
DONE = ("TERMINATED", "ERROR")


class SweepProgress(Callback):
    """One line per finished trial and every `every_s`: trials done, best so far, step rate, ETA."""

    def __init__(self, name: str, metric: str, mode: str, total: int, max_steps: int, every_s: float = 15.0):
        self.name, self.metric, self.mode, self.total, self.max_steps = name, metric, mode, total, max_steps
        self.every_s = every_s
        self._reset()

    def _reset(self) -> None:
        self.trials: list = []
        self.steps: dict[str, int] = {}  # last reported step per trial
        self.ended: set[str] = set()  # trials that completed or failed (their status lags these callbacks)
        # Trial statuses after the last controller step: on Ctrl-C Tune marks the running trials TERMINATED
        # while cleaning up, after its last step, so this snapshot is what tells "interrupted" from "done".
        self.statuses: dict[str, str] = {}
        self.start, self.last_print, self.steps_done = time.time(), 0.0, 0

    def __getstate__(self) -> dict:  # no Trial objects in the pickled experiment
        return {k: getattr(self, k) for k in ("name", "metric", "mode", "total", "max_steps", "every_s")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def setup(self, **info) -> None:
        self._reset()
        ACTIVE[self.name] = self

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.trials = list(trials)
        step = int(result.get("step", 0))
        self.steps_done += max(0, step - self.steps.get(trial.trial_id, 0))  # steps trained in this session
        self.steps[trial.trial_id] = step
        if time.time() - self.last_print > self.every_s:
            self._print()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trials = list(trials)
        # A resumed or PBT-restarted trial continues from a checkpoint near its last reported step.
        self.steps[trial.trial_id] = int((trial.last_result or {}).get("step", 0))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.trials = list(trials)
        last = trial.last_result or {}
        step = int(last.get("step", 0))
        early = " (stopped early)" if step < self.max_steps else ""
        value = f", {self.metric} {last[self.metric]:.4f}" if self.metric in last else ""
        say(f"sweep {self.name}: trial {trial.trial_id} done at step {step}{early}{value}")
        self.ended.add(trial.trial_id)
        self._print()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.trials = list(trials)
        self.ended.add(trial.trial_id)
        say(f"sweep {self.name}: trial {trial.trial_id} FAILED (logs: {trial.path})")

    def on_step_end(self, iteration, trials, **info) -> None:
        self.trials = list(trials)
        self.statuses = {t.trial_id: t.status for t in trials}

    def on_experiment_end(self, trials, **info) -> None:
        self.trials = list(trials)

    def final_status(self, trial) -> str:
        return self.statuses.get(trial.trial_id, trial.status)

    def _print(self) -> None:
        now = time.time()
        self.last_print = now
        ended = [t for t in self.trials if t.status in DONE or t.trial_id in self.ended]
        running = [t for t in self.trials if t.status == "RUNNING" and t.trial_id not in self.ended]
        scored = [(t.last_result[self.metric], t.trial_id) for t in self.trials
                  if t.last_result and self.metric in t.last_result]
        best = (min if self.mode == "min" else max)(scored) if scored else None
        elapsed = now - self.start
        rate = self.steps_done / elapsed if elapsed > 0 else 0.0  # includes trial start-up: what a step costs
        # Steps still to train if no trial is stopped early (ASHA will stop some: an upper bound then).
        left = sum(self.max_steps - self.steps.get(t.trial_id, 0) for t in self.trials if t not in ended)
        left += max(0, self.total - len(self.trials)) * self.max_steps
        eta = f"eta {duration(left / rate)}" if rate > 0 else "eta ?"
        best_s = f", best {self.metric} {best[0]:.4f} ({best[1]})" if best else ""
        say(f"sweep {self.name}: {len(ended)}/{self.total} trials done, {len(running)} running{best_s}; "
             f"{self.steps_done} steps in {duration(elapsed)} ({rate:.2f} steps/s), {eta}")
