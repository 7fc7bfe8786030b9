import pytest
import torch

from raykd.compress.quantize import MODES, save_quantized, unsupported_reason
from tests.compress.tiny import tiny_llama_dir, tokens

pytest.importorskip("torchao")


def test_int8_weight_only_round_trip_within_half_a_scale(tmp_path):
    from transformers import AutoModelForCausalLM

    src = tiny_llama_dir(tmp_path / "base")
    original = AutoModelForCausalLM.from_pretrained(src).state_dict()
    save_quantized(src, "int8_weight_only", tmp_path / "q")
    config = (tmp_path / "q" / "config.json").read_text()
    assert "quantization_config" in config and "Int8WeightOnlyConfig" in config
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "q")  # the saved directory restores the INT8 model
    checked = 0
    for name, t in q.state_dict().items():
        if not hasattr(t, "qdata"):
            continue
        assert t.qdata.dtype == torch.int8 and ".layers." in name
        scale = t.scale.reshape(-1, 1)  # (out, 1): one scale per output channel
        err = (original[name] - t.dequantize()).abs()
        # s/2 exactly, up to float32 rounding of w / s (|w / s| <= 128: a few ulps of 128 ~ 1e-5 s)
        assert (err <= scale * (0.5 + 1e-4)).all(), name
        assert (err > scale * 0.45).any()  # the bound is met with little room: it is the rounding's
        assert err.max() > 0  # it really is quantized
        checked += 1
    assert checked == 3 * 7  # q, k, v, o, gate, up, down in each of 3 layers
    x = tokens()
    assert q(x).logits.shape == (4, 24, 96)


def test_int8_dynamic_saves_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    src = tiny_llama_dir(tmp_path / "base")
    save_quantized(src, "int8_dynamic", tmp_path / "q")
    assert "Int8DynamicActivationInt8WeightConfig" in (tmp_path / "q" / "config.json").read_text()
    base = AutoModelForCausalLM.from_pretrained(src)
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    x = tokens()
    with torch.no_grad():
        diff = (q(x).logits - base(x).logits).abs().max().item()
    assert 0 < diff < 0.1


def test_capability_probe_names_unknown_and_answers_for_every_mode():
    assert "unknown quantization mode" in unsupported_reason("int3")
    assert unsupported_reason("int8_weight_only") is None
    for mode in MODES:
        reason = unsupported_reason(mode)
        assert reason is None or ("cannot run" in reason and mode in reason)
