"""Low-rank factorisation: each decoder linear layer W (out, in) replaced by B @ A from its truncated SVD.

    ranks = ranks_for(model, ratio=2.0)      # {layer name: r} giving >= 2x fewer parameters per layer
    factorise(model, ranks)                  # in place: nn.Linear -> nn.Sequential(A, B)
    save_lowrank(model, tokenizer, out_dir)  # loads with AutoModelForCausalLM(..., trust_remote_code=True)

W = U S V^T; keeping the r largest singular values, A = sqrt(S_r) V_r^T (r, in), B = U_r sqrt(S_r) (out, r),
the best rank-r approximation in the Frobenius norm (Eckart-Young): ||W - B A||_F equals the norm of the
discarded singular values (tests/compress/test_lowrank.py). A rank-r pair has r (in + out) parameters, so a
compression of `ratio` in a layer needs r = floor(in * out / (ratio (in + out))). The SVD runs in float64.

The saved directory is not a plain Llama: its config maps transformers' auto classes to the copied
modeling file (raykd/compress/lowrank_llama.py), hence `trust_remote_code=True` to load it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from raykd.compress.lowrank_llama import replace_linears
from raykd.compress.prune import decoder_linears

MODELING_FILE = Path(__file__).with_name("lowrank_llama.py")


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int:
    """Largest r whose factors hold at most 1/ratio of the layer's weights (at least 1)."""
    return max(1, int(out_features * in_features // (ratio * (out_features + in_features))))


def ranks_for(model, ratio: float | None = None, rank: int | None = None) -> dict[str, int]:
    """{decoder linear name: rank}: from `ratio` (per layer) or one explicit `rank` for all. A rank above a
    layer's min(in, out) is an error."""
    ranks = {}
    for name, layer in decoder_linears(model).items():
        out_f, in_f = layer.weight.shape
        r = rank if rank is not None else rank_for_ratio(out_f, in_f, ratio)
        if r > min(out_f, in_f):
            raise ValueError(f"rank {r} exceeds {name}'s full rank {min(out_f, in_f)} ({out_f}x{in_f})")
        ranks[name] = r
    return ranks


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A (r, in), B (out, r), norm of the discarded singular values) of `weight` (out, in)."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = root[:, None] * vh[:rank]
    b = u[:, :rank] * root[None, :]
    return a.to(weight.dtype), b.to(weight.dtype), float(s[rank:].norm())


@torch.no_grad()
def factorise(model, ranks: dict[str, int]) -> dict[str, float]:
    """Replace each named decoder linear by its rank-r SVD product, in place. Returns {name: discarded norm}."""
    dense = {name: (layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone())
             for name, layer in decoder_linears(model).items() if name in ranks}
    replace_linears(model, ranks)
    discarded = {}
    for name, (weight, bias) in dense.items():
        a, b, discarded[name] = svd_factors(weight, ranks[name])
        pair = model.get_submodule(name)
        pair[0].weight.copy_(a)
        pair[1].weight.copy_(b)
        if bias is not None:
            pair[1].bias.copy_(bias)
    model.config.lowrank_ranks = dict(ranks)
    return discarded


def save_lowrank(model, out_dir: str | Path) -> Path:
    """Write a factorised Llama as an HF directory whose config points transformers at the modeling file
    copied beside the weights (the caller writes the tokenizer)."""
    if model.config.model_type not in ("llama", "llama_lowrank"):
        raise ValueError(f"low-rank directories are written for Llama models, not {model.config.model_type}")
    out = Path(out_dir)
    model.save_pretrained(out)
    shutil.copy2(MODELING_FILE, out / "modeling_lowrank.py")
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="llama_lowrank", architectures=["LowRankLlamaForCausalLM"],
                  lowrank_ranks=model.config.lowrank_ranks,
                  auto_map={"AutoConfig": "modeling_lowrank.LowRankLlamaConfig",
                            "AutoModelForCausalLM": "modeling_lowrank.LowRankLlamaForCausalLM"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def is_lowrank_dir(path: str | Path) -> bool:
    p = Path(path) / "config.json"
    return p.is_file() and json.loads(p.read_text()).get("model_type") == "llama_lowrank"
