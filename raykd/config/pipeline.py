"""Typed config of `raykd pipeline`: an ordered list of distillation stages over shared defaults.

    cfg = load_pipeline_config("jobs/configs/pipeline_three_stage.yaml",
                               ["datasets.general.source=../shared/data/tinyshakespeare/input.txt",
                                "stages.domain.train.max_steps=20"])
    stage_cfg = validate_stage(cfg, 2)  # the stage's DistillConfig (raykd/pipeline/ runs it)

Each stage is a *partial* `DistillConfig` (its own teacher, student, data, loss, train, seed sections)
deep-merged over the pipeline's `defaults`, plus a few pipeline-only keys (`name`, `kind`, `dataset`,
`adapt_teacher`, `responses`). Data sets are named once under `datasets` and referred to by name from
stages and from `eval`, so pointing the whole pipeline at other text is one override per data set.
The pipeline owns each stage's `run_name`, `output_dir`, `mlflow` and evaluation: stages may not set them.

Overrides address stages by name or index: `stages.domain.loss.alpha=0.9` or `stages.2.loss.alpha=0.9`.
This module imports pydantic and yaml only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raykd.config.base import ConfigError, StrictModel, deep_merge, parse_overrides, read_yaml_tree, validate
from raykd.config.distill import DataConfig, DistillConfig, MlflowConfig

NAME = r"^[A-Za-z0-9_.-]+$"
# DistillConfig sections the pipeline sets itself for every stage.
PIPELINE_OWNED = ("run_name", "output_dir", "mlflow", "eval")
# Every stage starts from these, under the pipeline's `defaults`.
BASE_DEFAULTS: dict[str, Any] = {"eval": {"baseline": False}}


class GeneratedData(StrictModel):
    """GSM8K-style math word problems made by raykd/data/tasks.py (used when `source: generated`)."""

    records: int = Field(2000, ge=2, description="Number of question/answer records.")
    seed: int = Field(11, description="Generator seed; use different seeds for train and test sets.")


class DatasetConfig(DataConfig):
    """A named data set: a `DataConfig`, whose `source` may also be `generated` (no files needed)."""

    generated: GeneratedData = Field(default_factory=GeneratedData, description="Used when source is 'generated'.")


class AdaptTeacherConfig(StrictModel):
    """Make a domain teacher: continue pre-training the stage's teacher on a data set's training split.

    The adapted teacher keeps the base teacher's tokenizer (so it can teach the same student) and is
    cached under <cache>/teachers/adapted-<fingerprint>: a resumed or repeated pipeline reuses it.
    """

    dataset: str | None = Field(None, description="Data set name; default: the stage's own.")
    steps: int = Field(40, ge=1, description="AdamW steps (more: a better domain teacher, minutes on CPU).")
    batch_size: int = Field(8, ge=1, description="Sequences per step.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (linear warm-up, cosine decay to 10 %).")
    warmup_steps: int = Field(4, ge=0, description="Linear warm-up steps.")


class ResponsesConfig(StrictModel):
    """Instruction distillation: the stage's teacher answers prompts; the student trains on prompt + answer.

    Prompts are `<prompt_field>` + a blank line (the same layout as a `text_fields` pair), taken from the
    head of the stage's data set. Greedy answers are cached per (teacher, prompts, settings).
    """

    prompt_field: str = Field("question", description="jsonl field holding the prompt.")
    response_field: str = Field("answer", description="Field name the teacher's answer is stored under.")
    max_prompts: int = Field(64, ge=1, description="Prompts answered (from the start of the data set).")
    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per answer.")
    temperature: float = Field(0.0, ge=0, description="0: greedy; > 0: sampled (then cached as first drawn).")
    stop_after: str | None = Field(
        "####", description="Cut the answer after the first line that contains this marker (GSM8K's answer line)."
    )
    request_prompts: int = Field(8, ge=1, description="Prompts per generate request to the teacher.")
    max_inflight: int = Field(4, ge=1, description="Requests in flight at once (keeps several replicas busy).")


class StageSpec(BaseModel):
    """One stage. Keys other than the ones below are a partial DistillConfig merged over `defaults`."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = Field(pattern=NAME, description="Stage name: MLflow child run, output folder, overrides.")
    kind: Literal["general", "instruction", "domain"] = Field(
        "general", description="What the stage is for (a lineage tag; behaviour comes from its settings)."
    )
    dataset: str = Field(description="Name of the data set in `datasets` the student distils on.")
    adapt_teacher: AdaptTeacherConfig | None = Field(None, description="Fine-tune the teacher first (domain teacher).")
    responses: ResponsesConfig | None = Field(None, description="Train on the teacher's answers to the prompts.")

    def distill_overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineEvalConfig(StrictModel):
    """Per-stage evaluation of the student (and of each stage's teacher, once)."""

    general: str = Field(description="Data set for the general held-out loss (forgetting).")
    domain: str = Field(description="Data set for the domain held-out loss (gain).")
    exact_match: str | None = Field(None, description="jsonl data set whose answers end in '#### <answer>'.")
    question_field: str = Field("question", description="Prompt field of the exact-match set.")
    answer_field: str = Field("answer", description="Answer field of the exact-match set.")
    seq_len: int = Field(128, ge=8, description="Tokens per held-out sequence.")
    max_sequences: int = Field(32, ge=1, description="Held-out sequences scored per data set.")
    em_problems: int = Field(16, ge=1, description="Problems generated and checked for exact match.")
    em_max_new_tokens: int = Field(96, ge=1, description="Greedy tokens per exact-match answer.")
    gen_prompts: int = Field(2, ge=1, description="Prompts for the generation-throughput measure.")
    gen_tokens: int = Field(32, ge=1, description="New tokens per throughput prompt.")
    evaluate_init: bool = Field(True, description="Also evaluate the student before the first stage.")


