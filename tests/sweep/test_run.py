"""The sweep driver's checks before any cluster, and its MLflow bookkeeping."""

from __future__ import annotations

import pytest

from raykd.config import ConfigError
from raykd.config.sweep import load_sweep
from raykd.sweep.run import check_space_against_models, retire_unfinished_runs
from tests.sweep.examples import ASHA_YAML, write_sweep


def test_space_values_are_checked_against_the_teacher_before_any_cluster(tmp_path, tiny_teacher) -> None:
    sweep, base = load_sweep(write_sweep(tmp_path, space={"loss.top_k": {"choice": [8, 100000]}}))
    with pytest.raises(ConfigError, match=r"^space.loss.top_k=100000: loss.top_k=100000 exceeds the teacher's vocab_size=\d+$"):
        check_space_against_models(sweep, base, str(tiny_teacher))
    check_space_against_models(load_sweep(ASHA_YAML)[0], base, str(tiny_teacher))


def test_a_new_sweep_does_not_continue_an_abandoned_parent_run(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from raykd.tracking import tracked_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(KeyboardInterrupt), tracked_run(uri, "e", "sweep-x", {"a": "1"}) as old:
        raise KeyboardInterrupt  # an interrupted sweep whose Tune state was then deleted
    retire_unfinished_runs(uri, "e", "sweep-x")
    with tracked_run(uri, "e", "sweep-x", {"a": "2"}) as new:
        pass
    assert new != old
    client = MlflowClient(uri)
    assert client.get_run(old).info.status == "KILLED" and client.get_run(new).data.params == {"a": "2"}
