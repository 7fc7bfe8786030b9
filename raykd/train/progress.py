"""Training progress from rank 0 of the Ray Train workers to the driver's console, through a Ray queue.

Ray keeps its workers' output in its log directory (`ray.init(log_to_driver=False)` unless `--verbose`),
so a worker's prints never reach the person running `raykd distill`. Rank 0 instead puts small events on
a `ray.util.queue.Queue` (an actor) that the driver drains while `TorchTrainer.fit()` runs:

    with TrainProgress("training kd student", total=150) as channel:    # driver
        TorchTrainer(..., train_loop_config=LoopConfig(..., progress=channel.queue)...).fit()
    post(loop.progress, step_event(step, total, start, metrics, eta_s))  # rank 0, every log_every steps
    post(loop.progress, {"say": "resuming from step 40"})

The driver renders a step event as one progress bar (raykd/console.py `Bar`): step, loss, student
tokens/s, the fraction of the step spent waiting for the teacher, ETA. Errors do not travel this way:
a failing worker's exception (with its traceback) is what `fit()` raises.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from raykd.console import Bar, say


def step_event(step: int, total: int, start: int, metrics: dict[str, float], eta_s: float) -> dict[str, Any]:
    """What rank 0 sends after step `step` of `total` (this run started, or resumed, at step `start`)."""
    keys = ("loss", "loss_soft", "loss_hard", "student_tokens_per_s", "teacher_wait_fraction")
    return {"step": step, "total": total, "start": start, "eta_s": eta_s,
            **{k: float(metrics[k]) for k in keys if k in metrics}}


def post(queue: Any, event: dict[str, Any]) -> bool:
    """Put `event` on the driver's queue; False (training goes on) when the driver is gone."""
    if queue is None:
        return False
    try:
        queue.put(event, timeout=10)
        return True
    except Exception:  # noqa: BLE001 - the driver's console is not worth failing a training run for
        return False


def describe(event: dict[str, Any]) -> str:
    """`loss 2.3121 (soft 0.26 hard 3.91)  6,774 tok/s  teacher wait 7%` from a step event."""
    parts = []
    if "loss" in event:
        soft, hard = event.get("loss_soft"), event.get("loss_hard")
        split = f" (soft {soft:.3f} hard {hard:.3f})" if soft is not None and hard is not None else ""
        parts.append(f"loss {event['loss']:.4f}{split}")
    if "student_tokens_per_s" in event:
        parts.append(f"{event['student_tokens_per_s']:,.0f} tok/s")
    if "teacher_wait_fraction" in event:
        parts.append(f"teacher wait {event['teacher_wait_fraction']:.0%}")
    return "  ".join(parts)


class TrainProgress:
    """Driver side: a queue actor for the workers and a thread that draws their events as a `Bar`."""

    def __init__(self, label: str, total: int, poll_s: float = 0.5):
        from ray.util.queue import Queue

        self.label, self.total, self.poll_s = label, total, poll_s
        self.t0 = time.monotonic()
        # No CPU: it only holds a few small dicts; it must never wait for resources the workers hold.
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.bar: Bar | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raykd-train-progress", daemon=True)

    def __enter__(self) -> "TrainProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain()  # events put after the thread's last poll
        if self.bar is not None:
            self.bar.close(final=exc[0] is None)
        try:
            self.queue.shutdown(force=True)
        except Exception:  # noqa: BLE001 - the cluster may be going down with an error already
            pass

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self.show(self.queue.get(timeout=self.poll_s))
            except Empty:
                pass
            except Exception:  # noqa: BLE001 - the queue actor or the cluster is gone: fit() will say why
                return

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                self.show(self.queue.get_nowait())
        except Exception:  # noqa: BLE001
            pass

    def show(self, event: dict[str, Any]) -> None:
        if "say" in event:
            say(event["say"])
            return
        if self.bar is None:  # the first event: a resumed run starts its bar where it resumed
            self.bar = Bar(self.label, event["total"], "steps", start_done=event.get("start", 0))
            self.bar.progress.start = self.t0  # "in 1m02s" counts the worker group's start too
        self.bar.update(event["step"], describe(event), eta_s=event.get("eta_s"))
