import pytest
import torch

from raykd.compress.structured import importance, prune_structured
from raykd.models import count_parameters
from tests.compress.tiny import tiny_llama, tokens


def planted_model(dead_layer: int = 1):
    """3 layers, 4 query heads in 2 key/value groups, 96 MLP channels: in every layer the second key/value
    group and the upper half of the MLP channels output nothing, and `dead_layer` adds nothing to the stream."""
    model = tiny_llama(heads=4, kv_heads=2, layers=3, inter=96)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[16:] = 0  # kv head 1 (head_dim 16) -> query heads 2, 3 read zeros
            layer.mlp.up_proj.weight[48:] = 0
        model.model.layers[dead_layer].self_attn.o_proj.weight.zero_()
        model.model.layers[dead_layer].mlp.down_proj.weight.zero_()
    return model


def test_importance_finds_what_does_nothing():
    imp = importance(planted_model(), [tokens(4, 24, seed=s) for s in range(2)])
    assert imp.heads.shape == (3, 4) and imp.channels.shape == (3, 96) and imp.layers.shape == (3,)
    assert (imp.heads[:, 2:] == 0).all() and (imp.heads[:, :2] > 0).all()
    assert (imp.channels[:, 48:] == 0).all() and (imp.channels[:, :48] > 0).all()
    assert imp.layers[1] < 1e-9 < imp.layers[0] and imp.layers[2] > 1e-6


@pytest.mark.parametrize("dead_layer", [1, 2])
def test_pruning_the_dead_parts_keeps_the_outputs_and_the_config_loads(tmp_path, dead_layer):
    from transformers import AutoModelForCausalLM

    model = planted_model(dead_layer)
    x = tokens(3, 20, seed=7)
    imp = importance(model, [tokens(4, 24, seed=0)])
    small = prune_structured(model, imp, heads=0.5, mlp=0.5, drop_layers=1)
    c = small.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == \
        (2, 2, 1, 48, 16)
    assert count_parameters(small) < count_parameters(model)
    small.save_pretrained(tmp_path / "s")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert loaded.config.num_hidden_layers == 2 and loaded.config.hidden_size == 64
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)


def test_keeping_everything_is_the_identity():
    model = tiny_llama()
    x = tokens()
    same = prune_structured(model, importance(model, [x]))
    with torch.no_grad():
        assert torch.equal(same(x).logits, model(x).logits)


def test_live_units_pruned_change_outputs_and_too_many_layers_refused():
    model = tiny_llama()
    x = tokens()
    imp = importance(model, [x])
    small = prune_structured(model, imp, heads=0.5, mlp=0.25)
    with torch.no_grad():
        assert not torch.allclose(small(x).logits, model(x).logits, atol=1e-3)
    with pytest.raises(ValueError, match="leaves no layer"):
        prune_structured(model, imp, drop_layers=3)
