"""`raykd pipeline`'s config: stages merged over defaults and their data set, overrides by stage name or
index, one-line errors naming the stage and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from raykd.config import ConfigError
from raykd.config.pipeline import PipelineConfig, load_pipeline_config, validate_stage
from tests.pipeline.tiny_pipeline import tiny_pipeline, write_yaml


CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "pipeline_three_stage.yaml"


# --------------------------------------------------------------------------------------------- config
def test_shipped_configs_validate_every_stage():
    for path in (CONFIG, CONFIG.with_name("pipeline_gpu_7b.yaml")):
        cfg = load_pipeline_config(path)
        stages = [validate_stage(cfg, i) for i in range(len(cfg.stages))]
        assert [s.run_name for s in stages] == [f"{cfg.name}-{s.name}" for s in cfg.stages]
    cfg = load_pipeline_config(CONFIG)
    assert [s.kind for s in cfg.stages] == ["general", "instruction", "domain"]


def test_stage_inherits_defaults_dataset_then_own_keys(tmp_path):
    tree = tiny_pipeline(Path("/t"), tmp_path)
    cfg = PipelineConfig.model_validate(tree)
    domain = validate_stage(cfg, 2, {"math_train": "/data/m.jsonl"})
    assert domain.loss.alpha == 0.8 and domain.loss.temperature == 1.0  # its own keys
    assert domain.loss.top_k == 8 and domain.train.batch_size == 4  # pipeline defaults
    assert domain.data.source == "/data/m.jsonl" and domain.data.text_fields == ["question", "answer"]  # data set
    assert domain.data.seq_len == 64  # defaults.data merged *under* the data set
    assert domain.run_name == "tiny-domain" and domain.output_dir == str(tmp_path / "out" / "tiny")
    assert domain.eval.baseline is False  # the pipeline evaluates; no hard-label twin per stage
    general = validate_stage(cfg, 0)
    assert general.loss.alpha == 0.5 and general.data.source == "builtin"


def test_overrides_address_stages_by_name_and_index(tmp_path):
    path = write_yaml(tiny_pipeline(Path("/t"), tmp_path), tmp_path / "p.yaml")
    cfg = load_pipeline_config(path, ["stages.domain.loss.alpha=0.3", "stages.0.train.max_steps=3",
                                      "datasets.general.source=/x.txt", "name=other"])
    assert validate_stage(cfg, 2).loss.alpha == 0.3
    assert validate_stage(cfg, 0).train.max_steps == 3
    assert validate_stage(cfg, 0).data.source == "/x.txt" and cfg.name == "other"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.domain.loss.tmperature=1"], "stages[2] (domain): unknown config key 'loss.tmperature'"),
        (["stages.instruction.tacher.path=/x"], "stages[1] (instruction): unknown config key 'tacher'"),
        (["stages.domain.loss.alpha=2"], "stages[2] (domain): loss.alpha: Input should be less than or equal to 1"),
        (["stages.nope.loss.alpha=0.1"], "override stages.nope: no stage named 'nope' (stages: general, instruction, domain)"),
        (["stages.domain.dataset=mth"], "stages[2] (domain).dataset: no data set named 'mth'"),
        (["eval.domain=gsm"], "eval.domain: no data set named 'gsm'"),
        (["stages.domain.run_name=x"], "stages[2] (domain).run_name: set by the pipeline"),
        (["stages.domain.student.path=/s"], "stages[2] (domain).student.path: set by the pipeline"),
        (["defaults.loss.alpah=1"], "defaults: unknown config key 'loss.alpah'"),
        (["stages=[]"], "stages: the pipeline has no stages"),
        (["stages.general.name=domain"], "stages: stage name 'domain' is used twice"),
    ],
)
def test_config_errors_are_one_line_naming_stage_and_field(tmp_path, overrides, message):
    path = write_yaml(tiny_pipeline(Path("/t"), tmp_path), tmp_path / "p.yaml")
    with pytest.raises(ConfigError) as err:
        cfg = load_pipeline_config(path, overrides)
        for i in range(len(cfg.stages)):
            validate_stage(cfg, i)
    assert message in str(err.value) and "\n" not in str(err.value)
