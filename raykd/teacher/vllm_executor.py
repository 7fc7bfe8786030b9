"""vLLM's multiprocess executor, less its busy wait: the executor raykd's CPU teacher engines run with.

    AsyncEngineArgs(..., distributed_executor_backend=QuietMultiprocExecutor)   # raykd/teacher/vllm_backend.py

vLLM's engine-core process hands each step to its worker process through a shared-memory queue and then
waits for the reply by spinning (`sched_yield` in a loop for 1 s after every read: vLLM's `SpinCondition`).
On a GPU node that costs one of many cores; on a CPU teacher it costs most of a core that the replica's front
end, the Serve replica and the students' Train workers need. Measured on a 2-core machine (tiny teacher,
float32, top-k 20, through Serve as training calls it, `benchmarks/teacher_throughput.py`): the engine-core
process used 0.85 of a core, nearly all of it spinning, the model worker 0.84; with the replies awaited on
the queue's own notification socket in 1 ms polls instead (this executor), 0.07 and 0.92.

The class is passed by reference in the engine config, so vLLM's engine-core process imports this module
(raykd must be importable there, as for the worker extension of raykd/teacher/vllm_topk.py). Everything else
is vLLM's own executor; where a vLLM version has no such queue attribute, nothing changes (it just spins).
"""

from __future__ import annotations

import logging

from vllm.v1.executor.multiproc_executor import MultiprocExecutor

log = logging.getLogger(__name__)


# How long a reader sleeps on the notification socket before it looks at the queue again. vLLM's notification
# can be lost (its own code only relies on it after a second idle, and then re-checks every 5 s): measured here,
# plain prefill at 1k instead of 30k tokens/s with untimed waits. A 1 ms poll bounds that cost, and costs a
# wake-up per millisecond of waiting (a few % of a core) instead of a spinning core.
POLL_MS = 1


def stop_spinning(queues) -> int:
    """Make each reader of `queues` (vLLM MessageQueue) sleep in short polls instead of spinning; returns how many."""
    quiet = 0
    for mq in queues or ():
        cond = getattr(mq, "_spin_condition", None)
        if cond is None or not hasattr(cond, "busy_loop_s") or not callable(getattr(cond, "wait", None)):
            continue
        cond.busy_loop_s = 0.0  # SpinCondition.wait: spin only while now <= last read + busy_loop_s
        cond.wait = _timed(cond.wait)
        quiet += 1
    return quiet


def _timed(wait):
    def timed_wait(timeout_ms: int | None = None) -> None:
        wait(timeout_ms=POLL_MS if timeout_ms is None else max(0, min(timeout_ms, POLL_MS)))

    return timed_wait


class QuietMultiprocExecutor(MultiprocExecutor):
    """`MultiprocExecutor` whose engine-core side sleeps while its workers compute (module docstring)."""

    def _init_executor(self) -> None:
        super()._init_executor()
        quiet = stop_spinning(getattr(self, "response_mqs", None))
        if not quiet:
            log.warning("raykd: this vLLM's executor has no reply queue to quiet; its engine core busy-waits")
