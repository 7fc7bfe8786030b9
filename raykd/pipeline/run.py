"""`raykd pipeline`: distillation stages in order (e.g. general → instruction → domain), one MLflow tree.

    raykd pipeline --config jobs/configs/pipeline_three_stage.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline_three_stage.yaml

What runs, in order:
1. `plan_pipeline` (raykd/pipeline/plan.py): every check that needs no cluster, for every stage, before any
   stage starts. One `ConfigError` line on failure.
2. One parent MLflow run (`raykd.job=pipeline`). Stages that an earlier, interrupted invocation completed
   (recorded on the parent run, raykd/pipeline/tracking.py) are skipped, their students reused.
3. Per stage, a nested child run: optional domain teacher (raykd/pipeline/teachers.py), the teacher on
   Serve, optional teacher-written answers (instruction distillation), the student on Ray Train starting
   from the previous stage's student (`raykd.train.fit.train_in_run`), then evaluation
   (raykd/pipeline/eval.py), tables and plots. The Ray Train run is named `<stage run>-<parent id>`, so a
   stage interrupted mid-way resumes from its last checkpoint when the pipeline is re-run.
4. The progress and retention tables, the final student logged as an MLflow model and registered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from raykd import console
from raykd.config import DistillConfig, flatten
from raykd.config.pipeline import PipelineConfig
from raykd.files import write_text
from raykd.pipeline.eval import ModelEval
from raykd.pipeline.plan import Plan, StagePlan, plan_pipeline
from raykd.train.checkpoint import checkpoint_step

say = partial(console.say, scope="raykd.pipeline")


# --------------------------------------------------------------------------------------------- running
def _config_hash(sp: StagePlan, cfg: DistillConfig) -> str:
    payload = {"cfg": cfg.model_dump(mode="json"), "stage": sp.spec.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def latest_checkpoint_step(storage: str, train_name: str) -> int | None:
    """Step of the checkpoint a re-run of `train_name` continues from, if any.

    Ray Train V2 restores the latest checkpoint its controller *registered* (checkpoint_manager_snapshot.json).
    Where it registered none (the driver was killed after a checkpoint was written but before the controller
    recorded it), the newest whole checkpoint is handed to the loop instead (raykd/train/batches.py
    resume_point); a half-written one is never counted.
    """
    from raykd.train.batches import resume_point

    snapshot = Path(storage, train_name, "checkpoint_manager_snapshot.json")
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        return checkpoint_step(Path(storage, train_name, latest["checkpoint_dir_name"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    _, unrecorded = resume_point(storage, train_name)
    return checkpoint_step(Path(unrecorded)) if unrecorded else None


def _pipeline_params(cfg: PipelineConfig) -> dict[str, str]:
    params = {"name": cfg.name, "stages": " → ".join(f"{s.name}({s.kind})" for s in cfg.stages),
              "registry.model_name": str(cfg.registry.model_name)}
    for name, ds in cfg.datasets.items():
        params[f"datasets.{name}.source"] = ds.source
    params.update(flatten(cfg.eval, "eval."))
    return params


def _save_rows(path: Path, rows: list[ModelEval]) -> None:
    write_text(path, json.dumps([r.to_json() for r in rows], indent=1))


def _load_rows(path: Path) -> list[ModelEval] | None:
    if not path.is_file():
        return None
    return [ModelEval.from_json(d) for d in json.loads(path.read_text())]


class _Runner:
    """State of one pipeline invocation: the plan, the parent run, rows so far, teachers evaluated."""

    def __init__(self, cfg: PipelineConfig, plan: Plan, uri: str, parent_id: str):
        from mlflow.tracking import MlflowClient

        self.cfg, self.plan, self.uri, self.parent_id = cfg, plan, uri, parent_id
        self.client = MlflowClient(uri)
        self.root = Path(cfg.output_dir) / cfg.name
        self.rows: list[ModelEval] = []  # init student, then per stage: teacher row (first use), student row
        self.teacher_rows: dict[str, tuple[ModelEval, dict]] = {}  # fingerprint -> (row, top-1 ids per set)
        self.stage_runs: dict[str, str] = {}
        self.stage_teacher: dict[str, ModelEval] = {}  # stage -> its teacher's row
        self.lineage: list[dict] = []

    def prev_student(self) -> ModelEval | None:
        students = [r for r in self.rows if r.role == "student"]
        return students[-1] if students else None

    def _teacher_eval(self, handle, sp: StagePlan, path: str, fp: str) -> tuple[ModelEval, dict]:
        """Each distinct teacher is evaluated once per invocation (by fingerprint), named by what it is."""
        from raykd.models import safetensors_param_count
        from raykd.pipeline.eval import evaluate_teacher

        if fp not in self.teacher_rows:
            e = self.cfg.eval
            adapt = sp.spec.adapt_teacher
            name = f"teacher (adapted: {adapt.dataset or sp.spec.dataset})" if adapt else "teacher"
            say(f"{sp.label}: evaluating the {name} (held-out sets, exact match, generation speed)")
            self.teacher_rows[fp] = evaluate_teacher(handle, self.plan.eval_sets, name, sp.spec.name,
                                                     safetensors_param_count(path), self.plan.tokenizer,
                                                     e.em_max_new_tokens, e.gen_tokens)
        return self.teacher_rows[fp]

    def _add_rows(self, stage: str, rows: list[ModelEval]) -> None:
        """Rows for the report: a teacher once (first stage that used it), every student."""
        for r in rows:
            if r.role == "teacher":
                self.stage_teacher[stage] = r
                if any(t.role == "teacher" and t.model == r.model for t in self.rows):
                    continue
            self.rows.append(r)

    def _student_eval(self, student_dir: Path, top1: dict, name: str, stage: str, threads: int) -> ModelEval:
        from raykd.pipeline.eval import evaluate_student

        e = self.cfg.eval
        return evaluate_student(student_dir, self.plan.eval_sets, top1, name, stage, self.plan.tokenizer,
                                e.em_max_new_tokens, e.gen_tokens, threads)

    def _init_dir(self, stage0_hash: str, teacher_fp: str) -> Path:
        """Where the starting student's evaluation is kept: keyed by what it depends on, so a resumed run
        reuses it and a changed config does not."""
        key = json.dumps([stage0_hash, teacher_fp, self.cfg.eval.model_dump(mode="json"), self.plan.sources])
        return self.root / "init" / hashlib.sha256(key.encode()).hexdigest()[:12]

    def _init_student_dir(self, sp: StagePlan, init_dir: Path) -> Path:
        """The student before any stage: the given start, or derived from stage 0's teacher (as Train will)."""
        if sp.cfg.student.path:
            return Path(sp.cfg.student.path)
        from raykd.models import build_student

        out = init_dir / "student"
        if not (out / "config.json").is_file():
            student, _ = build_student(sp.prep.teacher_path, sp.cfg.student, sp.cfg.seed)
            student.save_pretrained(out, safe_serialization=True)
            self.plan.tokenizer.save_pretrained(out)
        return out

    def run_stage(self, sp: StagePlan, cfg_i: DistillConfig, config_hash: str) -> Path:
        import mlflow

        from raykd.models import model_fingerprint
        from raykd.pipeline.eval import progress_table
        from raykd.pipeline.teachers import adapt_teacher, teacher_responses
        from raykd.pipeline.tracking import log_stage_plots, mark_stage_complete
        from raykd.teacher.service import launch_teacher
        from raykd.tracking import tracked_run
        from raykd.train.fit import storage_root, train_in_run
        from raykd.train.prepare import ingest_data, prepare

        spec, label = sp.spec, sp.label
        prep = sp.prep
        adapt_record = None
        if spec.adapt_teacher:  # fine-tuned in this process on the (small) adaptation set, through Ray Data
            adapt = ingest_data(sp.adapt_cfg, sp.adapt_prep)
            path, adapt_record = adapt_teacher(prep.teacher_path, prep.fingerprint, adapt.take(0, adapt.n_train).ids,
                                               adapt.take(adapt.val_start, adapt.n_blocks).ids, spec.adapt_teacher,
                                               seed=cfg_i.seed,
                                               threads=max(1, int(cfg_i.teacher.num_cpus)))
            prep = dataclasses.replace(prep, teacher_path=str(path), fingerprint=model_fingerprint(str(path)))
            cfg_i.teacher.path = str(path)
        tags = {"raykd.job": "pipeline-stage", "raykd.pipeline": self.cfg.name, "raykd.stage": spec.name,
                "raykd.stage_kind": spec.kind, "raykd.stage_index": str(sp.index),
                "raykd.lineage.parent_student": str(cfg_i.student.path or "derived from the teacher"),
                "raykd.lineage.teacher": prep.teacher_path, "raykd.config_hash": config_hash}
        params = flatten(cfg_i)
        params.update({"teacher.resolved_path": prep.teacher_path, "stage.kind": spec.kind, "stage.dataset": spec.dataset,
                       "stage.adapt_teacher": json.dumps(spec.adapt_teacher.model_dump() if spec.adapt_teacher else None),
                       "stage.responses": json.dumps(spec.responses.model_dump() if spec.responses else None)})
        train_name = f"{cfg_i.run_name}-{self.parent_id[:8]}"
        stage_dir = Path(cfg_i.output_dir) / cfg_i.run_name
        with tracked_run(self.uri, self.cfg.mlflow.experiment, cfg_i.run_name, params, tags,
                         parent_run_id=self.parent_id) as run_id:
            mlflow.log_text(yaml.safe_dump(cfg_i.model_dump(mode="json"), sort_keys=False), "config/stage.yaml", run_id=run_id)
            if adapt_record:
                mlflow.log_metrics({"teacher_adapt_heldout_loss_before": adapt_record["heldout_loss_before"],
                                    "teacher_adapt_heldout_loss_after": adapt_record["heldout_loss_after"]}, run_id=run_id)
            say(f"{label}: deploying the teacher {prep.teacher_path}")
            handle = launch_teacher(cfg_i.teacher, prep.teacher_path, prep.fingerprint)
            t_row, top1 = self._teacher_eval(handle, sp, prep.teacher_path, prep.fingerprint)
            threads = max(1, int(cfg_i.teacher.num_cpus))
            if sp.index == 0 and self.cfg.eval.evaluate_init and not self.rows:
                init_dir = self._init_dir(config_hash, prep.fingerprint)
                init_rows = _load_rows(init_dir / "eval.json")
                if init_rows is None:
                    say(f"{label}: evaluating the starting student")
                    start = self._init_student_dir(sp, init_dir)
                    init_rows = [self._student_eval(start, top1, "student (start)", "start", threads)]
                    _save_rows(init_dir / "eval.json", init_rows)
                self.rows.extend(init_rows)
            if spec.responses:
                max_len = handle.info.remote().result().max_model_len
                say(f"{label}: the teacher answers {min(len(sp.records), spec.responses.max_prompts)} prompts")
                jsonl = teacher_responses(handle, prep.tokenizer, sp.records, spec.responses, prep.fingerprint, max_len)
                cfg_i.data.source = str(jsonl)
                cfg_i.data.text_fields = [spec.responses.prompt_field, spec.responses.response_field]
                prep = dataclasses.replace(prepare(cfg_i, f"{label}.data"), teacher_path=prep.teacher_path,
                                           fingerprint=prep.fingerprint)
                mlflow.log_artifact(str(jsonl), "data", run_id=run_id)
            resumed_at = latest_checkpoint_step(storage_root(cfg_i), train_name)
            if resumed_at is not None:
                say(f"{label}: resuming from its Ray Train checkpoint at step {resumed_at}/{cfg_i.train.max_steps}")
            trained = train_in_run(cfg_i, prep, run_id, self.uri, train_name=train_name)

            say(f"{label}: evaluating the student")
            s_row = self._student_eval(trained.student_dir, top1, f"student after {spec.name}", spec.name, threads)
            prev = self.prev_student()
            stage_rows = [t_row, s_row]
            metrics = {**s_row.as_metrics("eval_student"), **t_row.as_metrics("eval_teacher")}
            if prev is not None:
                metrics["eval_domain_gain"] = prev.domain_loss - s_row.domain_loss
                metrics["eval_general_forgetting"] = s_row.general_loss - prev.general_loss
            mlflow.log_metrics(metrics, run_id=run_id)
            table = progress_table(([prev] if prev else []) + [t_row, s_row])
            print(table, flush=True)
            mlflow.log_text(table, "eval/table.md", run_id=run_id)
            mlflow.log_text(json.dumps([r.to_json() for r in stage_rows], indent=1), "eval/rows.json", run_id=run_id)
            _save_rows(stage_dir / "eval.json", stage_rows)
            log_stage_plots(self.uri, run_id, spec.name)
        self._add_rows(spec.name, stage_rows)
        self._record(sp, run_id, trained.student_dir, cfg_i, prep.teacher_path, prep.fingerprint)
        mark_stage_complete(self.client, self.parent_id, spec.name, run_id, str(trained.student_dir), config_hash,
                            teacher=prep.teacher_path, teacher_fingerprint=prep.fingerprint)
        return trained.student_dir

    def _record(self, sp: StagePlan, run_id: str, student_dir: Path, cfg_i: DistillConfig, teacher: str, fp: str,
                log: bool = True) -> None:
        import mlflow

        self.stage_runs[sp.spec.name] = run_id
        self.lineage.append({"stage": sp.spec.name, "kind": sp.spec.kind, "run_id": run_id, "teacher": teacher,
                             "teacher_fingerprint": fp, "data": cfg_i.data.source, "steps": cfg_i.train.max_steps,
                             "student_dir": str(student_dir)})
        if not log:  # a reused stage: its metrics are on the parent already
            return
        s_row = [r for r in self.rows if r.role == "student"][-1]
        mlflow.log_metrics({k.replace("eval_student_", "stage_student_"): v for k, v in s_row.as_metrics("eval_student").items()},
                           step=sp.index + 1, run_id=self.parent_id)

    def skip_stage(self, sp: StagePlan, rec: dict[str, str], cfg_i: DistillConfig) -> Path | None:
        """Reuse a stage a previous invocation completed; None when its outputs are gone."""
        student_dir = Path(rec.get("student_dir", ""))
        rows = _load_rows(Path(cfg_i.output_dir) / cfg_i.run_name / "eval.json")
        if not (student_dir / "config.json").is_file() or rows is None:
            return None
        if sp.index == 0 and self.cfg.eval.evaluate_init and not self.rows:
            teacher_fp = rec.get("teacher_fingerprint", "")
            self.rows.extend(_load_rows(self._init_dir(rec.get("config_hash", ""), teacher_fp) / "eval.json") or [])
        self._add_rows(sp.spec.name, rows)
        self._record(sp, rec["run_id"], student_dir, cfg_i, rec.get("teacher", ""), rec.get("teacher_fingerprint", ""),
                     log=False)
        say(f"{sp.label}: completed by an earlier run ({rec['run_id']}); reusing {student_dir}")
        return student_dir


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Plan (all checks), then run or resume every stage in one parent MLflow run; returns the summary."""
    import mlflow

    from raykd.cluster import shutdown_ray, start_ray
    from raykd.pipeline.eval import progress_table, retention, retention_table
    from raykd.pipeline.tracking import completed_stages, forget_stages_from, log_and_register_student, log_pipeline_plots
    from raykd.tracking import resolve_tracking_uri, tracked_run

    from raykd.config import default_cache_dir
    from raykd.preflight import preflight

    preflight({"output_dir": cfg.output_dir, "RAYKD_CACHE": default_cache_dir(),
               "defaults.train.storage_path": (cfg.defaults.get("train") or {}).get("storage_path")}, cfg.mlflow)
    say(f"planning {len(cfg.stages)} stage(s): " + " → ".join(s.name for s in cfg.stages))
    plan = plan_pipeline(cfg)
    uri = resolve_tracking_uri(cfg.mlflow)
    from raykd.train.rollout_engine import rollout_cpus

    from raykd.train.teachers import teacher_cpus

    cpus = max(s.cfg.teacher.num_replicas * s.cfg.teacher.num_cpus + s.cfg.train.num_workers * s.cfg.train.cpus_per_worker
               + rollout_cpus(s.cfg) for s in plan.stages)
    cpus += sum(teacher_cpus(s.cfg) for s in plan.stages)  # stages' other teacher apps (logical CPUs; they stay up)
    tags = {"raykd.job": "pipeline", "raykd.pipeline": cfg.name, "raykd.stages": ",".join(s.name for s in cfg.stages)}
    started = False
    with tracked_run(uri, cfg.mlflow.experiment, cfg.name, _pipeline_params(cfg), tags) as parent_id:
        runner = _Runner(cfg, plan, uri, parent_id)
        mlflow.log_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/pipeline.yaml", run_id=parent_id)
        done = completed_stages(runner.client, parent_id)
        try:
            started = start_ray(cpus)
            student_dir: Path | None = Path(plan.stages[0].cfg.student.path) if plan.stages[0].cfg.student.path else None
            rerun = False
            for sp in plan.stages:
                cfg_i = sp.cfg.model_copy(deep=True)
                if sp.index > 0:
                    cfg_i.student.path = str(student_dir)
                h = _config_hash(sp, cfg_i)
                rec = done.get(sp.spec.name)
                if rec and not rerun and rec.get("config_hash") == h:
                    reused = runner.skip_stage(sp, rec, cfg_i)
                    if reused is not None:
                        student_dir = reused
                        continue
                if rec and not rerun:
                    say(f"{sp.label}: changed (or its outputs are gone) since it completed; re-running it and all after")
                    forget_stages_from(runner.client, parent_id, [s.spec.name for s in plan.stages[sp.index:]])
                rerun = rerun or rec is not None
                say(f"{sp.label} starts ({sp.spec.kind} stage): data {cfg_i.data.source}, {cfg_i.train.max_steps} steps")
                student_dir = runner.run_stage(sp, cfg_i, h)
        finally:
            shutdown_ray(started)

        final_student = runner.prev_student()
        final_teacher = runner.stage_teacher[plan.stages[-1].spec.name]
        report = (f"## {cfg.name}: " + " → ".join(s.spec.name for s in plan.stages) + "\n\n"
                  + progress_table(runner.rows) + "\n\nRetention (final student vs the last stage's teacher):\n\n"
                  + retention_table(final_teacher, final_student) + "\n")
        print(report, flush=True)
        write_text(runner.root / "report.md", report)
        mlflow.log_text(report, "eval/report.md", run_id=parent_id)
        metrics = {**final_student.as_metrics("final_student"), **final_teacher.as_metrics("final_teacher")}
        for name, _, _, ratio in retention(final_teacher, final_student):
            if ratio is not None:
                metrics["retention_" + re.sub(r"[^a-z0-9]+", "_", name).strip("_")] = ratio
        mlflow.log_metrics(metrics, run_id=parent_id)
        log_pipeline_plots(uri, parent_id, runner.stage_runs, runner.rows, runner.stage_teacher, cfg.name)
        runner.client.set_tag(parent_id, "raykd.lineage", " → ".join(s["stage"] for s in runner.lineage))
        say("logging the final student as an MLflow model" + (f" and registering it as '{cfg.registry.model_name}'"
                                                              if cfg.registry.model_name else ""))
        model = log_and_register_student(uri, parent_id, str(student_dir), cfg.registry.model_name, runner.lineage, cfg.name)
        say(f"done: parent run {parent_id}, final student {student_dir}, model {model['model_uri']}"
            + (f" (version {model['version']})" if model["version"] else ""))
        return {"parent_run_id": parent_id, "student_dir": str(student_dir), "rows": runner.rows, "report": report,
                "stage_runs": runner.stage_runs, "model": model, "tracking_uri": uri}
