"""The `teachers:` section: several named teacher applications at once, routed per record or ensembled.

    teachers:
      apps:                                   # each its own Serve app (app_name default raykd-teacher-<name>)
        - {name: general, path: /models/general}
        - {name: math, path: /models/math, backend: vllm, num_replicas: 2}
      routing: {field: domain, rules: {math: math}}   # records with domain: math -> the math teacher, others -> general
      # or, instead of routing:
      ensemble: {general: 0.7, math: 0.3}     # every row scored by both, mixed in probability space

Each app is a full `TeacherConfig` (raykd/config/teacher.py) plus a `name`. The FIRST listed app is the primary
teacher: the student is derived from it, evaluation compares with it, and `DistillConfig.teacher` is set to it
(so everything written for one teacher keeps working; the single `teacher:` section is the one-teacher case).
All teachers must share the student's tokenizer (checked before any cluster starts, raykd/train/prepare.py).

Routing (`by: field`) reads a record field (.jsonl / .parquet records); `by: file` matches each record's file
path against the rules' glob patterns (several data sets in one `data.source` directory or glob). A record no
rule matches goes to `default` (null: the primary). The mixture is raykd/signals/ensemble.py's; weights are
normalised to sum 1 (so a sweep may search each independently).

Pure pydantic, like every module of raykd/config/.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from raykd.config.base import StrictModel
from raykd.config.teacher import TeacherConfig

NAME = r"^[A-Za-z0-9_.-]+$"
DEFAULT_APP_PREFIX = "raykd-teacher-"


class NamedTeacherConfig(TeacherConfig):
    """One teacher application of `teachers.apps`: a `TeacherConfig` with a name."""

    name: str = Field(pattern=NAME, description="Names the teacher in routing rules, ensemble weights and metrics.")

    @model_validator(mode="before")
    @classmethod
    def _default_app_name(cls, data: Any) -> Any:
        # Two apps under TeacherConfig's one default name would replace each other on Serve.
        if isinstance(data, dict) and "app_name" not in data and isinstance(data.get("name"), str):
            data = {**data, "app_name": DEFAULT_APP_PREFIX + data["name"]}
        return data

    def as_teacher(self) -> TeacherConfig:
        """The plain TeacherConfig (what a Serve replica validates)."""
        return TeacherConfig.model_validate(self.model_dump(exclude={"name"}))


class RoutingConfig(StrictModel):
    """Which teacher scores each record: a rule per field value (or per file pattern)."""

    by: Literal["field", "file"] = Field(
        "field", description="field: the record field `field` selects the rule; file: the record's file path is "
        "matched against the rules' keys as glob patterns (fnmatch on the whole path, a trailing part of it, or the file name).",
    )
    field: str = Field("domain", description="by: field: the record field whose value (as a string) picks the rule.")
    rules: dict[str, str | None] = Field(
        description="Field value (or file glob) -> teacher name. Blocks never mix teachers: records of different "
        "teachers are packed apart.",
    )
    default: str | None = Field(
        None, description="Teacher of records no rule matches (or without the field); null: the first listed teacher.",
    )


class TeachersConfig(StrictModel):
    """Several teacher applications and how they share the rows: `routing` or `ensemble` (one of them)."""

    apps: list[NamedTeacherConfig] = Field(
        min_length=1, description="The teacher applications, each deployed as its own Serve app; the first is the "
        "primary (the student is derived from it, evaluation compares with it).",
    )
    routing: RoutingConfig | None = Field(None, description="Route each record to one teacher (per field or file).")
    ensemble: dict[str, float] | None = Field(
        None, description="Teacher name -> weight >= 0 (every teacher named; normalised to sum 1): every row is "
        "scored by all teachers and their distributions mixed on the union of their top-k.",
    )

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.apps]

    @property
    def primary(self) -> NamedTeacherConfig:
        return self.apps[0]

    def weights(self) -> list[float]:
        """Ensemble weights in `apps` order, normalised to sum 1."""
        raw = [float(self.ensemble[n]) for n in self.names] if self.ensemble else [1.0] * len(self.apps)
        total = sum(raw)
        return [w / total for w in raw]

    def route_table(self) -> tuple[list[tuple[str, int]], int]:
        """(rule key -> teacher index, in order; default teacher index) for the data pipeline."""
        r = self.routing
        if r is None:
            return [], 0
        index = {n: i for i, n in enumerate(self.names)}
        return [(key, index[name]) for key, name in r.rules.items()], index[r.default] if r.default else 0

    def check(self) -> None:
        """Names, apps, rules and weights agree; ValueError naming the field. Called by `check_teachers` from
        DistillConfig's root validator, so the line reads `teachers.<field>: <problem>`."""
        names = self.names
        for what, values in (("name", names), ("app_name", [a.app_name for a in self.apps])):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"teachers.apps: {what} {dup[0]!r} is used twice (each teacher is its own Serve app)")
        known = ", ".join(names)
        if self.routing is not None and self.ensemble is not None:
            raise ValueError("teachers: set routing or ensemble, not both")
        if len(names) > 1 and self.routing is None and self.ensemble is None:
            raise ValueError("teachers: several apps need teachers.routing (one teacher per record) or "
                             "teachers.ensemble (weights)")
        if self.routing is not None:
            r = self.routing
            if not r.rules:
                raise ValueError("teachers.routing.rules: no rule (map a field value or file pattern to a teacher)")
            for key, name in r.rules.items():
                if not name:
                    raise ValueError(f"teachers.routing.rules.{key}: names no teacher (teachers: {known})")
                if name not in names:
                    raise ValueError(f"teachers.routing.rules.{key}: unknown teacher {name!r} (teachers: {known})")
            if r.default is not None and r.default not in names:
                raise ValueError(f"teachers.routing.default: unknown teacher {r.default!r} (teachers: {known})")
        if self.ensemble is not None:
            for name, w in self.ensemble.items():
                if name not in names:
                    raise ValueError(f"teachers.ensemble.{name}: unknown teacher (teachers: {known})")
                if not math.isfinite(w) or w < 0:
                    raise ValueError(f"teachers.ensemble.{name}: weight must be a finite number >= 0, got {w}")
            missing = [n for n in names if n not in self.ensemble]
            if missing:
                raise ValueError(f"teachers.ensemble: no weight for teacher {missing[0]!r}")
            if sum(self.ensemble.values()) <= 0:
                raise ValueError("teachers.ensemble: the weights are all 0")