class RegistryConfig(StrictModel):
    model_name: str | None = Field(
        "raykd-student", description="Model Registry name of the final student; null: log it, don't register."
    )


class PipelineConfig(StrictModel):
    """`raykd pipeline`: stages run in order; the student of stage i is the start of stage i + 1."""

    name: str = Field("pipeline", pattern=NAME, description="Parent MLflow run; prefixes stage runs and outputs.")
    output_dir: str = Field("outputs", description="Students go to <output_dir>/<name>/<name>-<stage>/student.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Partial DistillConfig under every stage.")
    datasets: dict[str, DatasetConfig] = Field(min_length=1, description="Named data sets.")
    stages: list[StageSpec] = Field(min_length=1, description="Ordered stages.")
    eval: PipelineEvalConfig
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    mlflow: MlflowConfig = Field(default_factory=lambda: MlflowConfig(experiment="raykd-pipeline"))

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = [k for k in PIPELINE_OWNED if k in value]
        if owned:
            raise ValueError(f"'{owned[0]}' is set by the pipeline for every stage (see the pipeline's own sections)")
        try:
            validate(DistillConfig, deep_merge(BASE_DEFAULTS, value), "defaults")
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("defaults: ")) from None
        return value


def check_pipeline(cfg: PipelineConfig) -> None:
    """Cross-field checks (names that must exist, keys the pipeline owns), as one ConfigError line."""
    names = [s.name for s in cfg.stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"stages: stage name '{dup[0]}' is used twice")
    known = ", ".join(cfg.datasets)
    for i, s in enumerate(cfg.stages):
        for field, ds in (("dataset", s.dataset), ("adapt_teacher.dataset", s.adapt_teacher and s.adapt_teacher.dataset)):
            if ds and ds not in cfg.datasets:
                raise ConfigError(f"{stage_label(i, s.name)}.{field}: no data set named '{ds}' (datasets: {known})")
        owned = [k for k in PIPELINE_OWNED if k in s.distill_overrides()]
        if owned:
            raise ConfigError(f"{stage_label(i, s.name)}.{owned[0]}: set by the pipeline, not per stage")
        if s.adapt_teacher and (s.distill_overrides().get("teachers") or cfg.defaults.get("teachers")):
            raise ConfigError(f"{stage_label(i, s.name)}.adapt_teacher: makes one domain teacher; with teachers, "
                              "name the domain teacher as one of teachers.apps")
        if i > 0 and (s.distill_overrides().get("student") or {}).get("path"):
            raise ConfigError(f"{stage_label(i, s.name)}.student.path: set by the pipeline (the previous stage's student)")
    if (cfg.defaults.get("student") or {}).get("path"):
        raise ConfigError("defaults.student.path: give the starting student on the first stage only")
    for field in ("general", "domain", "exact_match"):
        ds = getattr(cfg.eval, field)
        if ds and ds not in cfg.datasets:
            raise ConfigError(f"eval.{field}: no data set named '{ds}' (datasets: {known})")


