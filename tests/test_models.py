"""Student derivation from a teacher: depth, width, layer selection, weight initialisation."""

import pytest
import torch

from raykd.config import ConfigError, StudentConfig
from raykd.models import build_student, count_parameters, derive_student_config, init_from_teacher, select_layers


def test_select_layers():
    assert select_layers("uniform", 12, 4) == [0, 4, 7, 11]
    assert select_layers("uniform", 4, 1) == [3]
    assert select_layers("first", 6, 2) == [0, 1]
    assert select_layers("last", 6, 2) == [4, 5]
    assert select_layers([5, 0], 6, 2) == [5, 0]
    with pytest.raises(ConfigError, match="outside the teacher's layers"):
        select_layers([0, 6], 6, 2)
    with pytest.raises(ConfigError, match="exceeds the teacher's 6 layers"):
        select_layers("uniform", 6, 7)
    with pytest.raises(ConfigError, match="lists 1 layers"):
        select_layers([1], 6, 2)


def _llama(layers=4, hidden=128, heads=4, kv=2, inter=256, vocab=100):
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab)


def test_derive_student_config_keeps_head_dim_and_gqa_ratio():
    sc = derive_student_config(_llama(), StudentConfig(num_layers=2, hidden_size=64))
    assert (sc.num_hidden_layers, sc.hidden_size, sc.num_attention_heads, sc.num_key_value_heads) == (2, 64, 2, 1)
    assert sc.intermediate_size == 128 and sc.vocab_size == 100
    with pytest.raises(ConfigError, match="exceeds the teacher's 128"):
        derive_student_config(_llama(), StudentConfig(hidden_size=256))


def test_init_from_teacher_copies_mapped_layers_and_slices_width():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(_llama())
    sc = derive_student_config(teacher.config, StudentConfig(num_layers=2, hidden_size=64))
    student = AutoModelForCausalLM.from_config(sc)
    layer_map = select_layers("uniform", 4, 2)
    skipped = init_from_teacher(student, teacher.state_dict(), layer_map)
    assert skipped == []
    t, s = teacher.state_dict(), student.state_dict()
    torch.testing.assert_close(s["model.layers.1.mlp.up_proj.weight"], t["model.layers.3.mlp.up_proj.weight"][:128, :64])
    torch.testing.assert_close(s["model.layers.0.self_attn.q_proj.weight"], t["model.layers.0.self_attn.q_proj.weight"][:64, :64])
    torch.testing.assert_close(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"][:, :64])
    assert count_parameters(student) < count_parameters(teacher) / 3


def test_depth_only_student_reproduces_teacher_layers(tiny_teacher):
    """Full width and all layers: the student is the teacher, logits identical."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    student, t_cfg = build_student(str(tiny_teacher), StudentConfig(num_layers=None, hidden_size=None))
    ids = torch.randint(0, t_cfg.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits)
    small, _ = build_student(str(tiny_teacher), StudentConfig(num_layers=1, hidden_size=64))
    assert small.config.num_hidden_layers == 1
    out = small.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)
