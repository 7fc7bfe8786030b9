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
    vllm = load_config(DistillConfig, QUICKSTART, ["loss.on_policy.fraction=0.5", "loss.on_policy.engine=vllm",
                                                   "loss.on_policy.sync_every=4"]).loss.on_policy
    assert vllm.engine == "vllm" and vllm.sync_every == 4


@pytest.mark.parametrize("overrides, needle", [
    (["loss.on_policy.fraction=1.5"], "loss.on_policy.fraction"),
    (["loss.on_policy.max_new_tokens=0"], "loss.on_policy.max_new_tokens"),
    (["loss.on_policy.top_p=0"], "loss.on_policy.top_p"),
    (["loss.on_policy.max_staleness=-1"], "loss.on_policy.max_staleness"),
    (["loss.on_policy.engine=sglang"], "loss.on_policy.engine"),
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


def test_sweeps_search_lambda_and_beta(tmp_path):
    """`loss.*` keys are sweepable as they are: lambda (fraction), beta and T as Tune dimensions, each trial's
    DistillConfig carries them, and a space corner the config refuses is caught before any trial."""
    from raykd.config.sweep import load_sweep, trial_config
    from raykd.sweep.space import tune_space
    from tests.sweep.examples import error_of, write_sweep

    space = {"loss.on_policy.fraction": {"choice": [0.5, 1.0]}, "loss.beta": {"uniform": [0.1, 0.9]},
             "loss.temperature": {"uniform": [1.0, 2.0]}}
    sweep, base = load_sweep(write_sweep(tmp_path, space=space))
    assert set(tune_space(sweep)) == set(space)
    cfg = trial_config(base, sweep, {"loss.on_policy.fraction": 1, "loss.beta": 0.3, "loss.temperature": 1.5})
    assert cfg.loss.on_policy.fraction == 1.0 and cfg.loss.beta == 0.3 and cfg.loss.on_policy.enabled
    bad = {"loss.on_policy.fraction": {"choice": [0.0, 1.0]}, "loss.on_policy.prompt_tokens": {"choice": [8, 4096]}}
    assert "loss.on_policy.prompt_tokens=4096" in error_of(write_sweep(tmp_path, space=bad))
    vllm = {"loss.on_policy.engine": {"choice": ["hf", "vllm"]}, "loss.beta": {"uniform": [0.1, 0.9]}}
    assert "not supported in sweeps" in error_of(write_sweep(tmp_path, space=vllm))


def test_pipeline_stages_can_be_on_policy():
    """A pipeline stage is a partial DistillConfig: `loss.on_policy` passes through to the stage's config."""
    from raykd.config.pipeline import load_pipeline_config, validate_stage

    path = QUICKSTART.parent / "pipeline_three_stage.yaml"
    cfg = load_pipeline_config(path, ["stages.instruction.loss.on_policy.fraction=1.0",
                                      "stages.instruction.loss.on_policy.max_new_tokens=16"])
    names = [s.name for s in cfg.stages]
    stage = validate_stage(cfg, names.index("instruction"))
    assert stage.loss.on_policy.fraction == 1.0 and stage.loss.on_policy.max_new_tokens == 16
    assert not validate_stage(cfg, names.index("general")).loss.on_policy.enabled
