"""A Llama whose chosen linear layers are rank-r products: the modeling file of a factorised directory.

This file is copied as `modeling_lowrank.py` into every low-rank directory raykd writes, and its
`config.json` maps transformers' auto classes to it, so the directory loads with transformers alone:

    AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)

`config.lowrank_ranks` = {"model.layers.0.self_attn.q_proj": r, ...}: each named nn.Linear(in, out) becomes
nn.Sequential(Linear(in, r, bias=False), Linear(r, out, bias)), i.e. W ~= B @ A with A (r, in), B (out, r).
Self-contained on purpose (torch and transformers only): the directory must load without raykd.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


class LowRankLlamaConfig(LlamaConfig):
    model_type = "llama_lowrank"

    def __init__(self, lowrank_ranks: dict | None = None, **kwargs):
        self.lowrank_ranks = dict(lowrank_ranks or {})
        super().__init__(**kwargs)


def low_rank_linear(layer: torch.nn.Linear, rank: int) -> torch.nn.Sequential:
    """An (untrained) rank-`rank` stand-in of `layer` with the same input, output, bias, dtype."""
    first = torch.nn.Linear(layer.in_features, rank, bias=False, dtype=layer.weight.dtype)
    second = torch.nn.Linear(rank, layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype)
    return torch.nn.Sequential(first, second)


def replace_linears(model: torch.nn.Module, ranks: dict) -> None:
    """Swap each module named in `ranks` for its low-rank Sequential (shapes only; weights set by the caller
    or by from_pretrained)."""
    for name, rank in ranks.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, low_rank_linear(getattr(parent, child), int(rank)))


class LowRankLlamaForCausalLM(LlamaForCausalLM):
    config_class = LowRankLlamaConfig

    def __init__(self, config: LowRankLlamaConfig):
        super().__init__(config)
        replace_linears(self, config.lowrank_ranks)
        self.post_init()
