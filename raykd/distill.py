"""`raykd distill`: teacher on Ray Serve → student on Ray Train → evaluation, all in one MLflow run.

    raykd distill --config jobs/configs/quickstart.yaml [key=value ...]
    raykd distill --config jobs/configs/gpu_8b_fsdp.yaml --dry-run    # checks + resource plan + memory, no cluster
    ray job submit --working-dir . -- python jobs/distill.py --config jobs/configs/quickstart.yaml

Order matters for the user: the directories the run writes, the MLflow store and RAY_ADDRESS are checked
first (raykd/preflight.py, seconds), then everything that can be checked without a cluster or a model load
(config, data files and records, teacher path, vocabularies, chat template, lengths: raykd/train/prepare.py); then the MLflow run starts, Ray starts, Ray Data reads, tokenizes and packs the
data into the object store (raykd/data/ingest.py), the teacher is deployed, the student trains
(raykd/train/fit.py; and, for comparison, a hard-label-only student with the same budget, seed and data),
and the evaluation table (raykd/eval/table.py) on the held-out blocks — for chat data on their assistant
tokens — is printed and logged.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from raykd.config import DistillConfig, flatten
from raykd.console import say
from raykd.train.prepare import Prepared, prepare


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    import mlflow

    from raykd.cluster import init_ray, shutdown_ray
    from raykd.plots import plot_histories
    from raykd.tracking import resolve_tracking_uri, tracked_run
    from raykd.data.sources import mb
    from raykd.train.fit import export_student, fit_student, train_in_run
    from raykd.preflight import distill_write_dirs, preflight
    from raykd.train.rollout_engine import rollout_cpus
    from raykd.train.teachers import teacher_cpus

    preflight(distill_write_dirs(cfg), cfg.mlflow)  # paths and services first: seconds, before any teacher build
    prep = prepare(cfg)
    size = sum(c.nbytes for c in prep.chunks)
    say(f"teacher {prep.teacher_path}; data {cfg.data.source} ({cfg.data.format}, {mb(size)} in "
        f"{len(prep.chunks)} chunk(s))")
    uri = resolve_tracking_uri(cfg.mlflow)
    tc = cfg.train
    started = False
    params = flatten(cfg)
    params["teacher.resolved_path"] = prep.teacher_path
    with tracked_run(uri, cfg.mlflow.experiment, cfg.run_name, params, {"raykd.job": "distill"}) as run_id:
        try:
            started = init_ray(cfg.teacher.num_replicas * cfg.teacher.num_cpus + tc.num_workers * tc.cpus_per_worker
                               + rollout_cpus(cfg) + teacher_cpus(cfg))  # + the student rollout deployment of loss.on_policy.engine vllm
            trained = train_in_run(cfg, prep, run_id, uri)
            out_root = Path(cfg.output_dir) / cfg.run_name

            dirs = {"kd student": trained.student_dir}
            if cfg.eval.baseline:
                base_cfg = cfg.model_copy(deep=True)
                base_cfg.loss.alpha = 0.0
                base_cfg.seqkd.enabled = False  # the baseline learns from the data, not from teacher text
                with tracked_run(uri, cfg.mlflow.experiment, f"{cfg.run_name}-hard-only", flatten(base_cfg),
                                 {"raykd.job": "distill-baseline"}, parent_run_id=run_id) as base_id:
                    say("training the hard-label-only student (same budget, seed and initialisation)")
                    base_loop = dataclasses.replace(trained.loop, cfg=base_cfg, run_id=base_id, alpha_only_hard=True)
                    base_ckpt = fit_student(base_cfg, f"{cfg.run_name}-hard-only", base_loop, trained.source_data,
                                            label="train hard-label student")
                    dirs["hard-label student"] = export_student(base_ckpt, prep.tokenizer, out_root / "student-hard-only")

            runs = {"kd": run_id, **({"hard-only": base_id} if cfg.eval.baseline else {})}
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_histories(uri, runs, ["loss_hard", "loss_soft", "teacher_wait_fraction"],
                                     Path(tmp) / "training_curves.png", cfg.run_name)
                mlflow.log_artifact(str(png), run_id=run_id)

            say("evaluating on held-out text")
            val = trained.source_data.take(trained.source_data.val_start,
                                           trained.source_data.val_start + cfg.eval.max_sequences)
            table, rows, task_scores = evaluate_all(cfg, prep, trained.handle, dirs, val)
            print(table, flush=True)
            metrics = {}
            for row in rows:
                prefix = "eval_" + row.model.replace(" ", "_").replace("-", "_")
                metrics.update(row.as_metrics(prefix))
                if row.model in task_scores:
                    metrics.update(task_scores[row.model].as_metrics(prefix + "_task"))
            mlflow.log_metrics(metrics, run_id=run_id)
            mlflow.log_text(table, "eval_table.txt", run_id=run_id)
            return {"run_id": run_id, "student_dir": str(trained.student_dir), "rows": rows, "table": table,
                    "task_scores": task_scores}
        finally:
            shutdown_ray(started)


def plan_distill(cfg: DistillConfig):
    """`raykd distill --dry-run`: every check of `prepare`, then the resource plan and the per-worker memory
    estimate (raykd/train/plan.py) printed; ConfigError when the plan cannot fit. No cluster, no weights loaded."""
    from transformers import AutoConfig

    from raykd.models import derive_student_config
    from raykd.train.plan import resource_plan

    prep = prepare(cfg)
    teacher_config = AutoConfig.from_pretrained(prep.teacher_path)
    if cfg.student.path is not None:
        student_config = AutoConfig.from_pretrained(cfg.student.path)
    else:
        student_config = derive_student_config(teacher_config, cfg.student)
    plan = resource_plan(cfg, teacher_config, student_config)
    from raykd.data.sources import mb

    source = sum(c.nbytes for c in prep.chunks)
    where = "in the driver" if source <= cfg.data.driver_ingest_mb * 2**20 else "by Ray Data"
    print(f"data: {len(prep.chunks)} chunk(s), {mb(source)} of source, blocks of "
          f"{cfg.data.seq_len} tokens (tokenized {where} when the run starts)")
    print(plan.render(), flush=True)
    plan.check()
    print("plan fits" + (f" {cfg.train.gpu_memory_gib:g} GiB GPUs" if cfg.train.use_gpu else ""))
    return plan


def evaluate_all(cfg: DistillConfig, prep: Prepared, handle, student_dirs: dict[str, Path], val):
    """The teacher through its deployment, every student in-process, on the same held-out blocks `val`
    (TokenBlocks): the positions the data's loss mask trains (chat: assistant tokens) are scored; with
    `eval.tasks.enabled` also task-suite exact match (raykd/eval/tasks.py). Returns (table, rows, task scores)."""
    from raykd.eval.table import add_task_scores, format_table, format_task_table, teacher_row
    from raykd.models import safetensors_param_count

    prompts = [row[:16] for row in val.ids[: cfg.eval.gen_prompts]]
    if cfg.loss.cross_tokenizer is not None:  # val.ids are the student's tokens: no teacher row, no top-1 agreement
        rows, top1 = [], None  # (a per-token loss of other tokens would not be comparable anyway)
    else:
        signals = handle.score.remote(list(val.ids), 1).result()
        rows_mask = val.mask[:, 1:].reshape(-1) > 0  # the signal rows predict tokens 1..L-1
        gen = handle.generate.remote(prompts, cfg.eval.gen_tokens).result()
        rows = [teacher_row(signals, safetensors_param_count(prep.teacher_path), gen.tokens_per_second, rows=rows_mask)]
        top1 = np.asarray(signals.topk_ids[:, 0])
        rows += other_teacher_rows(cfg, prep, val, top1, rows_mask, prompts)
    for name, d in student_dirs.items():
        rows.append(student_row(name, str(d), val, top1, prompts, cfg.eval.gen_tokens))
    if not cfg.eval.tasks.enabled:
        return format_table(rows), rows, {}
    from raykd.eval.tasks import score_task_suite

    say("scoring the task suite (greedy decoding, exact match)")
    scores = score_task_suite(cfg, prep.teacher_path, handle, student_dirs, prep.chat_template)
    add_task_scores(rows, scores)
    return format_table(rows) + "\n\n" + format_task_table(scores), rows, scores


def other_teacher_rows(cfg: DistillConfig, prep: Prepared, val, top1: np.ndarray, rows_mask: np.ndarray,
                       prompts: list[np.ndarray]) -> list:
    """With `teachers:`, a row per app after the primary, named `teacher <name>`, scored through its own Serve
    app on the same held-out blocks as the primary (so a domain teacher's row shows its loss on general text
    too); its top-1 agreement is with the primary, as the students' is. No task-suite scores for these."""
    import dataclasses

    from raykd.eval.table import teacher_row
    from raykd.models import safetensors_param_count
    from raykd.teacher.service import teacher_handle

    if cfg.teachers is None:
        return []
    out = []
    for app, resolved in zip(cfg.teachers.apps[1:], prep.teachers[1:]):
        handle = teacher_handle(app.app_name)  # deployed for training (raykd/train/teachers.py launch_teachers)
        signals = handle.score.remote(list(val.ids), 1).result()
        gen = handle.generate.remote(prompts, cfg.eval.gen_tokens).result()
        row = teacher_row(signals, safetensors_param_count(resolved.path), gen.tokens_per_second,
                          name=f"teacher {app.name}", rows=rows_mask)
        agree = float(np.mean((np.asarray(signals.topk_ids[:, 0]) == top1)[rows_mask]))
        out.append(dataclasses.replace(row, top1_agreement=agree))
    return out


def student_row(name: str, model_dir: str, val, teacher_top1: np.ndarray, prompts: list[np.ndarray],
                gen_tokens: int):
    """Held-out loss, agreement with the teacher's top-1 (rows as in TeacherSignals) and generation speed,
    measured with the code the hf teacher backend runs."""
    from raykd.eval.heldout import heldout_loss
    from raykd.eval.table import EvalRow
    from raykd.models import count_parameters
    from raykd.teacher.hf_backend import HFTeacherBackend

    backend = HFTeacherBackend(model_dir, device="cpu")
    loss, agree = heldout_loss(backend.model, val.ids, teacher_top1, mask=val.mask)
    gen = backend.generate(prompts, gen_tokens)
    return EvalRow(name, count_parameters(backend.model), loss, math.exp(loss),
                   math.nan if agree is None else agree, gen.tokens_per_second)
