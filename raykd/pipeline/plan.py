"""Planning a pipeline: every check that needs no cluster, for every stage, before any stage starts.

    plan = plan_pipeline(cfg)      # raises one ConfigError line, or returns the stages ready to run

Config keys, data files and fields, teachers (the tiny one is built if needed, cached), the tokenizer of
every stage's teacher against the student's, lengths, the exact-match set and the evaluation sets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from raykd.config import ConfigError, DataConfig, DistillConfig, default_cache_dir
from raykd.config.pipeline import PipelineConfig, StageSpec, check_pipeline, stage_label, validate_stage
from raykd.pipeline.eval import EvalSets


@dataclass
class StagePlan:
    index: int
    spec: StageSpec
    cfg: DistillConfig  # resolved; student.path of stages > 0 is filled in when the stage runs
    prep: Any  # raykd.train.prepare.Prepared of the stage's data with its base teacher
    adapt_prep: Any = None  # Prepared of the adaptation data set, when adapting
    adapt_cfg: Any = None  # its DistillConfig (the stage's, or with the adaptation data set)
    records: list[dict] | None = None  # prompt records, for instruction stages

    @property
    def label(self) -> str:
        return stage_label(self.index, self.spec.name)


@dataclass
class Plan:
    stages: list[StagePlan]
    eval_sets: EvalSets
    tokenizer: Any  # the student's (= every teacher's) tokenizer
    sources: dict[str, str] = field(default_factory=dict)  # data set name -> resolved source


# --------------------------------------------------------------------------------------------- planning
def _dataset_config(cfg: PipelineConfig, name: str, sources: dict[str, str]) -> DataConfig:
    return DataConfig.model_validate({**cfg.datasets[name].model_dump(exclude={"generated"}), "source": sources[name]})


def _read_records(path: str, fields: list[str], what: str) -> list[dict]:
    if not path.endswith(".jsonl"):
        raise ConfigError(f"{what}: {path} must be a .jsonl file with fields {fields}")
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                row = json.loads(line)
                missing = [f for f in fields if f not in row]
                if missing:
                    raise ConfigError(f"{what}: {path}:{lineno} has no field {missing[0]!r}")
                records.append(row)
    return records


def _check_tokenizer(student_src: str, student_vocab: dict, teacher_path: str, what: str) -> None:
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(teacher_path).get_vocab()
    if vocab != student_vocab:
        detail = (f"{len(vocab)} tokens vs {len(student_vocab)}" if len(vocab) != len(student_vocab)
                  else "same size, different tokens")
        raise ConfigError(f"{what}: the teacher's tokenizer differs from the student's ({student_src}): {detail}")


def plan_pipeline(cfg: PipelineConfig) -> Plan:
    """All checks that need no cluster, for every stage; builds (cached) tiny teachers when needed."""
    from transformers import AutoTokenizer

    from raykd.data.sources import plan_chunks
    from raykd.data.tasks import ensure_math_problems
    from raykd.models import check_model_dir
    from raykd.pipeline.eval import build_eval_sets, extract_answer
    from raykd.train.prepare import prepare

    check_pipeline(cfg)
    used = {s.dataset for s in cfg.stages} | {s.adapt_teacher.dataset for s in cfg.stages if s.adapt_teacher}
    used |= {cfg.eval.general, cfg.eval.domain, cfg.eval.exact_match}
    used.discard(None)
    sources: dict[str, str] = {}
    data: dict = {}
    for name in sorted(used):  # data problems first: the cheapest to fix
        ds = cfg.datasets[name]
        sources[name] = ds.source
        if ds.source == "generated":
            sources[name] = str(ensure_math_problems(default_cache_dir() / "data", ds.generated.records, ds.generated.seed))
        data[name] = _dataset_config(cfg, name, sources)
        plan_chunks(data[name], f"datasets.{name}")  # checked (records, files) before anything else

    em_records = None
    if cfg.eval.exact_match:
        em_records = _read_records(sources[cfg.eval.exact_match], [cfg.eval.question_field, cfg.eval.answer_field],
                                   f"datasets.{cfg.eval.exact_match}.source")
        if not any(extract_answer(str(r[cfg.eval.answer_field])) for r in em_records):
            raise ConfigError(f"eval.exact_match: no {cfg.eval.answer_field!r} in {sources[cfg.eval.exact_match]} "
                              "ends in '#### <number>'")

    stages: list[StagePlan] = []
    for i, spec in enumerate(cfg.stages):
        sc = validate_stage(cfg, i, sources)
        label = stage_label(i, spec.name)
        records = None
        if spec.responses:
            records = _read_records(sources[spec.dataset], [spec.responses.prompt_field], f"{label}.responses")
        if sc.teacher.path is not None:
            check_model_dir(sc.teacher.path, f"{label}.teacher.path")
        try:
            prep = prepare(sc, f"{label}.data")
        except ConfigError as e:
            raise ConfigError(e if str(e).startswith(label) else f"{label}: {e}") from None
        stages.append(StagePlan(i, spec, sc, prep, records=records))

    first = stages[0]
    student_src = first.cfg.student.path or first.prep.teacher_path
    student_vocab = AutoTokenizer.from_pretrained(student_src).get_vocab()
    for sp in stages:
        what = f"{sp.label}.teacher.path" + ("" if sp.cfg.teacher.path else " (null: the tiny teacher)")
        _check_tokenizer(student_src, student_vocab, sp.prep.teacher_path, what)
        if sp.spec.adapt_teacher:
            ds = sp.spec.adapt_teacher.dataset or sp.spec.dataset
            if ds == sp.spec.dataset:
                sp.adapt_prep, sp.adapt_cfg = sp.prep, sp.cfg
            else:
                adapt_cfg = sp.cfg.model_copy(deep=True)
                adapt_cfg.data = _dataset_config(cfg, ds, sources)
                sp.adapt_prep, sp.adapt_cfg = prepare(adapt_cfg, f"{sp.label}.adapt_teacher"), adapt_cfg

    trained_on = {s.dataset for s in cfg.stages} | {s.adapt_teacher.dataset or s.dataset for s in cfg.stages if s.adapt_teacher}
    fractions = {name: cfg.datasets[name].val_fraction for name in used}
    fractions.update({sp.spec.dataset: sp.cfg.data.val_fraction for sp in reversed(stages)})  # as the stages split
    sets = build_eval_sets(cfg.eval, first.prep.tokenizer, data, fractions, trained_on, em_records)
    for key in ("general", "domain"):
        if len(getattr(sets, key)) == 0:
            raise ConfigError(f"eval.{key}: data set '{getattr(cfg.eval, key)}' yields no held-out sequence of "
                              f"{cfg.eval.seq_len} tokens")
    return Plan(stages, sets, first.prep.tokenizer, sources)
