"""The engine top-k path (raykd/teacher/vllm_topk.py, the default) against vLLM's prompt_logprobs path (the
fallback) on one engine: same rows, same top-k, same log-probs. Used by test_vllm_engine.py (the dense teacher,
float32 and bfloat16) and test_vllm_moe.py (a mixture-of-experts teacher with grouped-query attention).

Both paths read the same logits (the engine's own LM head), so they differ only in how the log-softmax and the
top-k are computed: vLLM's float32 log_softmax + torch.topk vs raykd's fused kernel (float64 log-sum-exp).
- float32: top-1 identical on every row, every log-prob within 1e-4 (the kernel is closer to float64 than vLLM).
- bfloat16: logits carry 8 mantissa bits, so exact ties among the top logits are common and the two paths may
  order tied ids differently (raykd: lower id first; torch.topk: unspecified). Bounds: those of the
  bf16 agreement test (test_vllm_engine.py: top-1 > 0.9, median < 0.05, max < 1.0) and, stronger, the
  sorted log-probs agree at every rank within 1e-4 and top-1 is identical wherever it is not an exact tie.
"""

from __future__ import annotations

import asyncio
import gc
import json

import numpy as np
import pytest

from raykd.teacher.logprob_arrays import compare_signals

KS = (1, 20, 64)


@pytest.fixture(scope="module")
def loop():
    """One event loop per module: AsyncLLM binds its output handler to the loop of its first request."""
    loop = asyncio.new_event_loop()
    yield loop
    # An engine's shutdown() only schedules the cancellation of its output handler: let it run here. A task
    # left pending keeps its zmq socket open, and the zmq context's finalizer then blocks for good in
    # whichever later test the garbage collector happens to run in.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    gc.collect()
    loop.close()


def heldout_with_ragged(path, n: int = 12, length: int = 64) -> list[np.ndarray]:
    """n x `length` tokens of held-out text, plus ragged ones: 2, 17 and 300 tokens (300 > the engines' 256-token
    step budget, so it is prefilled in chunks)."""
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus

    ids = np.asarray(AutoTokenizer.from_pretrained(path)(generate_corpus(20_000, seed=7)).input_ids, np.int32)
    seqs = [ids[i * length : (i + 1) * length] for i in range(n)]
    return seqs + [seqs[0][:2], seqs[1][:17], ids[n * length : n * length + 300]]


def assert_float32_agreement(ref, got) -> None:
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


def check_topk_paths_agree(loop, backend, seqs, dtype: str) -> None:
    """score() (engine top-k) == score_prompt_logprobs() at k = 1, 20, 64 on `backend`'s engine."""
    for k in KS:
        ref = loop.run_until_complete(backend.score_prompt_logprobs(seqs, k))
        got = loop.run_until_complete(backend.score(seqs, k))
        np.testing.assert_array_equal(got.offsets, ref.offsets)
        assert got.topk_ids.shape == ref.topk_ids.shape == (sum(len(s) - 1 for s in seqs), k)
        print(dtype, k, json.dumps(compare_signals(ref, got)))
        if dtype == "float32":
            assert_float32_agreement(ref, got)
        else:
            assert_bfloat16_agreement(ref, got, k)


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
