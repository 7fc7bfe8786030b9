"""The Serve deployment body of a teacher (raykd/teacher/service.py), constructed outside Serve."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest


def test_a_replica_reports_the_requests_it_holds(tiny_teacher):
    """`info().in_flight` counts score requests a replica holds (scoring or queued behind its lock): what the
    replica-kill test of tests/e2e/test_vllm_serve.py uses to kill a replica while it serves the workers."""
    from raykd.config import TeacherConfig
    from raykd.teacher.service import Teacher

    teacher = Teacher(str(tiny_teacher), TeacherConfig(path=str(tiny_teacher)).model_dump(), "fp")
    real = teacher.backend.score
    seqs = [np.arange(12, dtype=np.int32)]

    async def main():
        gate = asyncio.Event()

        async def held(*args, **kwargs):  # the real backend, once the test lets the requests through
            await gate.wait()
            return await real(*args, **kwargs)

        teacher.backend.score = held
        tasks = [asyncio.create_task(teacher.score(seqs, 4)) for _ in range(3)]
        await asyncio.sleep(0)
        assert (await teacher.info()).in_flight == 3
        gate.set()
        signals = await asyncio.gather(*tasks)
        assert all(s.topk_ids.shape == (11, 4) for s in signals)
        info = await teacher.info()
        assert (info.in_flight, info.scored_requests) == (0, 3)

        async def broken(*args, **kwargs):
            raise RuntimeError("engine died")

        teacher.backend.score = broken
        with pytest.raises(RuntimeError, match="engine died"):
            await teacher.score(seqs, 4)
        assert (await teacher.info()).in_flight == 0  # a failed request is not held either

    asyncio.run(main())
