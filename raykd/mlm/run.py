"""`raykd mlm-distill`: teacher on Serve -> student trained in the driver -> evaluation, one MLflow run.

    raykd mlm-distill --config jobs/configs/mlm.yaml [key=value ...]

The method is described in raykd/mlm/__init__.py; the loop and the evaluation are raykd/mlm/train.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from raykd.config import ConfigError, TeacherConfig, flatten
from raykd.config.mlm import MLMDistillConfig
from raykd.files import atomic_dir
from raykd.mlm.masking import mlm_blocks
from raykd.mlm.models import derive_bert_student, ensure_tiny_bert
from raykd.mlm.train import eval_batch, evaluate_mlm, request_signals, say, train_mlm_student


def run_mlm_distill(cfg: MLMDistillConfig) -> dict[str, Any]:
    """The whole job (module doc): returns the run id, the student directory and the evaluation rows."""
    from transformers import AutoTokenizer

    from raykd.cluster import init_ray, shutdown_ray
    from raykd.data.blocks import split_blocks
    from raykd.data.sources import load_texts
    from raykd.models import check_model_dir, count_parameters, model_fingerprint
    from raykd.teacher.service import launch_teacher
    from raykd.tracking import MetricLogger, resolve_tracking_uri, tracked_run

    from raykd.config import default_cache_dir
    from raykd.preflight import preflight

    preflight({"output_dir": cfg.output_dir, "RAYKD_CACHE": default_cache_dir() if cfg.teacher.path is None else None},
              cfg.mlflow)
    texts = load_texts(cfg.data)
    if cfg.teacher.path is not None:
        check_model_dir(cfg.teacher.path, "teacher.path")
    teacher_path = cfg.teacher.path or str(ensure_tiny_bert(cfg.teacher.build))
    tok = AutoTokenizer.from_pretrained(teacher_path)
    if tok.mask_token_id is None:
        raise ConfigError(f"teacher.path: {teacher_path} has no [MASK] token (not a masked-LM tokenizer)")
    train, val = split_blocks(mlm_blocks(texts, tok, cfg.data.seq_len), cfg.data.val_fraction)
    uri = resolve_tracking_uri(cfg.mlflow)
    t_cfg = TeacherConfig(path=teacher_path, backend="hf", num_cpus=cfg.teacher.num_cpus, app_name=cfg.teacher.app_name)
    with tracked_run(uri, cfg.mlflow.experiment, cfg.run_name, flatten(cfg), {"raykd.job": "mlm-distill"}) as run_id:
        started = init_ray(cfg.teacher.num_cpus + 1)
        try:
            handle = launch_teacher(t_cfg, teacher_path, model_fingerprint(teacher_path))
            score = lambda x, p, y: handle.score.remote(list(x), cfg.loss.top_k, None, positions=p, labels=y)  # noqa: E731
            students = {"kd student": score}
            if cfg.eval.baseline:
                students["hard-label student"] = None
            inputs, selected, labels = eval_batch(val, tok, cfg)
            teacher_sig = request_signals(score, inputs, selected, labels).result()
            t_loss = float(-np.mean(teacher_sig.target_logprob))
            rows = [{"model": "teacher", "heldout_loss": t_loss, "perplexity": math.exp(t_loss), "top1_agreement": 1.0}]
            out_root = Path(cfg.output_dir) / cfg.run_name
            for name, fn in students.items():
                student = derive_bert_student(teacher_path, cfg.student, cfg.seed)
                say(f"training the {name} ({count_parameters(student):,} params)")
                logger = MetricLogger(uri, run_id) if fn is not None else None
                train_mlm_student(student, train, tok, cfg, fn, logger)
                rows.append({"model": name, **evaluate_mlm(student, val, tok, cfg, teacher_sig)})
                if fn is not None:
                    with atomic_dir(out_root / "student") as tmp:
                        student.save_pretrained(tmp)
                        tok.save_pretrained(tmp)
                del student
            import mlflow

            table = "\n".join(f"{r['model']:<20}{r['heldout_loss']:>12.4f}{r['perplexity']:>10.2f}{r['top1_agreement']:>10.3f}"
                              for r in rows)
            table = f"{'model':<20}{'MLM loss':>12}{'ppl':>10}{'top-1':>10}\n" + table
            print(table, flush=True)
            mlflow.log_text(table, "eval_table.txt", run_id=run_id)
            mlflow.log_metrics({f"eval_{r['model'].replace(' ', '_').replace('-', '_')}_{k}": v
                                for r in rows for k, v in r.items() if k != "model"}, run_id=run_id)
            return {"run_id": run_id, "student_dir": str(out_root / "student"), "rows": rows, "table": table}
        finally:
            shutdown_ray(started)
