"""What a sweep leaves behind: the trials' rows, the best trial, its config, the tables and the PBT schedules.

    outcome = summarize(sweep, base, rows, uri, parent_run_id)    # best.yaml, results.md, curves.png (+ PBT)
    best = pick_best(rows, "min", max_steps)                       # among the trials that trained to the end

Files go to <base.output_dir>/<name>/ and are logged to the sweep's MLflow parent run (raykd/sweep/run.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raykd.config import DistillConfig
from raykd.config.sweep import SweepConfig, decode_params, with_values
from raykd.console import say
from raykd.files import write_text


@dataclass
class TrialRow:
    trial_id: str
    values: dict[str, Any]
    status: str
    step: int
    metric: float | None
    checkpoint: str | None


@dataclass
class SweepOutcome:
    parent_run_id: str
    best: TrialRow
    best_config: DistillConfig
    export_path: Path
    rows: list[TrialRow]
    out_dir: Path


def trial_row(sweep: SweepConfig, trial, status: str) -> TrialRow:
    last = trial.last_result or {}
    ckpt = trial.checkpoint
    value = last.get(sweep.metric)
    return TrialRow(trial.trial_id, decode_params(sweep, trial.config), status, int(last.get("step", 0)),
                    None if value is None else float(value), ckpt.path if ckpt is not None else None)


def finish_child_runs(uri: str, experiment: str, parent_id: str, rows: list[TrialRow], max_steps: int) -> None:
    """Trials stopped by the scheduler or the user end in whatever state the killed actor left: set it here."""
    from mlflow.tracking import MlflowClient

    from raykd.sweep.trial import TRIAL_TAG

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000)
    by_trial = {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in runs}
    for row in rows:
        run_id = by_trial.get(row.trial_id)
        if run_id is None:
            continue
        status = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(row.status, "KILLED")
        client.set_tag(run_id, "raykd.sweep.final_step", str(row.step))
        client.set_tag(run_id, "raykd.sweep.stopped_early", str(status == "FINISHED" and row.step < max_steps).lower())
        client.set_terminated(run_id, status)


def pick_best(rows: list[TrialRow], mode: str, max_steps: int) -> TrialRow:
    """The best final metric among trials that trained to the end (a trial ASHA stopped at step 20 is not
    comparable with one that ran 200 steps); among all scored trials if none did."""
    scored = [r for r in rows if r.metric is not None and math.isfinite(r.metric)]
    full = [r for r in scored if r.step >= max_steps and r.status == "TERMINATED"]
    pool = full or scored
    if not pool:
        raise RuntimeError("no trial reported a finite metric; see the trials' errors above")
    return (min if mode == "min" else max)(pool, key=lambda r: r.metric)


def summarize(sweep: SweepConfig, base: DistillConfig, rows: list[TrialRow], uri: str, parent_id: str) -> SweepOutcome:
    import mlflow

    best = pick_best(rows, sweep.mode, base.train.max_steps)
    out_dir = Path(base.output_dir) / sweep.name
    out_dir.mkdir(parents=True, exist_ok=True)
    history = read_history(best.checkpoint)
    values = trained_values(sweep, best, history)
    best_cfg = with_values(base, values, "best trial")
    best_cfg.run_name = f"{sweep.name}-best"
    export_path = Path(sweep.export_path) if sweep.export_path else out_dir / "best.yaml"
    export_config(best_cfg, export_path, sweep, best, history, values)
    table = results_table(sweep, rows, best)
    write_text(out_dir / "results.md", table)
    print(table, flush=True)
    files = [export_path, out_dir / "results.md"]
    if sweep.scheduler == "pbt":
        write_text(out_dir / "pbt_schedule.md", pbt_schedule_md(sweep, rows, best))
        files.append(out_dir / "pbt_schedule.md")
        say(f"PBT schedules of every trial:\n{(out_dir / 'pbt_schedule.md').read_text()}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        from raykd.plots import plot_histories
        from raykd.sweep.trial import TRIAL_TAG

        children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000)
        runs = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in children if TRIAL_TAG in r.data.tags}
        files.append(plot_histories(uri, dict(sorted(runs.items())), ["val_loss", "temperature", "alpha"],
                                    out_dir / "curves.png", f"sweep {sweep.name}"))
    except Exception as e:  # noqa: BLE001 - a missing figure must not lose the sweep's results
        say(f"curves not plotted: {e}")
    for f in files:
        mlflow.log_artifact(str(f), run_id=parent_id)
    mlflow.log_metrics({f"best_{sweep.metric}": best.metric, "trials": len(rows),
                        "trials_stopped_early": sum(r.step < base.train.max_steps for r in rows)}, run_id=parent_id)
    client.set_tag(parent_id, "raykd.sweep.best_trial", best.trial_id)
    client.set_tag(parent_id, "raykd.sweep.best_values", json.dumps(values))
    say(f"best trial {best.trial_id}: {sweep.metric} {best.metric:.4f} with {json.dumps(values)}")
    say(f"best config: {export_path}  (raykd distill --config {export_path})")
    return SweepOutcome(parent_id, best, best_cfg, export_path, rows, out_dir)


def trained_values(sweep: SweepConfig, best: TrialRow, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The best trial's values as its final weights were last trained with. Under PBT a trial perturbed at its
    last step (an exploit at the end) carries values no step was trained with: the history's last piece wins."""
    values = dict(best.values)
    if sweep.scheduler == "pbt" and history:
        values.update(history[-1]["values"])
    return values


