"""A mixture-of-experts teacher (Qwen2-MoE layout: routed + shared experts, the DeepSeek-MoE recipe in small),
built offline like the dense one, served on Ray Serve by both backends, which score it alike.

    pytest -m slow tests/e2e/test_vllm_moe.py        # build (seconds) + a Serve app per backend
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from raykd.config import TeacherConfig, TinyMoeConfig, TinyTeacherConfig

from .conftest import serve_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moe_teacher(tmp_path_factory):
    from raykd.teacher.build import build_tiny_teacher

    cfg = TinyTeacherConfig(  # tests/conftest.py's tiny teacher with MoE layers
        vocab_size=384, hidden_size=64, num_heads=1, num_layers=2, corpus_chars=30_000, max_steps=15, seq_len=64,
        batch_size=16, max_minutes=5.0,  # generous: the step budget binds even on a loaded machine
        moe=TinyMoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64),
    )
    return build_tiny_teacher(cfg, tmp_path_factory.mktemp("moe") / "tiny-moe", progress=False, num_threads=1)


def test_moe_teacher_is_a_qwen2_moe_hf_directory(moe_teacher):
    cfg = json.loads((moe_teacher / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"]
    assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["shared_expert_intermediate_size"]) == (4, 2, 64)
    meta = json.loads((moe_teacher / "raykd_teacher.json").read_text())
    assert meta["config"]["moe"]["num_experts"] == 4 and meta["steps"] == 15
    assert meta["train_loss"] < meta["first_loss"] - 0.5  # it trains


def test_moe_teacher_served_and_scored_by_both_backends(ray_cluster, moe_teacher):
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus
    from raykd.teacher.service import launch_teacher

    tok = AutoTokenizer.from_pretrained(moe_teacher)
    ids = np.asarray(tok(generate_corpus(20_000, seed=7)).input_ids, np.int32)
    seqs = [ids[i * 64 : (i + 1) * 64] for i in range(8)]
    # On the session cluster (tests/e2e/conftest.py); both apps are deleted afterwards.
    with serve_app("moe-hf"), serve_app("moe-vllm"):
        common = dict(path=str(moe_teacher), num_replicas=1, num_cpus=1, dtype="float32")
        hf = launch_teacher(TeacherConfig(backend="hf", app_name="moe-hf", **common), str(moe_teacher), "moe")
        vl = launch_teacher(
            TeacherConfig(backend="vllm", app_name="moe-vllm", vllm=dict(dtype="float32", kv_cache_memory_bytes=64 << 20),
                          **common), str(moe_teacher), "moe")
        info = vl.info.remote().result()
        assert info.backend == "vllm" and info.scoring == "engine-topk", info  # the default path, on a MoE model
        ref, got = hf.score.remote(seqs, 20).result(), vl.score.remote(seqs, 20).result()
    np.testing.assert_array_equal(ref.offsets, got.offsets)
    # float32 both: routing decisions are identical unless two router logits tie within float32 noise.
    top1 = float(np.mean(ref.topk_ids[:, 0] == got.topk_ids[:, 0]))
    target = np.abs(ref.target_logprob - got.target_logprob)
    print(f"MoE fp32 agreement: top-1 {top1:.4f}, target |diff| max {target.max():.2e} median {np.median(target):.2e}")
    assert top1 > 0.99 and np.median(target) < 1e-4 and target.max() < 1e-2
