import math

import pytest
import torch

from raykd.compress.lowrank import factorise, is_lowrank_dir, rank_for_ratio, ranks_for, save_lowrank, svd_factors
from raykd.compress.prune import decoder_linears
from raykd.models import count_parameters
from tests.compress.tiny import tiny_llama, tokens


@pytest.mark.parametrize("rank", [1, 5, 16, 40])
def test_rank_r_reconstruction_error_is_the_discarded_singular_values_norm(rank):
    w = torch.randn(48, 64, dtype=torch.float64)
    a, b, discarded = svd_factors(w, rank)
    assert a.shape == (rank, 64) and b.shape == (48, rank)
    s = torch.linalg.svdvals(w)
    assert discarded == pytest.approx(float(s[rank:].norm()), rel=1e-12)
    assert float((w - b @ a).norm()) == pytest.approx(discarded, rel=1e-9)
    # no rank-r matrix does better (Eckart-Young): a random rank-r one is worse
    g = torch.randn(48, rank, dtype=torch.float64) @ torch.randn(rank, 64, dtype=torch.float64)
    assert float((w - g).norm()) > discarded


@pytest.mark.parametrize("ratio", [2.0, 4.0])
def test_ranks_give_the_requested_parameter_cut_per_layer(ratio):
    model = tiny_llama()
    ranks = ranks_for(model, ratio=ratio)
    for name, layer in decoder_linears(model).items():
        out_f, in_f = layer.weight.shape
        r = ranks[name]
        assert r * (in_f + out_f) <= out_f * in_f / ratio < (r + 1) * (in_f + out_f)
    assert rank_for_ratio(64, 64, 2) == 16 and rank_for_ratio(96, 64, 4) == 9


def test_rank_above_a_layers_is_refused():
    with pytest.raises(ValueError, match="exceeds .* full rank 64"):
        ranks_for(tiny_llama(), rank=65)


def test_factorised_model_saves_and_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama()
    dense_params = count_parameters(model)
    ranks = ranks_for(model, ratio=2.0)
    factor_params = sum(r * sum(decoder_linears(model)[n].weight.shape) for n, r in ranks.items())
    linear_params = sum(m.weight.numel() for m in decoder_linears(model).values())
    full = {n: min(m.weight.shape) for n, m in decoder_linears(model).items()}  # full rank: exact up to round-off
    x = tokens()
    with torch.no_grad():
        ref = model(x).logits
        exact = tiny_llama()
        factorise(exact, full)
        assert torch.allclose(exact(x).logits, ref, atol=1e-4)
    discarded = factorise(model, ranks)
    assert all(v > 0 for v in discarded.values())
    assert count_parameters(model) == dense_params - linear_params + factor_params
    assert factor_params <= linear_params / 2
    save_lowrank(model, tmp_path / "lr")
    assert is_lowrank_dir(tmp_path / "lr")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lr", trust_remote_code=True)
    assert count_parameters(loaded) == count_parameters(model)
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
        assert not math.isclose(float((loaded(x).logits - ref).abs().max()), 0.0, abs_tol=1e-4)