def read_history(checkpoint_path: str | None) -> list[dict[str, Any]]:
    from raykd.sweep.trial import STATE_FILE

    if checkpoint_path is None or not (Path(checkpoint_path) / STATE_FILE).exists():
        return []
    return json.loads((Path(checkpoint_path) / STATE_FILE).read_text())["history"]


def export_config(cfg: DistillConfig, path: Path, sweep: SweepConfig, best: TrialRow, history: list,
                  values: dict[str, Any] | None = None) -> Path:
    """A complete DistillConfig YAML (every field explicit), headed by where it came from and how to run it."""
    lines = [f"# Best trial of sweep '{sweep.name}' (trial {best.trial_id}): {sweep.metric} = {best.metric:.4f}",
             f"# at step {best.step}, with {json.dumps(best.values if values is None else values)}.", "#",
             f"#   raykd distill --config {path}", "#"]
    if sweep.scheduler == "pbt" and len(history) > 1:
        lines += ["# PBT changed these values during training; a constant re-run uses the last ones.",
                  "# Values the weights were trained with (from step: values):"]
        lines += [f"#   {h['step']:>5}: {json.dumps(h['values'])}" for h in history]
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return write_text(path, "\n".join(lines) + "\n" + body)


def results_table(sweep: SweepConfig, rows: list[TrialRow], best: TrialRow) -> str:
    keys = sorted(sweep.space)
    head = ["trial", *keys, "status", "steps", sweep.metric]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    def rank(r: TrialRow):  # the best first, then trials that trained to the end, each by metric
        scored = r.metric is not None and math.isfinite(r.metric)
        return (r.trial_id != best.trial_id, r.step < best.step, not scored, (r.metric if sweep.mode == "min" else -r.metric) if scored else 0)

    for r in sorted(rows, key=rank):
        cells = [r.trial_id + (" **best**" if r.trial_id == best.trial_id else ""), *[_cell(r.values.get(k)) for k in keys],
                 r.status.lower(), str(r.step), "-" if r.metric is None else f"{r.metric:.4f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def pbt_schedule_md(sweep: SweepConfig, rows: list[TrialRow], best: TrialRow) -> str:
    """What PBT found: for every trial (best first), the piecewise-constant values its final weights were
    trained with, and from which trial's run each piece came (a PBT exploit copies another trial's weights)."""
    keys = sweep.pbt.mutate
    out = [f"PBT schedules ({sweep.metric} at the last step; best first). A row is a piece of training: from that",
           "step on, these values, on weights trained by that trial.", ""]
    for row in sorted(rows, key=lambda r: (r is not best, r.metric if r.metric is not None else math.inf)):
        history = read_history(row.checkpoint)
        metric = "-" if row.metric is None else f"{row.metric:.4f}"
        out += [f"Trial {row.trial_id}{' (best)' if row is best else ''}: {sweep.metric} {metric} at step {row.step}", "",
                "| from step | " + " | ".join(keys) + " | trained by trial |", "|---|" + "---|" * (len(keys) + 1)]
        for h in history:
            out.append(f"| {h['step']} | " + " | ".join(_cell(h["values"].get(k)) for k in keys) + f" | {h['trial_id']} |")
        out.append("")
    return "\n".join(out)
