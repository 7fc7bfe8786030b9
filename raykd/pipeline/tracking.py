"""MLflow side of a pipeline: resume state on the parent run, plots, the final model and its registration.

The tree: one parent run per pipeline (`raykd.job=pipeline`), one nested child run per stage
(`raykd.job=pipeline-stage`, `mlflow.parentRunId` = the parent). What a later invocation needs to resume
lives in the parent's tags, written once a stage is complete (student exported, evaluated, logged):

    raykd.stage.<name>.run_id       child run of the stage
    raykd.stage.<name>.student_dir  exported HF directory, the start of the next stage
    raykd.stage.<name>.config_hash  hash of the resolved stage config: a changed stage is re-run
    raykd.stage.<name>.teacher      the stage's (possibly adapted) teacher and its fingerprint
    raykd.completed_stages          comma-separated, in order

Plots are PNGs made from MLflow's metric history (what the Train workers logged), so they show exactly
the stored curves; the final student is logged with the transformers flavor (works offline) and
registered in the Model Registry with its stage lineage as version tags.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from raykd.pipeline.eval import ModelEval
from raykd.plots import plot_histories, pyplot

COMPLETED_TAG = "raykd.completed_stages"


def completed_stages(client, parent_run_id: str) -> dict[str, dict[str, str]]:
    """name -> {run_id, student_dir, config_hash} for the stages the parent run recorded as complete."""
    tags = client.get_run(parent_run_id).data.tags
    out = {}
    for name in filter(None, tags.get(COMPLETED_TAG, "").split(",")):
        prefix = f"raykd.stage.{name}."
        out[name] = {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}
    return out


def mark_stage_complete(client, parent_run_id: str, name: str, run_id: str, student_dir: str, config_hash: str,
                        **extra: str) -> None:
    """Record a finished stage (extra: e.g. teacher, teacher_fingerprint) and append it to the completed list."""
    done = list(completed_stages(client, parent_run_id))
    items = {"run_id": run_id, "student_dir": student_dir, "config_hash": config_hash, **extra}
    for key, value in items.items():
        client.set_tag(parent_run_id, f"raykd.stage.{name}.{key}", value)
    if name not in done:
        done.append(name)
    # Written last: a stage counts as complete only when everything it needs to be skipped is recorded.
    client.set_tag(parent_run_id, COMPLETED_TAG, ",".join(done))


def forget_stages_from(client, parent_run_id: str, names: list[str]) -> None:
    """Drop `names` (a changed stage and all after it) from the completed list."""
    done = [n for n in completed_stages(client, parent_run_id) if n not in names]
    client.set_tag(parent_run_id, COMPLETED_TAG, ",".join(done))


def log_stage_plots(uri: str, run_id: str, stage: str) -> None:
    """plots/loss.png (total, soft, hard) and plots/schedules.png (temperature, alpha, lr) of one stage."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        plot_histories(uri, {stage: run_id}, ["loss", "loss_soft", "loss_hard"], Path(tmp) / "loss.png", f"{stage}: loss")
        plot_histories(uri, {stage: run_id}, ["temperature", "alpha", "lr"], Path(tmp) / "schedules.png",
                       f"{stage}: temperature and alpha schedules")
        mlflow.log_artifacts(tmp, "plots", run_id=run_id)


def plot_progress(rows: list[ModelEval], stage_teacher: dict[str, ModelEval], path: Path, title: str) -> Path:
    """Held-out loss on the general and the domain set after each stage (students), each stage's teacher as x."""
    plt = pyplot()
    students = [r for r in rows if r.role == "student"]
    labels = [r.stage for r in students]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(labels, [r.general_loss for r in students], marker="o", label="student: general held-out")
    ax.plot(labels, [r.domain_loss for r in students], marker="o", label="student: domain held-out")
    for stage, t in stage_teacher.items():
        if stage in labels:
            ax.scatter([stage], [t.general_loss], marker="x", color="C0")
            ax.scatter([stage], [t.domain_loss], marker="x", color="C1")
    ax.scatter([], [], marker="x", color="grey", label="stage teacher")
    ax.set_ylabel("loss (nats/token)")
    ax.set_xlabel("after stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_pipeline_plots(uri: str, parent_run_id: str, stage_runs: dict[str, str], rows: list[ModelEval],
                       stage_teacher: dict[str, ModelEval], title: str) -> None:
    """plots/stages_curves.png (hard loss, soft loss and schedules, a line per stage), plots/eval_progress.png."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        # loss_hard (CE on the labels) compares across stages; the total is weighted by each stage's alpha and T.
        plot_histories(uri, stage_runs, ["loss_hard", "loss_soft", "temperature", "alpha"],
                       Path(tmp) / "stages_curves.png", f"{title}: one line per stage")
        plot_progress(rows, stage_teacher, Path(tmp) / "eval_progress.png", f"{title}: domain gain vs general forgetting")
        mlflow.log_artifacts(tmp, "plots", run_id=parent_run_id)


def log_and_register_student(uri: str, parent_run_id: str, student_dir: str, model_name: str | None,
                             lineage: list[dict], pipeline_name: str) -> dict[str, str]:
    """Log the final student (transformers flavor) in the parent run; register it with its lineage."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client = MlflowClient(uri)
    done = client.get_run(parent_run_id).data.tags
    if done.get("raykd.model_uri") and (model_name is None or done.get("raykd.registered_version")):
        return {"model_uri": done["raykd.model_uri"], "version": done.get("raykd.registered_version", "")}
    chain = " → ".join(s["stage"] for s in lineage)
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=parent_run_id):
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer}, name="student", task="text-generation",
            # Listed, not inferred: inference imports the model in a subprocess and may reach the network.
            pip_requirements=["transformers", "torch", "safetensors", "tokenizers"],
            metadata={"raykd_lineage": lineage, "raykd_pipeline": pipeline_name},
            registered_model_name=model_name,
        )
    client.set_tag(parent_run_id, "raykd.model_uri", info.model_uri)
    out = {"model_uri": info.model_uri, "version": ""}
    if model_name and info.registered_model_version is not None:
        version = str(info.registered_model_version)
        tags = {"raykd.lineage": chain, "raykd.pipeline": pipeline_name, "raykd.pipeline_run_id": parent_run_id}
        for i, s in enumerate(lineage):
            for key in ("kind", "run_id", "teacher", "teacher_fingerprint", "data", "steps"):
                tags[f"raykd.stage.{i}.{s['stage']}.{key}"] = str(s.get(key, ""))
        for k, v in tags.items():
            client.set_model_version_tag(model_name, version, k, v)
        client.update_model_version(model_name, version, description=(
            f"raykd pipeline '{pipeline_name}' ({chain}); parent run {parent_run_id}.\n\n"
            + "\n".join(f"{i}. {s['stage']} ({s['kind']}): teacher {s['teacher']}, data {s['data']}, "
                        f"{s['steps']} steps, run {s['run_id']}" for i, s in enumerate(lineage))
        ))
        client.set_tag(parent_run_id, "raykd.registered_version", version)
        out["version"] = version
    mlflow.log_text(json.dumps(lineage, indent=2), "lineage.json", run_id=parent_run_id)
    return out