def stage_label(index: int, name: str) -> str:
    """How errors and logs name a stage: `stages[1] (instruction)`."""
    return f"stages[{index}] ({name})"


def stage_run_name(cfg: PipelineConfig, index: int) -> str:
    return f"{cfg.name}-{cfg.stages[index].name}"


def stage_tree(cfg: PipelineConfig, index: int, dataset_sources: dict[str, str] | None = None) -> dict[str, Any]:
    """The stage's full DistillConfig as a dict: base ← defaults ← its data set ← its own keys ← pipeline keys.

    `dataset_sources` maps data set names to resolved file paths (for `source: generated`).
    """
    stage = cfg.stages[index]
    # Only what the data set sets explicitly: `defaults.data` (e.g. seq_len) still applies to the rest.
    data = cfg.datasets[stage.dataset].model_dump(exclude={"generated"}, exclude_unset=True)
    if dataset_sources and stage.dataset in dataset_sources:
        data["source"] = dataset_sources[stage.dataset]
    tree = deep_merge(deep_merge(BASE_DEFAULTS, cfg.defaults), {"data": data})
    own = stage.distill_overrides()
    if "teachers" in own:  # a stage that names its teachers replaces the defaults' single teacher, and back
        tree.pop("teacher", None)
    elif "teacher" in own:
        tree.pop("teachers", None)
    tree = deep_merge(tree, own)
    tree.update(
        run_name=stage_run_name(cfg, index),
        output_dir=str(Path(cfg.output_dir) / cfg.name),
        mlflow=cfg.mlflow.model_dump(),
    )
    return tree


def validate_stage(cfg: PipelineConfig, index: int, dataset_sources: dict[str, str] | None = None) -> DistillConfig:
    """The stage's DistillConfig, or one ConfigError line naming the stage and the field."""
    stage = validate(DistillConfig, stage_tree(cfg, index, dataset_sources), stage_label(index, cfg.stages[index].name))
    if stage.loss.cross_tokenizer is not None:  # stages share one tokenizer (eval sets, chained students)
        raise ConfigError(f"{stage_label(index, cfg.stages[index].name)}: loss.cross_tokenizer: not available in "
                          "pipelines (raykd distill only)")
    return stage


def _apply_stage_overrides(tree: dict[str, Any], stage_ov: dict[str, Any]) -> None:
    stages = tree.get("stages")
    if not isinstance(stages, list):
        raise ConfigError("override stages.*: the config has no stage list")
    names = [s.get("name") if isinstance(s, dict) else None for s in stages]
    for key, value in stage_ov.items():
        if key.isdigit() and int(key) < len(stages):
            idx = int(key)
        elif key in names:
            idx = names.index(key)
        else:
            raise ConfigError(f"override stages.{key}: no stage named '{key}' (stages: {', '.join(map(str, names))})")
        if not isinstance(value, dict):
            raise ConfigError(f"override stages.{key}: give a field, e.g. stages.{key}.loss.alpha=0.5")
        stages[idx] = deep_merge(stages[idx], value)


def load_pipeline_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read the YAML, apply `key=value` overrides (stages by name or index), validate strictly."""
    tree, source = read_yaml_tree(path)
    ov = parse_overrides(overrides or [])
    stage_ov = ov.pop("stages", None)
    tree = deep_merge(tree, ov)
    if isinstance(stage_ov, list):  # stages=[...] replaces the whole list
        tree["stages"] = stage_ov
    elif stage_ov is not None:
        if not isinstance(stage_ov, dict):
            raise ConfigError("override stages: give a stage field, e.g. stages.domain.loss.alpha=0.5")
        _apply_stage_overrides(tree, stage_ov)
    if isinstance(tree.get("stages"), list) and not tree["stages"]:
        raise ConfigError(f"{source}: stages: the pipeline has no stages (give at least one)")
    cfg = validate(PipelineConfig, tree, source)
    check_pipeline(cfg)
    return cfg
