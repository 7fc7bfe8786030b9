"""Structured pruning, Minitron-style: whole attention heads, MLP channels and layers, ranked by activations.

    imp = importance(model, batches)                       # one forward pass over calibration blocks
    small = prune_structured(model, imp, heads=0.5, mlp=0.5, drop_layers=1)   # a smaller Llama, same class
    small.save_pretrained(out)                             # a plain HF directory with a smaller config

Importance (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation"),
from activations on calibration data, no gradients:
- a head: the mean L2 norm of its attention output (the head's slice of o_proj's input) over tokens; heads
  sharing a key/value head (grouped-query attention) are kept or dropped as one group, by their sum;
- an MLP channel: the mean |act(gate) * up| (its entry of down_proj's input) over tokens;
- a layer: block importance 1 - cos(h_in, h_out) averaged over tokens (how much the layer changes the
  residual stream; a layer that changes nothing scores 0).
The same number of heads and channels is kept in every layer (the HF config is uniform), the top ones of
each layer; the `drop_layers` least important layers go. The result is a model of the same architecture
with `num_attention_heads`, `num_key_value_heads`, `intermediate_size`, `num_hidden_layers` lowered and
`head_dim` kept, so `AutoModelForCausalLM.from_pretrained` loads it (tests/compress/test_structured.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Importance:
    heads: torch.Tensor  # (layers, heads)
    channels: torch.Tensor  # (layers, intermediate)
    layers: torch.Tensor  # (layers,)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@torch.no_grad()
def importance(model, batches) -> Importance:
    """Activation-based importance from `batches` (an iterable of (b, L) token-id tensors)."""
    cfg = model.config
    layers = model.model.layers
    n, heads, hd = len(layers), cfg.num_attention_heads, _head_dim(cfg)
    head_sum = torch.zeros(n, heads, dtype=torch.float64)
    chan_sum = torch.zeros(n, cfg.intermediate_size, dtype=torch.float64)
    block_sum = torch.zeros(n, dtype=torch.float64)
    tokens = 0
    hooks = []
    for i, layer in enumerate(layers):
        def attn_in(_m, args, i=i):  # (b, L, heads * head_dim): each head's output before o_proj mixes them
            x = args[0].double()
            head_sum[i] += x.reshape(*x.shape[:-1], heads, hd).norm(dim=-1).sum(dim=(0, 1))

        def mlp_in(_m, args, i=i):  # (b, L, intermediate)
            chan_sum[i] += args[0].double().abs().sum(dim=(0, 1))

        def block(_m, args, kwargs, output, i=i):  # (b, L, d) residual stream in and out of layer i
            h_in = (args[0] if args else kwargs["hidden_states"]).double()
            h_out = (output[0] if isinstance(output, tuple) else output).double()
            block_sum[i] += (1 - torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)).sum()

        hooks += [layer.self_attn.o_proj.register_forward_pre_hook(attn_in),
                  layer.mlp.down_proj.register_forward_pre_hook(mlp_in),
                  layer.register_forward_hook(block, with_kwargs=True)]
    was_training = model.training
    model.eval()
    try:
        for ids in batches:
            model(input_ids=ids)
            tokens += ids.numel()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise ValueError("importance needs at least one calibration batch")
    return Importance(head_sum / tokens, chan_sum / tokens, block_sum / tokens)


def _keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order."""
    return torch.topk(scores, k).indices.sort().values


def pruned_sizes(config, heads: float, mlp: float, drop_layers: int) -> tuple[int, int, int]:
    """(kept key/value heads, kept MLP channels, kept layers) for keep-fractions `heads`, `mlp`."""
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    keep_kv = max(1, round(kv * heads))
    keep_ch = max(1, round(config.intermediate_size * mlp))
    keep_layers = config.num_hidden_layers - drop_layers
    if keep_layers < 1:
        raise ValueError(f"drop_layers={drop_layers} leaves no layer of {config.num_hidden_layers}")
    return keep_kv, keep_ch, keep_layers


@torch.no_grad()
def prune_structured(model, imp: Importance, heads: float = 1.0, mlp: float = 1.0, drop_layers: int = 0):
    """A new, smaller model of `model`'s class keeping fraction `heads` of the key/value head groups (with
    their query heads), fraction `mlp` of the MLP channels and all but `drop_layers` layers, each chosen by
    `imp`; weights copied."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    group, hd = n_heads // kv, _head_dim(cfg)
    keep_kv, keep_ch, keep_layers = pruned_sizes(cfg, heads, mlp, drop_layers)
    layer_ids = _keep(imp.layers, keep_layers).tolist()

    new_cfg = cfg.__class__.from_dict(cfg.to_dict())
    new_cfg.num_hidden_layers, new_cfg.intermediate_size = keep_layers, keep_ch
    new_cfg.num_key_value_heads, new_cfg.num_attention_heads = keep_kv, keep_kv * group
    new_cfg.head_dim = hd  # explicit: hidden_size / heads no longer gives it
    if getattr(new_cfg, "layer_types", None):
        new_cfg.layer_types = [cfg.layer_types[i] for i in layer_ids]
    small = model.__class__(new_cfg).to(next(model.parameters()).dtype)

    state = model.state_dict()
    out = {}
    for new_i, old_i in enumerate(layer_ids):
        kv_keep = _keep(imp.heads[old_i].reshape(kv, group).sum(1), keep_kv)  # key/value groups
        q_rows = torch.cat([torch.arange(g * group * hd, (g + 1) * group * hd) for g in kv_keep.tolist()])
        kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in kv_keep.tolist()])
        ch = _keep(imp.channels[old_i], keep_ch)
        rows = {"self_attn.q_proj": q_rows, "self_attn.k_proj": kv_rows, "self_attn.v_proj": kv_rows,
                "mlp.gate_proj": ch, "mlp.up_proj": ch}
        cols = {"self_attn.o_proj": q_rows, "mlp.down_proj": ch}
        prefix_old, prefix_new = f"model.layers.{old_i}.", f"model.layers.{new_i}."
        for key, t in state.items():
            if not key.startswith(prefix_old):
                continue
            rest = key[len(prefix_old):]
            module, _, kind = rest.rpartition(".")
            if module in rows:
                t = t.index_select(0, rows[module])  # weight (out, in) and bias (out,)
            elif module in cols and kind == "weight":
                t = t.index_select(1, cols[module])
            out[prefix_new + rest] = t
    for key, t in state.items():
        if not key.startswith("model.layers."):
            out[key] = t  # embeddings, final norm, lm_head
    small.load_state_dict(out, strict=True)
    return small.eval()
