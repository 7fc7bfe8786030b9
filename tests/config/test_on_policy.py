"""`loss.on_policy` (raykd/config/on_policy.py): strict, described, one-line errors naming the field."""

from pathlib import Path

import pytest

from raykd.config import ConfigError, DistillConfig, OnPolicyConfig, load_config

QUICKSTART = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "quickstart.yaml"


def test_defaults_are_off_and_every_field_is_described():
    cfg = load_config(DistillConfig, QUICKSTART)
    assert cfg.loss.on_policy.fraction == 0 and not cfg.loss.on_policy.enabled
    missing = [name for name, f in OnPolicyConfig.model_fields.items() if not f.description]
    assert not missing


def test_the_issue_command_line_validates():
    cfg = load_config(DistillConfig, QUICKSTART, ["loss.on_policy.fraction=0.5", "loss.divergence=jsd",
                                                  "loss.on_policy.objective=sampled_reverse_kl"])
    op = cfg.loss.on_policy
    assert op.enabled and op.engine == "hf" and op.prompt_tokens + op.max_new_tokens <= 128


@pytest.mark.parametrize("overrides, needle", [
    (["loss.on_policy.fraction=1.5"], "loss.on_policy.fraction"),
    (["loss.on_policy.max_new_tokens=0"], "loss.on_policy.max_new_tokens"),
    (["loss.on_policy.top_p=0"], "loss.on_policy.top_p"),
    (["loss.on_policy.max_staleness=-1"], "loss.on_policy.max_staleness"),
    (["loss.on_policy.engine=sglang"], "loss.on_policy.engine"),
    (["loss.on_policy.engine=vllm"], "engine vllm"),
    (["loss.on_policy.objective=sampled_reverse_kl", "loss.on_policy.temperature=0"], "temperature > 0"),
    (["loss.on_policy.prompt_tokens=200", "loss.on_policy.fraction=0.5"], "loss.on_policy.prompt_tokens=200"),
    (["loss.on_policy.fraction=0.5", "loss.on_policy.prompt=records"], "data.format is text"),
    (["loss.on_policy.fraction=0.5", "train.strategy=fsdp"], "train.strategy fsdp"),
    (["loss.on_policy.fraction=0.5", "signals.loss_chunk_size=512"], "signals.loss_chunk_size"),
    (["loss.on_policy.fraction=0.5", "loss.hidden.weight=1", "loss.hidden.layer_map={1: 2}"], "loss.hidden"),
    (["loss.on_policy.fraction=0.5", "loss.dynamic_temperature.rule=entropy"], "dynamic_temperature"),
    (["loss.on_policy.typo=1"], "unknown config key 'loss.on_policy.typo'"),
])
def test_bad_settings_give_one_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(DistillConfig, QUICKSTART, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_off_means_the_cross_checks_do_not_apply():
    """fraction 0 (off): settings that only matter on-policy are not refused."""
    load_config(DistillConfig, QUICKSTART, ["loss.on_policy.prompt_tokens=500", "train.strategy=fsdp"])
