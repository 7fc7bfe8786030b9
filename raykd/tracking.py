"""MLflow at the edges: where runs live, how they start and end, how workers log into them.

    uri = resolve_tracking_uri(cfg.mlflow)          # cfg value, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    with tracked_run(uri, "raykd", "quickstart", params) as run_id:
        ...                                         # an exception ends the run FAILED, never RUNNING

A run whose name was used before and did not finish (killed, failed) is continued rather than
duplicated, so a resumed training keeps one metric history. Workers log with `MetricLogger(uri, run_id)`:

    logger = MetricLogger(uri, run_id)          # no-op when uri or run_id is None
    logger.log({"loss": 0.9}, step=10)
    logger.log_per_step({1: {"alpha": 0.5}, 2: {"alpha": 0.6}})      # many steps, batched
    logger.log_figure(fig, "adversarial_curves.png")
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from raykd.config import MlflowConfig

RUN_NAME_TAG = "raykd.run_name"


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    # Workers and Serve replicas run in other directories: a relative sqlite/file path must be made absolute.
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    return uri


def _quiet_mlflow() -> None:
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def find_unfinished_run(client, experiment_id: str, run_name: str, parent_run_id: str | None = None):
    query = f"tags.`{RUN_NAME_TAG}` = '{run_name}'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if runs and runs[0].info.status != "FINISHED":
        return runs[0]
    return None


@contextlib.contextmanager
def tracked_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Start (or continue an unfinished) MLflow run; end it FINISHED, or FAILED/KILLED on error."""
    _quiet_mlflow()
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    previous = find_unfinished_run(client, exp_id, run_name, parent_run_id)
    all_tags = {RUN_NAME_TAG: run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if previous is not None:
        run_id = previous.info.run_id
        client.update_run(run_id, status="RUNNING")
        all_tags["raykd.resumed"] = "true"
    else:
        run_id = client.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id
    for k, v in all_tags.items():
        client.set_tag(run_id, k, v)
    if params:
        from mlflow.entities import Param

        existing = client.get_run(run_id).data.params
        new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            client.log_batch(run_id, params=new[i : i + 100])
    try:
        yield run_id
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


class MetricLogger:
    """Batched metric logging into an existing run (used by Train workers)."""

    def __init__(self, uri: str | None, run_id: str | None):
        self.client = None
        self.run_id = run_id
        if uri and run_id:
            _quiet_mlflow()
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(uri)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.log_per_step({step: metrics})

    def log_per_step(self, metrics: dict[int, dict[str, float]]) -> None:
        """`{step: {name: value}}`, in batches of 1000 values (MLflow's limit per call)."""
        if self.client is None or not metrics:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for step, values in metrics.items() for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_figure(self, fig, name: str) -> None:
        if self.client is not None:
            self.client.log_figure(self.run_id, fig, name)

    def close(self) -> None:
        self.client = None
