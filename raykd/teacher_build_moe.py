"""The mixture-of-experts variant of the tiny offline teacher (the seed's real teacher is a DeepSeek-style MoE).

Same recipe as the dense teacher (raykd/teacher_build.py: corpus, tokenizer, pre-training, held-out
loss, atomic install, cache key); only the layers differ. `TinyTeacherConfig.moe` selects it:

    cfg = TinyTeacherConfig(moe=TinyMoeConfig(num_experts=8, num_experts_per_tok=2))
    path = ensure_tiny_teacher(cfg)                     # <cache>/teachers/tiny-<fingerprint>, Qwen2MoeForCausalLM

    python -m raykd.teacher_build --out /tmp/moe_teacher --set moe.num_experts=8 --set max_minutes=2

Layout: Qwen2-MoE, the closest small architecture to DeepSeek-MoE that both transformers and vLLM run on
CPU: every decoder layer's MLP is `num_experts` routed SwiGLU experts (top-`num_experts_per_tok`
softmax routing, weights not renormalised) plus one always-on shared expert with a sigmoid gate.
Attention is the dense teacher's shape (same head_dim, so vLLM's CPU attention accepts it) plus Qwen2's
q/k/v biases (vLLM's Qwen2-MoE always loads them).
"""

from __future__ import annotations

from raykd.config import TinyTeacherConfig


def make_moe_model(cfg: TinyTeacherConfig, vocab_size: int, eot_id: int):
    """A freshly initialised `Qwen2MoeForCausalLM` (float32) shaped by `cfg` and `cfg.moe`."""
    from transformers import GenerationConfig, Qwen2MoeConfig, Qwen2MoeForCausalLM

    moe = cfg.moe
    if moe is None:
        raise ValueError("make_moe_model needs cfg.moe (a TinyMoeConfig)")
    mcfg = Qwen2MoeConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,  # unused: every layer is sparse (decoder_sparse_step=1)
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        num_experts=moe.num_experts,
        num_experts_per_tok=moe.num_experts_per_tok,
        moe_intermediate_size=moe.moe_intermediate_size,
        shared_expert_intermediate_size=moe.shared_expert_intermediate_size,
        norm_topk_prob=False,
        qkv_bias=True,  # vLLM's Qwen2MoeForCausalLM always has q/k/v biases
        use_sliding_window=False,
        tie_word_embeddings=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        dtype="float32",
    )
    model = Qwen2MoeForCausalLM(mcfg)
    model.generation_config = GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    return model
