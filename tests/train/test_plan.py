"""The dry-run plan (raykd/train/plan.py): parameter counts, the memory model's terms, refusals.

    pytest tests/train/test_plan.py

Configs only (models on the meta device): the 70B / 8B shapes are Llama 3.1's published configs.
"""

from __future__ import annotations

import pytest

from raykd.config import ConfigError, DistillConfig

LLAMA3 = dict(vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
              tie_word_embeddings=False, num_key_value_heads=8, head_dim=128)
LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32)


def llama(**shape):
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA3, **shape)


def gpu_cfg(**train) -> DistillConfig:
    return DistillConfig.model_validate({
        "teacher": {"backend": "vllm", "num_gpus": 4, "num_replicas": 2, "vllm": {"tensor_parallel_size": 4, "gpu_memory_utilization": 0.9}},
        "data": {"seq_len": 4096}, "signals": {"loss_chunk_size": 1024},
        "train": {"num_workers": 8, "use_gpu": True, "strategy": "fsdp", "precision": "bf16",
                  "activation_checkpointing": True, "batch_size": 1, "grad_accum_steps": 8, **train},
    })


def test_parameter_counts_are_llama_3_1s():
    from raykd.train.plan import count_params

    total, root, layer = count_params(llama(**LLAMA_8B))
    assert total == 8_030_261_248  # Llama-3.1-8B
    assert root == 2 * 128256 * 4096 + 4096 and total == root + 32 * layer
    assert count_params(llama(**LLAMA_70B))[0] == 70_553_706_496  # Llama-3.1-70B


def test_8b_on_8_gpus_fits_with_fsdp_and_is_refused_with_ddp():
    from raykd.train.plan import GIB, resource_plan

    plan = resource_plan(gpu_cfg(), llama(**LLAMA_70B), llama(**LLAMA_8B))
    plan.check()
    text = plan.render()
    assert "2 replica(s) x 4 GPU(s)" in text and "8 worker(s) x 1 GPU" in text and "total    16 GPU(s)" in text
    assert "global batch 64 sequences" in text and "262,144 tokens per step" in text
    assert 20 * GIB < plan.memory.total < 60 * GIB
    assert plan.memory.optimizer == pytest.approx(8 * 8_030_261_248 / 8)  # AdamW's two fp32 moments, sharded
    ddp = resource_plan(gpu_cfg(strategy="ddp"), llama(**LLAMA_70B), llama(**LLAMA_8B))
    with pytest.raises(ConfigError, match=r"^train: the student needs about 1\d\d\.\d GiB per worker .* "
                                          r"train.gpu_memory_gib=80; try train.strategy=fsdp$"):
        ddp.check()


def test_each_knob_moves_the_term_it_should():
    from raykd.train.plan import student_memory

    s = llama(**LLAMA_8B)
    base = student_memory(gpu_cfg(activation_checkpointing=False, precision="fp32"), s)
    ac = student_memory(gpu_cfg(activation_checkpointing=True, precision="fp32"), s)
    bf16 = student_memory(gpu_cfg(activation_checkpointing=False), s)
    more_workers = student_memory(gpu_cfg(num_workers=16, activation_checkpointing=False, precision="fp32"), s)
    assert ac.activations < base.activations / 10 and ac.parameters == base.parameters
    assert bf16.activations == base.activations / 2 and bf16.optimizer == base.optimizer
    assert more_workers.optimizer == base.optimizer / 2 and more_workers.activations == base.activations
    full = {**gpu_cfg().model_dump(), "signals": {"loss_chunk_size": None}}  # null: the whole batch's logits
    unchunked = student_memory(DistillConfig.model_validate(full), s)
    assert unchunked.logits > 3 * base.logits  # (4096 x 128k) logits vs 1024-row chunks


def test_teacher_too_big_for_its_gpus_is_refused():
    from raykd.train.plan import resource_plan

    cfg = gpu_cfg()
    cfg.teacher.vllm.tensor_parallel_size = 1
    cfg.teacher.num_gpus = 1
    with pytest.raises(ConfigError, match=r"^teacher: 131\.4 GiB of weights per GPU exceed the 72\.0 GiB .* "
                                          r"raise teacher.vllm.tensor_parallel_size"):
        resource_plan(cfg, llama(**LLAMA_70B), llama(**LLAMA_8B)).check()


def test_cpu_plans_are_printed_not_refused():
    from raykd.train.plan import resource_plan

    cfg = DistillConfig.model_validate({"train": {"num_workers": 2, "gpu_memory_gib": 0.001}})
    plan = resource_plan(cfg, llama(**LLAMA_8B), llama(**LLAMA_8B))
    plan.check()  # CPU workers: the estimate is shown, never checked against GPU memory
    assert "(CPU workers: not checked)" in plan.render()