def check_teachers(cfg: Any) -> None:
    """Cross-section checks of a DistillConfig with `teachers`, and `cfg.teacher` set to the primary app.

    Called from DistillConfig's validator. `teacher:` may be given too only if it equals the primary (a config
    dumped and validated again, as Ray Train's loop config is)."""
    ts = cfg.teachers
    if ts is None:
        return
    ts.check()
    primary = ts.primary.as_teacher()
    if "teacher" in cfg.model_fields_set and cfg.teacher != primary:
        raise ValueError("teacher and teachers: set one of them (with teachers, the first app is the teacher)")
    cfg.__dict__["teacher"] = primary  # plain assignment would re-run this validator (validate_assignment)
    if len(ts.apps) == 1:
        return
    lc = cfg.loss
    several = "routing" if ts.routing is not None else "ensemble"
    if lc.hidden.weight > 0 or lc.attention.weight > 0 or lc.adversarial.weight > 0:
        raise ValueError(f"teachers.{several}: loss.hidden / loss.attention / loss.adversarial need one teacher "
                         "(several teachers give log-probs only)")
    if lc.on_policy.enabled:
        raise ValueError(f"teachers.{several}: loss.on_policy needs one teacher")
    if cfg.seqkd.enabled:
        raise ValueError(f"teachers.{several}: seqkd needs one teacher (whose text the student learns)")
    if cfg.signals.offline_path:
        raise ValueError(f"teachers.{several}: signals.offline_path holds one teacher's signals; use the cache")
    if ts.routing is not None and ts.routing.by == "field":
        plain = cfg.data.source in ("builtin", "shakespeare") or cfg.data.source.endswith(".txt")
        if plain:
            raise ValueError(f"teachers.routing.field needs a source of records (.jsonl, .parquet), not "
                             f"{cfg.data.source!r}")


def check_weight_key(key: str, base: Any) -> None:
    """A sweep's `teachers.ensemble.<name>` key: the base config ensembles teachers and names that one."""
    from raykd.config.base import ConfigError

    name = key.removeprefix("teachers.ensemble.")
    ts = base.teachers
    if ts is None or ts.ensemble is None:
        raise ConfigError(f"space: '{key}' needs a base config with teachers.ensemble")
    if name not in ts.names:
        raise ConfigError(f"space: '{key}': no teacher named {name!r} (teachers: {', '.join(ts.names)})")
