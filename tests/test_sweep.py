"""`raykd sweep`: config and search-space validation (fast), and real sweeps on an embedded Ray (slow).

    pytest tests/test_sweep.py                 # validation, export, ranking: seconds, no Ray
    pytest -m slow tests/test_sweep.py         # ASHA + PBT sweeps, best-config re-run, resume: minutes
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raykd.config import ConfigError, DistillConfig, load_config
from raykd.sweep_config import (
    SweepConfig,
    apply_values,
    check_sweep,
    clip_to_space,
    decode_params,
    load_sweep,
    range_bounds,
    resolve_base,
    trial_config,
)

ROOT = Path(__file__).resolve().parents[1]
ASHA_YAML = ROOT / "jobs" / "configs" / "sweep_asha.yaml"
PBT_YAML = ROOT / "jobs" / "configs" / "sweep_pbt.yaml"


def write_sweep(tmp_path: Path, **changes) -> Path:
    """The ASHA example with top-level keys replaced (None deletes the key)."""
    tree = yaml.safe_load(ASHA_YAML.read_text())
    for key, value in changes.items():
        if value is None:
            tree.pop(key, None)
        else:
            tree[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_sweep(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


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


def test_space_values_are_checked_against_the_teacher_before_any_cluster(tmp_path, tiny_teacher) -> None:
    from raykd.sweep import check_space_against_models

    sweep, base = load_sweep(write_sweep(tmp_path, space={"loss.top_k": {"choice": [8, 100000]}}))
    with pytest.raises(ConfigError, match=r"^space.loss.top_k=100000: loss.top_k=100000 exceeds the teacher's vocab_size=\d+$"):
        check_space_against_models(sweep, base, str(tiny_teacher))
    check_space_against_models(load_sweep(ASHA_YAML)[0], base, str(tiny_teacher))


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


def test_pbt_perturbations_are_clipped_into_the_space() -> None:
    sweep, _ = load_sweep(PBT_YAML)
    bounds = range_bounds(sweep)
    lo, hi = bounds["loss.temperature"]
    assert clip_to_space({"loss.temperature": hi * 1.2, "x": 7}, bounds) == {"loss.temperature": hi, "x": 7}
    assert clip_to_space({"loss.temperature": lo * 0.8}, bounds) == {"loss.temperature": lo}


def test_tune_space_and_mutations() -> None:
    from ray import tune

    from raykd.sweep_config import pbt_mutations, tune_space

    sweep, _ = load_sweep(ASHA_YAML)
    space = tune_space(sweep)
    assert space["loss"].categories == [0, 1, 2, 3]  # sub-configs as indices (Optuna takes scalars only)
    assert space["loss.alpha"].categories == [0.3, 0.5, 0.7, 0.9]
    assert space["train.lr"].lower == 1e-3 and space["train.lr"].upper == 1e-2
    grid = SweepConfig.model_validate({**sweep.model_dump(), "search": "grid",
                                       "space": {"loss.top_k": {"choice": [8, 20]}, "loss": sweep.space["loss"].model_dump()}})
    assert tune_space(grid)["loss.top_k"] == tune.grid_search([8, 20])
    pbt, _ = load_sweep(PBT_YAML)
    muts = pbt_mutations(pbt)
    assert set(muts) == set(pbt.pbt.mutate)


# --------------------------------------------------------------------------------------------- results
def _rows():
    from raykd.sweep import TrialRow

    return [
        TrialRow("a", {"loss.alpha": 0.5}, "TERMINATED", 20, 3.0, None),  # stopped early by ASHA, low metric
        TrialRow("b", {"loss.alpha": 0.7}, "TERMINATED", 60, 3.5, None),
        TrialRow("c", {"loss.alpha": 0.9}, "TERMINATED", 60, 3.4, None),
        TrialRow("d", {"loss.alpha": 0.3}, "ERROR", 10, float("nan"), None),
    ]


def test_best_is_chosen_among_trials_that_trained_to_the_end() -> None:
    from raykd.sweep import pick_best

    rows = _rows()
    assert pick_best(rows, "min", 60).trial_id == "c"
    assert pick_best(rows, "max", 60).trial_id == "b"
    assert pick_best(rows[:1], "min", 60).trial_id == "a"  # nobody finished: the best scored one
    with pytest.raises(RuntimeError):
        pick_best(rows[3:], "min", 60)


def test_pbt_best_values_are_what_the_weights_were_last_trained_with() -> None:
    from raykd.sweep import TrialRow, trained_values

    sweep, _ = load_sweep(PBT_YAML)
    # Exploited at its last step: the config moved to (1.16, 0.12), the weights are the donor's, trained with
    # (1.45, 0.1) from step 10 on.
    best = TrialRow("t1", {"loss.temperature": 1.16, "loss.alpha": 0.12}, "TERMINATED", 60, 1.5, None)
    history = [{"step": 0, "values": {"loss.temperature": 1.2, "loss.alpha": 0.11}, "trial_id": "t1"},
               {"step": 10, "values": {"loss.temperature": 1.45, "loss.alpha": 0.1}, "trial_id": "t2"}]
    assert trained_values(sweep, best, history) == {"loss.temperature": 1.45, "loss.alpha": 0.1}
    assert trained_values(sweep, best, []) == best.values
    asha, _ = load_sweep(ASHA_YAML)
    assert trained_values(asha, best, history) == best.values


def test_exported_best_config_is_a_runnable_distill_config(tmp_path) -> None:
    from raykd.sweep import export_config, pbt_schedule_md, results_table
    from raykd.sweep_config import _validate

    sweep, base = load_sweep(ASHA_YAML)
    best = _rows()[2]
    cfg = _validate(base, {"loss.alpha": 0.9, "loss": {"temperature_schedule": {"kind": "cosine", "end": 1.0}}}, "best")
    cfg.run_name = "sweep-asha-best"
    history = [{"step": 0, "values": {"loss.alpha": 0.5}, "trial_id": "b"}, {"step": 20, "values": {"loss.alpha": 0.9}, "trial_id": "c"}]
    path = export_config(cfg, tmp_path / "out" / "best.yaml", sweep.model_copy(update={"scheduler": "pbt"}), best, history)
    text = path.read_text()
    assert text.startswith("# Best trial of sweep 'sweep-asha' (trial c): val_loss = 3.4000")
    assert f"raykd distill --config {path}" in text and "#      20: " in text
    assert load_config(DistillConfig, path) == cfg  # every field round-trips
    table = results_table(sweep, _rows(), best)
    lines = table.splitlines()
    assert lines[0].startswith("| trial | loss | loss.alpha |") and lines[0].endswith("| status | steps | val_loss |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| c **best**", "| b", "| a", "| d"]
    assert lines[-1].endswith("| 0.3 | None | None | None | None | None | error | 10 | nan |")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "sweep_state.json").write_text(json.dumps({"history": history, "trial_id": "c"}))
    best.checkpoint = str(ckpt)
    pbt = sweep.model_copy(update={"pbt": sweep.pbt.model_copy(update={"mutate": ["loss.alpha"]})})
    md = pbt_schedule_md(pbt, [_rows()[1], best], best)
    assert md.index("Trial c (best): val_loss 3.4000 at step 60") < md.index("Trial b: val_loss 3.5000")
    assert "| 0 | 0.5 | b |\n| 20 | 0.9 | c |" in md


def test_a_new_sweep_does_not_continue_an_abandoned_parent_run(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from raykd.sweep import _retire_unfinished_runs
    from raykd.tracking import tracked_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(KeyboardInterrupt), tracked_run(uri, "e", "sweep-x", {"a": "1"}) as old:
        raise KeyboardInterrupt  # an interrupted sweep whose Tune state was then deleted
    _retire_unfinished_runs(uri, "e", "sweep-x")
    with tracked_run(uri, "e", "sweep-x", {"a": "2"}) as new:
        pass
    assert new != old
    client = MlflowClient(uri)
    assert client.get_run(old).info.status == "KILLED" and client.get_run(new).data.params == {"a": "2"}


def test_heldout_loss_matches_an_independent_cross_entropy() -> None:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from raykd.train.loop import heldout_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    val = np.random.default_rng(0).integers(0, 50, size=(21, 12)).astype(np.int32)  # not a multiple of the batch
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.as_tensor(val, dtype=torch.long)).logits.double(), -1)
    ids = torch.as_tensor(val, dtype=torch.long)
    expected = -logp[:, :-1].gather(-1, ids[:, 1:, None]).mean().item()
    model.train()
    assert heldout_loss(model, val, batch_size=4) == pytest.approx(expected, rel=1e-5)
    assert model.training  # left as it was


def test_progress_tells_an_interrupted_sweep_from_a_finished_one(capsys) -> None:
    import pickle
    from types import SimpleNamespace as Trial

    from raykd.sweep_progress import ACTIVE, SweepProgress

    progress = SweepProgress("p", "val_loss", "min", total=3, max_steps=60, every_s=1e9)
    progress.setup()
    assert ACTIVE["p"] is progress
    a = Trial(trial_id="a", status="RUNNING", last_result={}, path="/a")
    b = Trial(trial_id="b", status="PENDING", last_result={}, path="/b")
    progress.on_trial_start(0, [a, b], a)
    a.last_result = {"step": 10, "val_loss": 3.0}
    progress.on_trial_result(0, [a, b], a, a.last_result)
    progress.on_step_end(1, [a, b])
    a.status = b.status = "TERMINATED"  # what Tune's cleanup does to live trials after Ctrl-C
    assert progress.final_status(a) == "RUNNING" and progress.final_status(b) == "PENDING"
    b.status = "PENDING"
    a.last_result = {"step": 60, "val_loss": 2.5}
    progress.on_trial_result(0, [a, b], a, a.last_result)
    progress.on_trial_complete(0, [a, b], a)
    err = capsys.readouterr().err
    assert "trial a done at step 60, val_loss 2.5000" in err and "1/3 trials done" in err and "best val_loss 2.5000 (a)" in err
    assert "60 steps" in err and "eta" in err
    clone = pickle.loads(pickle.dumps(progress))  # Tune pickles callbacks with the experiment
    assert clone.trials == [] and clone.name == "p" and clone.max_steps == 60


def test_sweep_config_imports_no_ray() -> None:
    code = "import raykd.sweep_config, raykd.sweep_trial, sys; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# --------------------------------------------------------------------------------------------- real sweeps
# The real command in a child process (its own embedded Ray cluster), on conftest's tiny teacher, with the
# example configs shrunk: 30 steps, reports every 10.
SMALL = ["base.data.builtin_chars=60000", "base.train.max_steps=30", "base.train.checkpoint_every=10",
         "base.train.log_every=10", "base.train.batch_size=4", "base.eval.max_sequences=8"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "PYTHONUNBUFFERED": "1"}


def _sweep_cmd(config: Path, tmp_path: Path, teacher: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "raykd.cli", "sweep", "--config", str(config), f"name={name}",
            f"storage_path={tmp_path / 'sweeps'}", f"base.output_dir={tmp_path / 'out'}",
            f"base.teacher.path={teacher}", *SMALL, *extra]


def _mlflow(tmp_path: Path, experiment: str = "raykd-sweeps"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _children(runs, parent):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.mark.slow
def test_asha_sweep_tracks_trials_and_its_best_config_reproduces(tmp_path, tiny_teacher) -> None:
    proc = subprocess.run(_sweep_cmd(ASHA_YAML, tmp_path, tiny_teacher, "asha", "num_samples=4", "asha.grace_period=10"),
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stderr.count("deploying the shared teacher") == 1

    out = tmp_path / "out" / "asha"
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 2 + 4 and sum("**best**" in line for line in table) == 1
    client, runs = _mlflow(tmp_path)
    parent = next(r for r in runs if r.info.run_name == "asha")
    assert parent.info.status == "FINISHED" and parent.data.params["scheduler"] == "asha"
    assert {"results.md", "best.yaml", "curves.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = _children(runs, parent)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert steps == sorted(steps) and steps[0] == 10 and steps[-1] == int(child.data.tags["raykd.sweep.final_step"])
        assert client.get_metric_history(child.info.run_id, "loss_hard")  # the training curves of the trial
        values = json.loads(child.data.tags["raykd.sweep.values"])
        assert child.data.params["loss.alpha"] == str(values["loss.alpha"])
    best_trial = parent.data.tags["raykd.sweep.best_trial"]
    best_metric = parent.data.metrics["best_val_loss"]

    # The exported config runs as is with `raykd distill` and lands on the trial's held-out loss.
    best_yaml = out / "best.yaml"
    assert best_trial in best_yaml.read_text().splitlines()[0]
    proc = subprocess.run([sys.executable, "-m", "raykd.cli", "distill", "--config", str(best_yaml)],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    _, runs = _mlflow(tmp_path)
    rerun = next(r for r in runs if r.info.run_name == "asha-best")
    replayed = rerun.data.metrics["eval_kd_student_heldout_loss"]
    print(f"best trial {best_trial}: val_loss {best_metric:.5f}; raykd distill best.yaml: {replayed:.5f}")
    assert replayed == pytest.approx(best_metric, abs=0.02)


@pytest.mark.slow
def test_pbt_sweep_copies_checkpoints_and_records_the_schedule(tmp_path, tiny_teacher) -> None:
    # Synchronous PBT: at step 10 every trial waits for the others, then the worst one (1 of 4) continues
    # from the best one's checkpoint with perturbed T/alpha, and the others from their own (a pause/restore).
    cmd = _sweep_cmd(PBT_YAML, tmp_path, tiny_teacher, "pbt", "pbt.synch=true", "base.train.max_steps=20")
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-6000:]
    histories = []
    for state in (tmp_path / "sweeps" / "pbt").glob("*/checkpoint_*/sweep_state.json"):
        histories.append(json.loads(state.read_text())["history"])
    exploited = [h for h in histories if len({e["trial_id"] for e in h}) > 1]
    assert exploited, histories
    for h in exploited:
        assert [e["step"] for e in h] == sorted(e["step"] for e in h) and h[0]["step"] == 0
        assert all(set(e["values"]) == {"loss.temperature", "loss.alpha"} for e in h)
        for e in h:
            assert 1.0 <= e["values"]["loss.temperature"] <= 6.0 and 0.1 <= e["values"]["loss.alpha"] <= 0.95
    out = tmp_path / "out" / "pbt"
    schedule = (out / "pbt_schedule.md").read_text()
    assert schedule.startswith("PBT schedules") and "(best)" in schedule and "| 0 |" in schedule
    cfg = load_config(DistillConfig, out / "best.yaml")
    assert cfg.run_name == "pbt-best" and cfg.train.max_steps == 20
    client, runs = _mlflow(tmp_path)
    parent = next(r for r in runs if r.info.run_name == "pbt")
    children = _children(runs, parent)
    assert len(children) == 4  # a PBT restart continues its trial's run, it does not open another
    assert any(c.data.tags.get("raykd.resumed") == "true" for c in children)


@pytest.mark.slow
def test_interrupted_sweep_resumes_where_it_stopped(tmp_path, tiny_teacher) -> None:
    cmd = _sweep_cmd(ASHA_YAML, tmp_path, tiny_teacher, "resume", "num_samples=2", "scheduler=fifo",
                     "base.train.max_steps=60")
    log = tmp_path / "first.log"  # a file, not a pipe: Ray's worker logs would fill a pipe and stall the sweep
    first = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    exp_dir = tmp_path / "sweeps" / "resume"
    deadline = time.time() + 1200
    while not list(exp_dir.glob("*/checkpoint_*")) and first.poll() is None and time.time() < deadline:
        time.sleep(2)
    assert first.poll() is None, "the sweep ended before it could be interrupted"
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment and stops the trials
    first.wait(timeout=300)
    err = log.read_text()
    assert first.returncode == 130, err[-4000:]
    assert "--resume" in err.splitlines()[-1]

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                             timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert "resuming sweep resume" in resumed.stderr
    # Each trial's results continue from its checkpoint: no step is reported twice, every trial reaches 60.
    for progress in exp_dir.glob("*/progress.csv"):
        import csv

        steps = [int(float(row["step"])) for row in csv.DictReader(progress.open())]
        assert steps == sorted(set(steps)) and steps[-1] == 60, (progress, steps)
    client, runs = _mlflow(tmp_path)
    parents = [r for r in runs if r.info.run_name == "resume"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run, continued
    children = _children(runs, parents[0])
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert any(c.data.tags.get("raykd.resumed") == "true" for c in children)
    assert (tmp_path / "out" / "resume" / "best.yaml").exists()
