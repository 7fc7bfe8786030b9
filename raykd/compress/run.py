"""`raykd compress`: one teacher -> KD students and compressed variants, measured alike, one MLflow tree.

    raykd compress --config jobs/configs/compress.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/compress.py --config jobs/configs/compress.yaml

In order:
1. `plan_compress` (raykd/compress/plan.py): every check that needs no model, one line on failure; then
   `prepare` (raykd/train/prepare.py) checks the data and builds (or finds cached) the offline teacher.
2. One parent MLflow run (`raykd.job=compress`). Ray up; Ray Data packs the data once (the KD students train
   on it; recovery and structured-pruning calibration read its training blocks, every measure its held-out
   blocks). The teacher is measured in-process by the harness (raykd/compress/measure.py).
3. KD students, one child run each, through `raykd distill`'s path (`train_in_run`: teacher on Serve,
   student on Ray Train).
4. Variants as Ray tasks (raykd/compress/build.py), as many at once as the cluster has CPUs for
   (`num_cpus_per_variant` each): build, heal by distillation where asked, measure quality. KD students and
   their quantized copies are measured the same way.
5. CPU speed, one model at a time in the driver (nothing else of this study running), then a child run per
   variant (params, metrics with retention, the directory as the `model` artifact), and on the parent the
   table, results.json and the Pareto plot.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from raykd import console
from raykd.config import flatten
from raykd.config.compress import CompressConfig, QuantizeVariant

say = lambda msg: console.say(msg, scope="raykd.compress")  # noqa: E731


def _variant_jobs(cfg: CompressConfig, plan, root: Path, teacher_path: str, kd_dirs: dict[str, Path],
                  arrays: dict[str, Any], items: list) -> list:
    from raykd.compress.build import VariantJob

    threads = max(1, int(cfg.num_cpus_per_variant))
    common = dict(teacher_path=teacher_path, items=items, recovery=cfg.recovery, seed=cfg.seed, threads=threads,
                  **arrays)
    jobs = []
    for name, d in kd_dirs.items():
        jobs.append(VariantJob(name, None, str(d), **common))
        for mode in cfg.kd.quantize:
            from raykd.compress.plan import QUANT_NAMES

            q = QuantizeVariant(method="quantize", mode=mode)
            jobs.append(VariantJob(f"{name}+{QUANT_NAMES[mode]}", q, str(root / f"{name}+{QUANT_NAMES[mode]}"),
                                   quantize_from=str(d), **common))
    for v in plan.variants:
        jobs.append(VariantJob(v.name, v.spec, str(root / v.name), **common))
    return jobs


def _run_tasks(cfg: CompressConfig, jobs: list) -> list:
    """Each job a Ray task; at most as many in flight as the cluster has CPUs for. Returns Measurements."""
    import ray

    from raykd.compress.build import run_job
    from raykd.compress.measure import Measurement

    task = ray.remote(num_cpus=cfg.num_cpus_per_variant, max_retries=0)(run_job)
    cap = max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.num_cpus_per_variant))
    cap = min(cap, max(1, int((os.cpu_count() or 1) // cfg.num_cpus_per_variant)))  # never more than the cores
    pending, running, done = list(jobs), {}, {}
    with console.Bar("build, heal and score variants", total=len(jobs), unit="variants",
                     scope="raykd.compress") as bar:
        while pending or running:
            while pending and len(running) < cap:
                job = pending.pop(0)
                running[task.remote(job)] = job.name
            ready, _ = ray.wait(list(running), num_returns=1)
            name = running.pop(ready[0])
            done[name] = [Measurement.from_json(d) for d in ray.get(ready[0])]
            bar.update(len(done), f"{name} done")
    return [m for job in jobs for m in done[job.name]]


def _paths(rows: list, root: Path, teacher_path: str, kd_dirs: dict[str, Path]) -> dict[str, str]:
    return {m.name: teacher_path if m.name == "teacher" else str(kd_dirs.get(m.name, root / m.name)) for m in rows}


def _measure_speed(cfg: CompressConfig, rows: list, paths: dict[str, str], vocab: int) -> None:
    from raykd.compress.measure import load_variant, measure_speed

    with console.Bar("CPU speed, one model at a time", total=len(rows), unit="models",
                     scope="raykd.compress") as bar:
        for i, m in enumerate(rows):
            m.speed = measure_speed(load_variant(paths[m.name]), cfg.eval.speed, vocab, seed=cfg.seed)
            bar.update(i + 1, f"{m.name}: {m.speed.get('gen_tps_b1', 0):,.0f} gen tok/s at batch 1")


def _log_children(cfg: CompressConfig, uri: str, parent: str, rows: list, teacher, paths: dict[str, str],
                  kd_runs: dict[str, str]) -> None:
    import mlflow

    from raykd.tracking import tracked_run

    for m in rows:
        metrics = m.metrics(teacher)
        if m.name in kd_runs:  # the KD student's child run (its training curves) gets the numbers too
            mlflow.log_metrics(metrics, run_id=kd_runs[m.name])
            continue
        params = {"method": m.method, "path": paths[m.name]}
        with tracked_run(uri, cfg.mlflow.experiment, f"{cfg.run_name}/{m.name}", params,
                         {"raykd.job": "compress-variant"}, parent_run_id=parent) as child:
            mlflow.log_metrics(metrics, run_id=child)
            if m.name != "teacher":
                mlflow.log_artifacts(paths[m.name], "model", run_id=child)


def run_compress(cfg: CompressConfig) -> dict[str, Any]:
    import mlflow

    from raykd.cluster import init_ray, shutdown_ray
    from raykd.compress.measure import load_variant, measure_quality, teacher_top1
    from raykd.compress.plan import distill_config, plan_compress
    from raykd.compress.report import format_table, markdown_table, pareto_plot
    from raykd.config import StudentConfig
    from raykd.eval.tasks import task_items
    from raykd.files import write_text
    from raykd.tracking import resolve_tracking_uri, tracked_run
    from raykd.train.fit import train_in_run
    from raykd.train.prepare import ingest_data, prepare

    t_start = time.perf_counter()
    plan = plan_compress(cfg)
    base = next(iter(plan.students.values()), None) or distill_config(cfg, "data", StudentConfig())
    prep = prepare(base)
    say(f"teacher {prep.teacher_path}; {len(plan.students)} KD student(s), {len(plan.variants)} variant(s)")
    uri = resolve_tracking_uri(cfg.mlflow)
    root = Path(cfg.output_dir) / cfg.run_name
    tc = cfg.kd.train
    with tracked_run(uri, cfg.mlflow.experiment, cfg.run_name, flatten(cfg), {"raykd.job": "compress"}) as parent:
        started = False
        try:
            started = init_ray(cfg.teacher.num_cpus + max(tc.num_workers * tc.cpus_per_worker, cfg.num_cpus_per_variant))
            data = ingest_data(base, prep)
            train_blocks = data.take(0, data.n_train).ids
            val = data.take(data.val_start, data.val_start + cfg.eval.max_sequences).ids
            items = task_items(cfg) if cfg.eval.tasks.enabled else []
            say(f"measuring the teacher ({len(val)} held-out blocks, {len(items)} task prompts)")
            teacher_model = load_variant(prep.teacher_path)
            top1 = teacher_top1(teacher_model, val)
            vocab = teacher_model.config.vocab_size
            del teacher_model
            teacher = measure_quality("teacher", "teacher", prep.teacher_path, val, None, items, prep.tokenizer)

            kd_dirs, kd_runs = {}, {}
            for name, dcfg in plan.students.items():
                say(f"KD student {name}: `raykd distill`'s path (teacher on Serve, student on Ray Train)")
                with tracked_run(uri, cfg.mlflow.experiment, f"{cfg.run_name}/{name}", flatten(dcfg),
                                 {"raykd.job": "compress-kd"}, parent_run_id=parent) as child:
                    kd_dirs[name] = train_in_run(dcfg, prep, child, uri, data=data).student_dir
                    kd_runs[name] = child

            arrays = {"train_blocks": train_blocks, "calibration": train_blocks[: cfg.calibration_blocks],
                      "val": val, "top1": top1}
            rows = [teacher] + _run_tasks(cfg, _variant_jobs(cfg, plan, root, prep.teacher_path, kd_dirs, arrays, items))
            paths = _paths(rows, root, prep.teacher_path, kd_dirs)
            _measure_speed(cfg, rows, paths, vocab)
            _log_children(cfg, uri, parent, rows, teacher, paths, kd_runs)

            seconds = time.perf_counter() - t_start
            table = format_table(rows, teacher)
            print(table, flush=True)
            results = {"seconds": seconds, "rows": [m.to_json() for m in rows], "paths": paths}
            write_text(root / "results.json", json.dumps(results, indent=1))
            write_text(root / "table.md", markdown_table(rows, teacher))
            with tempfile.TemporaryDirectory() as tmp:
                png = pareto_plot(rows, teacher, Path(tmp) / "pareto.png")
                mlflow.log_artifact(str(png), run_id=parent)
            mlflow.log_artifact(str(root / "results.json"), run_id=parent)
            mlflow.log_text(table, "compress_table.txt", run_id=parent)
            mlflow.log_metric("study_seconds", seconds, run_id=parent)
            say(f"done in {seconds / 60:.1f} min: {len(rows)} models measured; {root / 'results.json'}")
            return {"run_id": parent, "rows": rows, "table": table, "seconds": seconds, "root": str(root)}
        finally:
            shutdown_ray(started)
