"""Typed, strict configuration of every raykd job: one pydantic model per job, validated before any work.

    from raykd.config import DistillConfig, load_config
    cfg = load_config(DistillConfig, "jobs/configs/quickstart.yaml", ["loss.alpha=0.7"])

Owns: the base model and one-line `ConfigError` (base.py), the sections every job shares (teacher.py, loss.py)
and the job configs (distill.py, capture.py, pipeline.py, sweep.py, mlm.py). Every other package reads its
own sub-config from here. May import: pydantic and yaml only (no torch, Ray, MLflow or transformers; a test
checks), nothing else of raykd: it is the bottom layer.

Re-exported below: the base helpers, the distill and capture configs and their sections. The pipeline,
sweep and masked-LM configs are imported from their modules (raykd.config.pipeline, .sweep, .mlm).
"""

from raykd.config.base import (
    ConfigError,
    StrictModel,
    default_cache_dir,
    deep_merge,
    flatten,
    load_config,
    parse_overrides,
    read_yaml_tree,
    validate,
)
from raykd.config.capture import CaptureConfig
from raykd.config.distill import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    MlflowConfig,
    SignalsConfig,
    StudentConfig,
    TrainConfig,
)
from raykd.config.loss import (
    AdversarialConfig,
    AttentionMatchConfig,
    CrossTokenizerConfig,
    DynamicTemperatureConfig,
    HiddenMatchConfig,
    LossConfig,
    ScheduleConfig,
    SeqKDConfig,
)
from raykd.config.on_policy import OnPolicyConfig
from raykd.config.teacher import (
    TeacherAutoscalingConfig,
    TeacherConfig,
    TinyMoeConfig,
    TinyTeacherConfig,
    VllmConfig,
)

__all__ = [
    "AdversarialConfig", "AttentionMatchConfig", "CaptureConfig", "ConfigError", "CrossTokenizerConfig", "DataConfig", "DistillConfig",
    "DynamicTemperatureConfig", "EvalConfig", "HiddenMatchConfig", "LossConfig", "MlflowConfig", "OnPolicyConfig", "ScheduleConfig",
    "SeqKDConfig", "SignalsConfig", "StrictModel", "StudentConfig", "TeacherAutoscalingConfig", "TeacherConfig",
    "TinyMoeConfig", "TinyTeacherConfig", "TrainConfig", "VllmConfig", "deep_merge", "default_cache_dir",
    "flatten", "load_config", "parse_overrides", "read_yaml_tree", "validate",
]
