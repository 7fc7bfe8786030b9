"""Both teacher backends implement the one `TeacherBackend` interface the deployment calls."""

from __future__ import annotations

import asyncio
import inspect

import numpy as np
import pytest

from raykd.teacher.backend import TeacherBackend
from raykd.teacher.hf_backend import ServedHFBackend
from raykd.teacher.vllm_backend import VllmTeacherBackend

METHODS = ("start", "score", "generate", "check_health", "shutdown")


@pytest.mark.parametrize("cls", [ServedHFBackend, VllmTeacherBackend])
def test_backends_have_every_method_of_the_interface_with_its_parameters(cls):
    for name in METHODS:
        want, got = getattr(TeacherBackend, name), getattr(cls, name)
        assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(want), f"{cls.__name__}.{name}"
        assert list(inspect.signature(got).parameters) == list(inspect.signature(want).parameters), f"{cls.__name__}.{name}"
    assert isinstance(cls.returns_extras, bool)
    assert "scoring" in TeacherBackend.__annotations__


def test_served_hf_backend_is_a_teacher_backend_and_refuses_vllm_only_options(tiny_teacher):
    backend = ServedHFBackend(str(tiny_teacher))
    assert isinstance(backend, TeacherBackend)
    assert backend.max_top_k == backend.vocab_size and backend.returns_extras
    seqs = [np.arange(1, 9), np.arange(3, 8)]
    signals = asyncio.run(backend.score(seqs, 4))
    np.testing.assert_array_equal(signals.offsets, [0, 7, 11])
    np.testing.assert_array_equal(signals.topk_ids, backend.hf.score(seqs, 4).topk_ids)  # the same forward
    with pytest.raises(ValueError, match="need teacher.backend: vllm"):
        asyncio.run(backend.generate([np.arange(1, 5)], 3, seed=1))
    asyncio.run(backend.check_health())
    backend.shutdown()
