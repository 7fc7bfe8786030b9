"""The tiny offline teacher's tokenizer and (untrained) model; raykd/teacher/build.py trains them.

    tokenizer = train_tokenizer(text, vocab_size=4096, max_length=512)   # byte-level BPE, <|endoftext|> = bos/eos/pad
    model = make_model(cfg, vocab_size=len(tokenizer), eot_id=...)        # LlamaForCausalLM, or Qwen2-MoE with cfg.moe

Dense: a Llama (SwiGLU MLPs, head_dim = hidden_size / num_heads, untied embeddings; grouped-query attention
with `num_kv_heads` < num_heads).
Mixture of experts (`TinyTeacherConfig.moe`; the seed's real teacher is a DeepSeek-style MoE): Qwen2-MoE,
the closest small architecture to DeepSeek-MoE that both transformers and vLLM run on CPU. Every decoder
layer's MLP is `num_experts` routed SwiGLU experts (top-`num_experts_per_tok` softmax routing, weights not
renormalised) plus one always-on shared expert with a sigmoid gate. Attention is the dense teacher's shape
(same head_dim, so vLLM's CPU attention accepts it) plus Qwen2's q/k/v biases (vLLM's Qwen2-MoE always
loads them). transformers and tokenizers are imported inside the functions.
"""

from __future__ import annotations

from typing import Any

from raykd.config import TinyTeacherConfig

EOT = "<|endoftext|>"


def train_tokenizer(text: str, vocab_size: int, max_length: int, split_digits: bool = False):
    """A byte-level BPE (GPT-2 style) trained on `text`, as a `PreTrainedTokenizerFast`.

    `split_digits`: every digit is its own token (what makes digit-wise arithmetic learnable at this size).

    The vocabulary can end up smaller than `vocab_size`: merges never cross word boundaries, so a
    corpus with a few hundred words runs out of merges first.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunk = 65_536
    tok.train_from_iterator((text[i : i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def make_model(cfg: TinyTeacherConfig, vocab_size: int, eot_id: int):
    """A freshly initialised float32 `LlamaForCausalLM`, or `Qwen2MoeForCausalLM` when `cfg.moe` is set."""
    from transformers import GenerationConfig

    shared: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,  # MoE: unused, every layer is sparse (decoder_sparse_step=1)
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        dtype="float32",
    )
    if cfg.moe is None:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**shared, head_dim=cfg.hidden_size // cfg.num_heads))
    else:
        from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

        moe = cfg.moe
        model = Qwen2MoeForCausalLM(Qwen2MoeConfig(
            **shared,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            num_experts=moe.num_experts,
            num_experts_per_tok=moe.num_experts_per_tok,
            moe_intermediate_size=moe.moe_intermediate_size,
            shared_expert_intermediate_size=moe.shared_expert_intermediate_size,
            norm_topk_prob=False,
            qkv_bias=True,  # vLLM's Qwen2MoeForCausalLM always has q/k/v biases
            use_sliding_window=False,
        ))
    model.generation_config = GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    return model
