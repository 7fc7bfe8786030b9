import pytest

from raykd.compress.plan import plan_compress, variant_name
from raykd.config import ConfigError, load_config
from raykd.config.compress import CompressConfig

CONFIG = "jobs/configs/compress.yaml"


def plan(*overrides):
    return plan_compress(load_config(CompressConfig, CONFIG, list(overrides)))


def test_default_config_plans_every_method_with_names():
    p = plan()
    names = [v.name for v in p.variants]
    assert names == ["int8-wo", "int8-dyn", "prune-50", "prune-70", "structured-h0.5-m0.5-d1", "lowrank-2x",
                     "lowrank-4x"]
    assert set(p.students) == {"kd-2x64", "kd-2x128"}
    assert p.students["kd-2x64"].student.hidden_size == 64 and p.students["kd-2x64"].run_name == "compress-kd-2x64"
    assert p.linear_shapes["gate_proj"] == (344, 128) and p.num_layers == 4


@pytest.mark.parametrize("override, message", [
    ("variants=[{method: distil}]", "variants.0: Input tag 'distil' found using 'method' does not match"),
    ("variants=[{method: magnitude_prune, sparsity: 1.0}]", "variants.0.magnitude_prune.sparsity: Input should be less than 1"),
    ("variants=[{method: magnitude_prune, sparsity: 0}]", "variants.0.magnitude_prune.sparsity: Input should be greater than 0"),
    ("variants=[{method: low_rank, rank: 129}]", "variants[0].rank: 129 exceeds the rank of the teacher's q_proj (128x128: at most 128)"),
    ("variants=[{method: low_rank}]", "give exactly one of ratio and rank"),
    ("variants=[{method: quantize, mode: int2}]", "variants.0.quantize.mode: Input should be"),
    ("variants=[{method: structured_prune, drop_layers: 4}]", "variants[0].drop_layers: 4 would remove all 4"),
    ("variants=[{method: low_rank, ratio: 2}, {method: low_rank, ratio: 2}]", "variants[1]: a second lowrank-2x"),
])
def test_bad_input_is_one_line_before_any_model_loads(override, message):
    with pytest.raises(ConfigError) as e:
        plan(override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_mode_torchao_cannot_run_here_is_refused():
    from raykd.compress.quantize import unsupported_reason

    reason = unsupported_reason("int4_weight_only")
    if reason is None:
        pytest.skip("this machine runs torchao's INT4 weight-only")
    with pytest.raises(ConfigError, match=r"variants\[0\].mode: torchao .* cannot run int4_weight_only on this machine"):
        plan("variants=[{method: quantize, mode: int4_weight_only}]")
    with pytest.raises(ConfigError, match=r"kd.quantize\[0\]: torchao"):
        plan("kd.quantize=[int4_weight_only]")


def test_unknown_key_and_names():
    with pytest.raises(ConfigError, match="unknown config key 'recovery.stepz'"):
        plan("recovery.stepz=3")
    from raykd.config.compress import LowRankVariant, StructuredVariant

    assert variant_name(LowRankVariant(method="low_rank", rank=8)) == "lowrank-r8"
    assert variant_name(StructuredVariant(method="structured_prune", heads=0.5)) == "structured-h0.5-m1-d0"
