"""A tiny random Llama (HF directory in milliseconds) for the compression methods' unit tests."""

from __future__ import annotations

from pathlib import Path


def tiny_llama(heads: int = 4, kv_heads: int = 2, layers: int = 3, hidden: int = 64, inter: int = 96, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def tiny_llama_dir(path: Path, **kw) -> Path:
    tiny_llama(**kw).save_pretrained(path)
    return path


def tokens(n: int = 4, length: int = 24, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 96, (n, length), generator=g)


def tiny_tokenizer():
    """A real fast tokenizer over the 96 ids of `tiny_llama` (one word per id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(95)} | {"<unk>": 95}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
