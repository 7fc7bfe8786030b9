"""A mixture-of-experts teacher with grouped-query attention (Qwen2-MoE layout: routed + shared experts, the
DeepSeek-MoE recipe in small; 2 query heads sharing 1 KV head), built offline like the dense one, scored alike by
both backends, and by the engine top-k path as by vLLM's prompt_logprobs path (tests/e2e/vllm_agreement.py).

    pytest -m slow tests/e2e/test_vllm_moe.py        # build (seconds) + one float32 engine

The Serve deployment around either backend is the same code for every architecture: tests/e2e/test_vllm_serve.py
serves the dense teacher on vLLM replicas.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from raykd.config import TinyMoeConfig, TinyTeacherConfig, VllmConfig

from .vllm_agreement import check_topk_paths_agree, heldout_with_ragged, loop  # noqa: F401 - loop: a fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moe_teacher(tmp_path_factory):
    from raykd.teacher.build import build_tiny_teacher

    cfg = TinyTeacherConfig(  # tests/conftest.py's tiny teacher with MoE layers and 2 query heads on 1 KV head
        vocab_size=384, hidden_size=64, num_heads=2, num_kv_heads=1, num_layers=2, corpus_chars=30_000, max_steps=15,
        seq_len=64, batch_size=16, max_minutes=5.0,  # generous: the step budget binds even on a loaded machine
        moe=TinyMoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64),
    )
    return build_tiny_teacher(cfg, tmp_path_factory.mktemp("moe") / "tiny-moe", progress=False, num_threads=1)


@pytest.fixture(scope="module")
def engine(moe_teacher, loop):
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    backend = VllmTeacherBackend(str(moe_teacher), VllmConfig(dtype="float32", kv_cache_memory_bytes=64 << 20,
                                                              max_logprobs=64, max_num_batched_tokens=256))
    loop.run_until_complete(backend.start())  # the scoring path is settled when the engine starts
    yield backend
    backend.shutdown()


def test_moe_teacher_is_a_qwen2_moe_hf_directory(moe_teacher):
    cfg = json.loads((moe_teacher / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"]
    assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["shared_expert_intermediate_size"]) == (4, 2, 64)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (2, 1)
    meta = json.loads((moe_teacher / "raykd_teacher.json").read_text())
    assert meta["config"]["moe"]["num_experts"] == 4 and meta["steps"] == 15
    assert meta["train_loss"] < meta["first_loss"] - 0.5  # it trains


def test_moe_teacher_scored_alike_by_both_backends(loop, engine, moe_teacher):
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus
    from raykd.teacher.hf_backend import HFTeacherBackend

    tok = AutoTokenizer.from_pretrained(moe_teacher)
    ids = np.asarray(tok(generate_corpus(20_000, seed=7)).input_ids, np.int32)
    seqs = [ids[i * 64 : (i + 1) * 64] for i in range(8)]
    assert engine.scoring == "engine-topk", engine.scoring_note  # the default path, on a MoE model
    ref = HFTeacherBackend(str(moe_teacher), dtype="float32").score(seqs, 20)
    got = loop.run_until_complete(engine.score(seqs, 20))
    np.testing.assert_array_equal(ref.offsets, got.offsets)
    # float32 both: routing decisions are identical unless two router logits tie within float32 noise.
    top1 = float(np.mean(ref.topk_ids[:, 0] == got.topk_ids[:, 0]))
    target = np.abs(ref.target_logprob - got.target_logprob)
    print(f"MoE fp32 agreement: top-1 {top1:.4f}, target |diff| max {target.max():.2e} median {np.median(target):.2e}")
    assert top1 > 0.99 and np.median(target) < 1e-4 and target.max() < 1e-2


def test_moe_engine_topk_equals_prompt_logprobs(loop, engine, moe_teacher):
    check_topk_paths_agree(loop, engine, heldout_with_ragged(moe_teacher), "float32")
