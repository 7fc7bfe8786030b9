"""Strict config loading: YAML + key=value overrides, one-line errors naming the field or file."""

from pathlib import Path

import pytest

from raykd.config import ConfigError, DistillConfig, TinyTeacherConfig, flatten, load_config

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "jobs" / "configs" / "quickstart.yaml"


def test_quickstart_parses_and_overrides_apply():
    cfg = load_config(DistillConfig, QUICKSTART, ["loss.alpha=0.7", "train.max_steps=3", "teacher.path=null"])
    assert cfg.loss.alpha == 0.7 and cfg.train.max_steps == 3 and cfg.teacher.path is None
    assert cfg.run_name == "quickstart"
    flat = flatten(cfg)
    assert flat["loss.temperature"] == "1.0" and flat["teacher.build.hidden_size"] == "128"


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["loss.alhpa=0.5"], "unknown config key 'loss.alhpa'"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["loss.alpha=1.5"], "loss.alpha"),
        (["loss.temperature=0"], "loss.temperature"),
        (["loss.temperature=-1"], "loss.temperature"),
        (["train.num_workers=0"], "train.num_workers"),
        (["teacher.build.hidden_size=100", "teacher.build.num_heads=4"], "head_dim 25"),
        (["loss.tail=drop"], "loss.tail"),
        (["run_name=has space"], "run_name"),
        (["alpha"], "not key=value"),
    ],
)
def test_bad_values_give_one_line_naming_the_field(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(DistillConfig, QUICKSTART, overrides)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(DistillConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_config(DistillConfig, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(DistillConfig, scalar)


def test_defaults_validate_and_vllm_head_sizes():
    assert load_config(DistillConfig, None).loss.alpha == 0.5
    assert TinyTeacherConfig(hidden_size=256, num_heads=4)
    with pytest.raises(ValueError):
        TinyTeacherConfig(hidden_size=96, num_heads=2)  # head_dim 48 is not a vLLM CPU head size
