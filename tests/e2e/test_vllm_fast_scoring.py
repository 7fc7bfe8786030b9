"""The engine top-k path (raykd/teacher/vllm_topk.py, the default) against vLLM's prompt_logprobs path (the
fallback) on the same engine: same rows, same top-k, same log-probs, for a dense, a mixture-of-experts and a
grouped-query-attention teacher, in float32 and bfloat16.

    pytest -m slow tests/e2e/test_vllm_fast_scoring.py      # one engine per teacher and dtype (6), ~15 s each idle

Both paths read the same logits (the engine's own LM head), so they differ only in how the log-softmax and the
top-k are computed: vLLM's float32 log_softmax + torch.topk vs raykd's fused kernel (float64 log-sum-exp).
- float32: top-1 identical on every row, every log-prob within 1e-4 (the kernel is closer to float64 than vLLM).
- bfloat16: logits carry 8 mantissa bits, so exact ties among the top logits are common and the two paths may
  order tied ids differently (raykd: lower id first; torch.topk: unspecified). Bounds: those of the
  bf16 agreement test (tests/e2e/test_vllm_engine.py: top-1 > 0.9, median < 0.05, max < 1.0) and, stronger, the
  sorted log-probs agree at every rank within 1e-4 and top-1 is identical wherever it is not an exact tie.
"""

from __future__ import annotations

import asyncio
import gc
import json

import numpy as np
import pytest

from raykd.config import TinyMoeConfig, TinyTeacherConfig, VllmConfig
from raykd.teacher.vllm_backend import VllmTeacherBackend, compare_signals


pytestmark = pytest.mark.slow

KS = (1, 20, 64)
TINY_TEACHER = dict(  # tests/conftest.py's tiny teacher (vocab 384, 2 x 64)
    vocab_size=384, hidden_size=64, num_heads=1, num_layers=2, intermediate_size=128,
    corpus_chars=30_000, max_steps=25, seq_len=64, batch_size=16, max_minutes=1.0,
)
BUILDS = {
    "moe": TinyTeacherConfig(  # tests/e2e/test_vllm_moe.py's teacher
        **{**TINY_TEACHER, "max_steps": 15, "max_minutes": 5.0},
        moe=TinyMoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64),
    ),
    "gqa": TinyTeacherConfig(**{**TINY_TEACHER, "num_heads": 2, "num_kv_heads": 1}),  # head size 32, 1 KV head
}


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    pending = asyncio.all_tasks(loop)  # see tests/e2e/test_vllm_engine.py: drain the engines' output handlers
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    gc.collect()
    loop.close()


@pytest.fixture(scope="module")
def teachers(tiny_teacher, tmp_path_factory):
    from raykd.teacher.build import build_tiny_teacher

    out = {"dense": tiny_teacher}
    for name, cfg in BUILDS.items():
        out[name] = build_tiny_teacher(cfg, tmp_path_factory.mktemp(name) / name, progress=False, num_threads=1)
    return out


def heldout(path, n: int = 12, length: int = 64) -> list[np.ndarray]:
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus

    ids = np.asarray(AutoTokenizer.from_pretrained(path)(generate_corpus(20_000, seed=7)).input_ids, np.int32)
    seqs = [ids[i * length : (i + 1) * length] for i in range(n)]
    return seqs + [seqs[0][:2], seqs[1][:17], ids[n * length : n * length + 300]]  # ragged; 300 > the step budget


def assert_float32_agreement(ref, got, k: int) -> None:
    np.testing.assert_array_equal(got.topk_ids[:, 0], ref.topk_ids[:, 0])
    a = compare_signals(ref, got)
    assert a["shared"] > 0.999 and a["max"] < 1e-4 and a["target_max"] < 1e-4, a
    np.testing.assert_allclose(got.topk_logprobs, ref.topk_logprobs, atol=1e-4)  # rank by rank
    np.testing.assert_allclose(np.exp(got.tail_logprob), np.exp(ref.tail_logprob), atol=1e-4)  # mass outside top-k


def assert_bfloat16_agreement(ref, got, k: int) -> None:
    a = compare_signals(ref, got)
    assert a["top1"] > 0.9 and a["median"] < 0.05 and a["max"] < 1.0, a
    np.testing.assert_allclose(got.topk_logprobs, ref.topk_logprobs, atol=1e-4)  # sorted values, every rank
    np.testing.assert_allclose(got.target_logprob, ref.target_logprob, atol=1e-4)
    if k > 1:
        untied = ref.topk_logprobs[:, 0] > ref.topk_logprobs[:, 1]
        np.testing.assert_array_equal(got.topk_ids[untied, 0], ref.topk_ids[untied, 0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("teacher", ["dense", "moe", "gqa"])
def test_engine_topk_equals_prompt_logprobs(loop, teachers, teacher, dtype):
    path = teachers[teacher]
    # a small step budget: the 300-token sequence is prefilled in chunks over several steps
    backend = VllmTeacherBackend(str(path), VllmConfig(dtype=dtype, kv_cache_memory_bytes=64 << 20, max_logprobs=64,
                                                       max_num_batched_tokens=256))
    try:
        loop.run_until_complete(backend.start())
        assert backend.scoring == "engine-topk", backend.scoring_note
        seqs = heldout(path)
        for k in KS:
            ref = loop.run_until_complete(backend.score_prompt_logprobs(seqs, k))
            got = loop.run_until_complete(backend.score(seqs, k))
            np.testing.assert_array_equal(got.offsets, ref.offsets)
            assert got.topk_ids.shape == ref.topk_ids.shape == (sum(len(s) - 1 for s in seqs), k)
            print(teacher, dtype, k, json.dumps(compare_signals(ref, got)))
            (assert_float32_agreement if dtype == "float32" else assert_bfloat16_agreement)(ref, got, k)
        if teacher == "dense" and dtype == "float32":
            check_mixed_requests(loop, backend, seqs)
    finally:
        backend.shutdown()


def check_mixed_requests(loop, backend, seqs) -> None:
    """Fast and stock scoring at other k, and generation, in flight on the engine at once: each gives what it
    gives alone (the extension takes only the requests tagged for it)."""
    alone = [loop.run_until_complete(backend.score(seqs, 20)), loop.run_until_complete(backend.score_prompt_logprobs(seqs, 7)),
             loop.run_until_complete(backend.generate([s[:16] for s in seqs[:4]], 8))]

    async def together():
        return await asyncio.gather(backend.score(seqs, 20), backend.score_prompt_logprobs(seqs, 7),
                                    backend.generate([s[:16] for s in seqs[:4]], 8))

    mixed = loop.run_until_complete(together())
    for name in ("topk_ids", "topk_logprobs", "target_logprob", "tail_logprob"):
        for a, b in zip(alone[:2], mixed[:2]):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-5, err_msg=name)
    assert all(np.array_equal(a, b) for a, b in zip(alone[2].tokens, mixed[2].tokens))
