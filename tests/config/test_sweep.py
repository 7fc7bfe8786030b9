"""`raykd sweep`'s config: the search space, metric, scheduler and base config, checked before any trial.

    pytest tests/config/test_sweep.py          # seconds, no Ray; real sweeps: tests/e2e/test_sweep.py
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raykd.config.sweep import apply_values, decode_params, load_sweep, trial_config
from tests.sweep.examples import ASHA_YAML, PBT_YAML, error_of, write_sweep


# --------------------------------------------------------------------------------------------- examples
@pytest.mark.parametrize("path", [ASHA_YAML, PBT_YAML])
def test_example_configs_load(path: Path) -> None:
    sweep, base = load_sweep(path)
    assert sweep.space and base.train.num_workers == 1
    assert sweep.max_concurrent_trials * base.train.num_workers * base.train.cpus_per_worker <= 4


def test_asha_example_meets_the_acceptance_size() -> None:
    sweep, _ = load_sweep(ASHA_YAML)
    assert sweep.scheduler == "asha" and sweep.num_samples >= 6
    pbt, _ = load_sweep(PBT_YAML)
    assert pbt.scheduler == "pbt" and set(pbt.pbt.mutate) == {"loss.temperature", "loss.alpha"}


# --------------------------------------------------------------------------------------------- bad input
def test_empty_space(tmp_path) -> None:
    assert error_of(write_sweep(tmp_path, space={})).startswith("space is empty")


def test_metric_no_trial_reports(tmp_path) -> None:
    msg = error_of(write_sweep(tmp_path, metric="accuracy"))
    assert "metric 'accuracy' is not reported by trials" in msg and "val_loss" in msg


@pytest.mark.parametrize("search", ["optuna", "grid"])
def test_pbt_needs_random_search(tmp_path, search) -> None:
    space = {"loss.temperature": {"choice": [1.0, 2.0]}, "loss.alpha": {"choice": [0.5, 0.9]}}
    msg = error_of(write_sweep(tmp_path, scheduler="pbt", search=search, space=space, num_samples=4,
                               max_concurrent_trials=4, pbt={"perturbation_interval": 20}))
    assert f"scheduler 'pbt' cannot be driven by search '{search}'" in msg


def test_grid_needs_finite_dimensions(tmp_path) -> None:
    msg = error_of(write_sweep(tmp_path, search="grid"))
    assert "search 'grid' needs finite dimensions: space.loss.temperature is uniform" in msg


def test_pbt_population_must_run_together(tmp_path) -> None:
    msg = error_of(write_sweep(tmp_path, scheduler="pbt", num_samples=4, max_concurrent_trials=2,
                               pbt={"perturbation_interval": 20}))
    assert "max_concurrent_trials=2 < population num_samples=4" in msg
    load_sweep(write_sweep(tmp_path, scheduler="pbt", num_samples=4, max_concurrent_trials=2,
                           pbt={"perturbation_interval": 20, "synch": True}))


def test_pbt_mutates_keys_of_the_space(tmp_path) -> None:
    msg = error_of(write_sweep(tmp_path, scheduler="pbt", num_samples=4, max_concurrent_trials=4,
                               pbt={"perturbation_interval": 20, "mutate": ["loss.beta"]}))
    assert "pbt.mutate: 'loss.beta' is not a key of space" in msg


@pytest.mark.parametrize("field,value,expected", [
    ("asha", {"grace_period": 15}, "asha.grace_period=15 must be a multiple of base train.checkpoint_every=10"),
    ("asha", {"grace_period": 60}, "asha.grace_period=60 must be < base train.max_steps=60"),
])
def test_decision_points_fall_on_reports(tmp_path, field, value, expected) -> None:
    assert expected in error_of(write_sweep(tmp_path, **{field: value}))


@pytest.mark.parametrize("space,expected", [
    ({"loss.temprature": {"uniform": [1, 2]}}, "space: 'loss.temprature' is not a key of the base config"),
    ({"student.num_layers": {"choice": [1, 2]}}, "space: 'student.num_layers' cannot be swept (trials share"),
    ({"train.max_steps": {"choice": [20, 40]}}, "space: 'train.max_steps' cannot be swept (it sets"),
    ({"train": {"choice": [{"lr": 0.01}, {"num_workers": 2}]}}, "space.train: a choice sets 'train.num_workers'"),
    ({"loss.alpha": {"uniform": [0.5, 1.5]}}, "space.loss.alpha: loss.alpha: Input should be less than or equal to 1"),
    ({"loss.temperature": {"uniform": [4, 1]}}, "lower bound 4.0 must be < upper bound 1.0"),
    ({"loss.alpha": {"choice": []}}, "choice is empty"),
    ({"loss.alpha": {"uniform": [0, 1], "choice": [1]}}, "give exactly one of"),
    ({"loss.temperature": {"uniform": [1, 2]}, "loss": {"choice": [{"temperature": 3.0}]}},
     "space: 'loss.temperature' is also set by a choice of 'loss'"),
])
def test_bad_dimensions_name_the_key(tmp_path, space, expected) -> None:
    assert expected in error_of(write_sweep(tmp_path, space=space))


def test_values_valid_alone_but_not_together(tmp_path) -> None:
    space = {"loss.temperature_schedule": {"choice": [{"kind": "constant"}, {"kind": "cosine", "end": 1.0}]},
             "loss.dynamic_temperature.rule": {"choice": ["none", "entropy"]}}
    msg = error_of(write_sweep(tmp_path, space=space))
    assert msg.startswith("space combination") and "dynamic_temperature" in msg and "cosine" in msg


def test_unknown_sweep_key_and_bad_base(tmp_path) -> None:
    assert "unknown config key 'schedulr'" in error_of(write_sweep(tmp_path, schedulr="asha"))
    assert "scheduler" in error_of(write_sweep(tmp_path, scheduler="hyperband"))
    msg = error_of(write_sweep(tmp_path, base_overrides=["train.lr=-1"]))
    assert msg.startswith("base: train.lr") and "greater than 0" in msg
    msg = error_of(write_sweep(tmp_path, base="missing.yaml"))
    assert msg.startswith("base: config file not found") and "missing.yaml" in msg


def test_base_from_a_path_relative_to_the_sweep_file(tmp_path) -> None:
    tree = yaml.safe_load(ASHA_YAML.read_text())
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tree["base"]))
    sweep, base = load_sweep(write_sweep(tmp_path, base="base.yaml", base_overrides=["train.lr=0.005"]))
    assert base.train.lr == 0.005 and base.train.max_steps == tree["base"]["train"]["max_steps"]


def test_cli_reports_bad_input_in_one_line_before_starting_anything(tmp_path, capsys) -> None:
    from raykd.cli import main

    path = write_sweep(tmp_path, space={})
    assert main(["sweep", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raykd: error: space is empty") and "\n" not in err
    assert main(["sweep", "--config", str(ASHA_YAML), "metric=bleu"]) == 2
    assert "metric 'bleu'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- trials
def test_trial_config_applies_decodes_and_clips() -> None:
    sweep, base = load_sweep(ASHA_YAML)
    # Sub-config choices travel through Tune as indices; the mapping is merged into the base sub-config.
    raw = {"loss.temperature": 5.0, "loss.alpha": 0.7, "loss": 3, "loss.alpha_schedule": 1,
           "loss.divergence": "jsd", "loss.top_k": 8, "train.lr": 0.004}
    cfg = trial_config(base, sweep, raw, run_name="t1")
    assert cfg.run_name == "t1" and cfg.loss.temperature == 4.0  # PBT may push past the bound: clipped
    assert cfg.loss.dynamic_temperature.rule == "entropy" and cfg.loss.dynamic_temperature.max_temperature == 4.0
    assert cfg.loss.alpha_schedule.kind == "linear" and cfg.loss.alpha_schedule.end == 0.2
    assert cfg.loss.divergence == "jsd" and cfg.train.lr == 0.004 and cfg.loss.top_k == 8
    assert cfg.train.max_steps == base.train.max_steps and cfg.teacher == base.teacher
    assert decode_params(sweep, raw)["loss"] == {"dynamic_temperature": {"rule": "entropy", "min_temperature": 1.0,
                                                                         "max_temperature": 4.0}}


def test_apply_values_merges_outer_keys_first() -> None:
    tree = {"loss": {"temperature": 2.0, "temperature_schedule": {"kind": "constant", "end": None}}}
    out = apply_values(copy.deepcopy(tree), {"loss.temperature": 3.0, "loss": {"temperature_schedule": {"kind": "linear", "end": 1.0}}})
    assert out == {"loss": {"temperature": 3.0, "temperature_schedule": {"kind": "linear", "end": 1.0}}}


def test_sweep_config_imports_no_ray() -> None:
    code = "import raykd.config.sweep, raykd.sweep.trial, sys; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
