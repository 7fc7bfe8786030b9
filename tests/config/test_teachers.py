"""`teachers:` (raykd/config/teachers.py): several named teacher apps, routing rules or ensemble weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from raykd.config import ConfigError, DistillConfig, TeacherConfig, validate

TWO = [{"name": "general"}, {"name": "math", "build": {"seed": 1}}]
RECORDS = {"source": "data.jsonl"}


def _cfg(teachers: dict, **extra) -> DistillConfig:
    return validate(DistillConfig, {"teachers": teachers, "data": RECORDS, **extra}, "config")


def test_routing_config_sets_the_primary_teacher_and_its_own_app_names():
    cfg = _cfg({"apps": TWO, "routing": {"field": "domain", "rules": {"math": "math"}}})
    ts = cfg.teachers
    assert [a.app_name for a in ts.apps] == ["raykd-teacher-general", "raykd-teacher-math"]
    assert cfg.teacher == ts.primary.as_teacher() and cfg.teacher.app_name == "raykd-teacher-general"
    assert ts.route_table() == ([("math", 1)], 0)
    # What Ray Train's loop config does: dump and validate again (teacher equals the primary: accepted).
    again = DistillConfig.model_validate(cfg.model_dump())
    assert again.teacher == cfg.teacher and again.teachers == ts


def test_single_teacher_config_is_unchanged():
    cfg = validate(DistillConfig, {"teacher": {"backend": "hf", "num_replicas": 2}}, "config")
    assert cfg.teachers is None and cfg.teacher.num_replicas == 2 and cfg.teacher.app_name == "raykd-teacher"
    one = _cfg({"apps": [{"name": "only", "num_replicas": 2}]})
    assert one.teacher.num_replicas == 2 and one.teachers.weights() == [1.0]


def test_ensemble_weights_are_normalised_in_apps_order():
    cfg = _cfg({"apps": TWO, "ensemble": {"math": 3, "general": 1}})
    assert cfg.teachers.weights() == [0.25, 0.75]


@pytest.mark.parametrize("teachers, extra, needle", [
    ({"apps": TWO, "ensemble": {"general": -0.5, "math": 1.5}}, {},
     "teachers.ensemble.general: weight must be a finite number >= 0, got -0.5"),
    ({"apps": TWO, "ensemble": {"general": 0, "math": 0}}, {}, "teachers.ensemble: the weights are all 0"),
    ({"apps": TWO, "ensemble": {"general": 1}}, {}, "teachers.ensemble: no weight for teacher 'math'"),
    ({"apps": TWO, "ensemble": {"general": 1, "physics": 1}}, {}, "teachers.ensemble.physics: unknown teacher"),
    ({"apps": TWO, "routing": {"rules": {"math": None}}}, {}, "teachers.routing.rules.math: names no teacher"),
    ({"apps": TWO, "routing": {"rules": {"math": ""}}}, {}, "teachers.routing.rules.math: names no teacher"),
    ({"apps": TWO, "routing": {"rules": {"math": "physics"}}}, {},
     "teachers.routing.rules.math: unknown teacher 'physics' (teachers: general, math)"),
    ({"apps": TWO, "routing": {"rules": {}}}, {}, "teachers.routing.rules: no rule"),
    ({"apps": TWO, "routing": {"rules": {"math": "math"}, "default": "x"}}, {}, "teachers.routing.default: unknown"),
    ({"apps": TWO}, {}, "several apps need teachers.routing"),
    ({"apps": TWO, "routing": {"rules": {"math": "math"}}, "ensemble": {"general": 1, "math": 1}}, {},
     "set routing or ensemble, not both"),
    ({"apps": [{"name": "a"}, {"name": "a"}], "ensemble": {"a": 1}}, {}, "name 'a' is used twice"),
    ({"apps": [{"name": "a"}, {"name": "b", "app_name": "raykd-teacher-a"}], "ensemble": {"a": 1, "b": 1}}, {},
     "app_name 'raykd-teacher-a' is used twice"),
    ({"apps": [{"name": "bad name"}]}, {}, "teachers.apps.0.name"),
    ({"apps": [{"name": "a", "colour": "red"}]}, {}, "unknown config key 'teachers.apps.0.colour'"),
    ({"apps": []}, {}, "teachers.apps"),
    ({"apps": TWO, "ensemble": {"general": 1, "math": 1}}, {"loss": {"hidden": {"weight": 1.0, "layer_map": {1: 2}}}},
     "need one teacher"),
    ({"apps": TWO, "ensemble": {"general": 1, "math": 1}}, {"seqkd": {"enabled": True}}, "seqkd needs one teacher"),
    ({"apps": TWO, "routing": {"rules": {"math": "math"}}}, {"data": {"source": "builtin"}},
     "teachers.routing.field needs a source of records"),
    ({"apps": TWO, "ensemble": {"general": 1, "math": 1}}, {"teacher": {"num_replicas": 3}},
     "teacher and teachers: set one of them"),
])
def test_bad_teachers_are_one_line(teachers, extra, needle):
    tree = {"teachers": teachers, "data": RECORDS, **extra}
    with pytest.raises(ConfigError) as e:
        validate(DistillConfig, tree, "config")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_every_field_is_described():
    from raykd.config.teachers import NamedTeacherConfig, RoutingConfig, TeachersConfig

    for model in (RoutingConfig, TeachersConfig):
        assert all(f.description for f in model.model_fields.values()), model
    assert NamedTeacherConfig.model_fields["name"].description
    assert TeacherConfig.model_validate(NamedTeacherConfig(name="x").as_teacher().model_dump())


@pytest.mark.parametrize("teachers, line", [
    ({"apps": TWO, "ensemble": {"general": 1.2, "math": -0.2}},
     "teachers.ensemble.math: weight must be a finite number >= 0, got -0.2"),
    ({"apps": TWO, "routing": {"rules": {"math": None}}},
     "teachers.routing.rules.math: names no teacher (teachers: general, math)"),
])
def test_cli_refuses_bad_teachers_before_any_cluster(tmp_path, teachers, line):
    """`raykd distill` with a negative ensemble weight or a rule naming no teacher: one line, exit 2, no MLflow
    store, nothing built."""
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump({"teachers": teachers, "data": RECORDS}))
    proc = subprocess.run([sys.executable, "-m", "raykd.cli", "distill", "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"raykd: error: {config}: {line}"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------------------------- sweeps, pipelines
def test_sweeps_search_ensemble_weights(tmp_path):
    from raykd.config.sweep import load_sweep, trial_config
    from tests.sweep.examples import ASHA_YAML, error_of, write_sweep

    example = yaml.safe_load(ASHA_YAML.read_text())["base"]
    example.pop("teacher")
    base = {**example, "teachers": {"apps": TWO, "ensemble": {"general": 0.5, "math": 0.5}}}
    space = {"teachers.ensemble.math": {"uniform": [0.0, 1.0]}, "loss.alpha": {"choice": [0.5, 0.9]}}
    sweep, cfg = load_sweep(write_sweep(tmp_path, base=base, space=space))
    trial = trial_config(cfg, sweep, {"teachers.ensemble.math": 0.75, "loss.alpha": 1})
    assert trial.teachers.ensemble == {"general": 0.5, "math": 0.75} and trial.teachers.weights() == [0.4, 0.6]
    bad = {"teachers.ensemble.physics": {"uniform": [0.0, 1.0]}}
    assert "no teacher named 'physics'" in error_of(write_sweep(tmp_path, base=base, space=bad))
    neg = {"teachers.ensemble.math": {"uniform": [-1.0, 1.0]}}
    assert "teachers.ensemble.math: weight must be a finite number >= 0, got -1.0" in error_of(
        write_sweep(tmp_path, base=base, space=neg))
    one = {"teachers.ensemble.math": {"uniform": [0.0, 1.0]}}
    assert "needs a base config with teachers.ensemble" in error_of(
        write_sweep(tmp_path, base=example, space=one))


def test_a_pipeline_stage_names_its_teachers(tmp_path):
    from raykd.config.pipeline import PipelineConfig, check_pipeline, validate_stage
    from tests.pipeline.tiny_pipeline import tiny_pipeline

    tree = tiny_pipeline(tmp_path / "teacher", tmp_path)
    domain = tree["stages"][2]
    domain.pop("adapt_teacher")
    domain["teachers"] = {"apps": [{"name": "general", "path": "/t/general"}, {"name": "math", "path": "/t/math"}],
                          "routing": {"field": "kind", "rules": {"math": "math"}}}
    cfg = PipelineConfig.model_validate(tree)
    check_pipeline(cfg)
    stage = validate_stage(cfg, 2, {"math_train": "/data/m.jsonl"})
    assert stage.teachers.names == ["general", "math"] and stage.teacher.path == "/t/general"  # defaults' teacher dropped
    assert validate_stage(cfg, 0).teachers is None and validate_stage(cfg, 0).teacher.path == str(tmp_path / "teacher")
    tree["stages"][1]["teachers"] = domain["teachers"]  # stage 1 adapts its teacher: not with several
    with pytest.raises(ConfigError, match=r"stages\[1\] \(instruction\)\.adapt_teacher: makes one domain teacher"):
        check_pipeline(PipelineConfig.model_validate(tree))
