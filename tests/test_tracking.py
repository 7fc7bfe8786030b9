"""MLflow run lifecycle: FINISHED on success, FAILED on error, KILLED on Ctrl-C, unfinished runs continued."""

import pytest
from mlflow.tracking import MlflowClient

from raykd.tracking import MetricLogger, resolve_tracking_uri, tracked_run


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def _runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_success_failure_and_interrupt(uri):
    with tracked_run(uri, "t", "ok", {"a": "1"}) as run_id:
        MetricLogger(uri, run_id).log({"loss": 1.5}, step=3)
    with pytest.raises(RuntimeError):
        with tracked_run(uri, "t", "bad"):
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with tracked_run(uri, "t", "stopped"):
            raise KeyboardInterrupt
    runs = {r.info.run_name: r for r in _runs(uri)}
    assert runs["ok"].info.status == "FINISHED" and runs["ok"].data.params["a"] == "1"
    assert runs["ok"].data.metrics["loss"] == 1.5
    assert runs["bad"].info.status == "FAILED"
    assert runs["stopped"].info.status == "KILLED"


def test_unfinished_run_is_continued_finished_one_is_not(uri):
    with pytest.raises(RuntimeError):
        with tracked_run(uri, "t", "job", {"x": "1"}) as first:
            raise RuntimeError
    with tracked_run(uri, "t", "job", {"x": "1", "y": "2"}) as second:
        pass
    assert first == second
    run = MlflowClient(uri).get_run(second)
    assert run.info.status == "FINISHED" and run.data.tags["raykd.resumed"] == "true" and run.data.params["y"] == "2"
    with tracked_run(uri, "t", "job") as third:
        pass
    assert third != second


def test_nested_runs_and_uri_resolution(uri, tmp_path, monkeypatch):
    with tracked_run(uri, "t", "parent") as parent:
        with tracked_run(uri, "t", "child", parent_run_id=parent) as child:
            pass
    assert MlflowClient(uri).get_run(child).data.tags["mlflow.parentRunId"] == parent
    from raykd.config import MlflowConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(MlflowConfig()) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(MlflowConfig()) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(MlflowConfig(tracking_uri="sqlite:///x.db")) == f"sqlite:///{tmp_path}/x.db"
