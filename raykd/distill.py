"""`raykd distill`: teacher on Ray Serve → student on Ray Train → evaluation, all in one MLflow run.

    raykd distill --config jobs/configs/quickstart.yaml [key=value ...]

Order matters for the user: everything that can be checked without a cluster or a model load (config,
data files, teacher path, vocabularies, lengths) is checked in `prepare` first; then the MLflow run
starts, Ray starts, the teacher is deployed, the student trains (and, for comparison, a hard-label-only
student with the same budget and seed), and the evaluation table is printed and logged.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raykd.config import ConfigError, DistillConfig, default_cache_dir, flatten

log = logging.getLogger("raykd")


def say(msg: str) -> None:
    print(f"[raykd] {msg}", file=sys.stderr, flush=True)


@dataclass
class Prepared:
    teacher_path: str
    fingerprint: str
    tokenizer: Any
    train: np.ndarray  # (N, L) int32
    val: np.ndarray  # (M, L) int32
    train_weights: np.ndarray | None = None  # (N, L) float32 per-token sample weights (data.weight_field)


def prepare(cfg: DistillConfig, field: str = "data") -> Prepared:
    """All checks that need no cluster; builds the tiny teacher if none is given (cached)."""
    from raykd.data import load_weighted_texts, split_blocks, tokenize_weighted_blocks
    from raykd.models import check_model_dir, model_fingerprint

    texts, weights = load_weighted_texts(cfg.data, field)  # data errors first: they are the cheapest to fix
    if cfg.teacher.path is not None:
        check_model_dir(cfg.teacher.path, "teacher.path")
        teacher_path = cfg.teacher.path
    else:
        from raykd.teacher_build import ensure_tiny_teacher

        teacher_path = str(ensure_tiny_teacher(cfg.teacher.build))
    if cfg.student.path is not None:
        check_model_dir(cfg.student.path, "student.path")

    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    t_config = AutoConfig.from_pretrained(teacher_path)
    if cfg.student.path is not None:
        check_same_vocab(teacher_path, cfg.student.path, "student.path")
    max_len = getattr(t_config, "max_position_embeddings", None)
    if max_len and cfg.data.seq_len > max_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the teacher's max_position_embeddings={max_len}")
    if cfg.loss.top_k > t_config.vocab_size:
        raise ConfigError(f"loss.top_k={cfg.loss.top_k} exceeds the teacher's vocab_size={t_config.vocab_size}")
    if cfg.teacher.backend == "vllm":  # what the engine would refuse (architecture, head size, k, length)
        from raykd.teacher.vllm_backend import check_vllm_teacher

        check_vllm_teacher(teacher_path, cfg.teacher, top_k=cfg.loss.top_k, seq_len=cfg.data.seq_len)
    from raykd.objective import check_methods

    check_methods(cfg, t_config)  # layer maps, head counts, layer selection against the real models
    blocks, block_weights = tokenize_weighted_blocks(texts, weights, tokenizer, cfg.data.seq_len)
    if len(blocks) == 0:
        raise ConfigError(f"{field}.source: {cfg.data.source} yields no sequence of {cfg.data.seq_len} tokens")
    train, val = split_blocks(blocks, cfg.data.val_fraction, field)
    if cfg.data.max_sequences:
        train = train[: cfg.data.max_sequences]
    train_weights = None if block_weights is None else block_weights[: len(train)]
    fingerprint = model_fingerprint(teacher_path)
    if cfg.signals.offline_path:  # captured signals: this teacher's, covering every training sequence
        from raykd.signal_cache import check_offline

        check_offline(cfg.signals.offline_path, fingerprint, cfg.loss.top_k, t_config.vocab_size, train)
    return Prepared(teacher_path, fingerprint, tokenizer, train, val, train_weights)


def check_same_vocab(teacher_path: str, other_path: str, field: str) -> None:
    """Teacher signals are token ids: student and teacher must share the tokenizer exactly."""
    from transformers import AutoConfig, AutoTokenizer

    t_cfg, o_cfg = AutoConfig.from_pretrained(teacher_path), AutoConfig.from_pretrained(other_path)
    if t_cfg.vocab_size != o_cfg.vocab_size:
        raise ConfigError(f"{field}: vocab_size {o_cfg.vocab_size} differs from the teacher's {t_cfg.vocab_size}")
    if AutoTokenizer.from_pretrained(teacher_path).get_vocab() != AutoTokenizer.from_pretrained(other_path).get_vocab():
        raise ConfigError(f"{field}: tokenizer differs from the teacher's (same size, different tokens)")


def storage_root(cfg: DistillConfig) -> str:
    return str(Path(cfg.train.storage_path or default_cache_dir() / "runs").expanduser().resolve())


def fit_student(cfg: DistillConfig, name: str, loop_cfg: dict) -> Path:
    """Run the TorchTrainer; return the directory of its final checkpoint (resumes a same-named run)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raykd.train.loop import train_loop_per_worker

    tc = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker={"CPU": tc.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name, storage_path=storage_root(cfg), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} reported no checkpoint")
    return Path(result.checkpoint.path)


def export_student(checkpoint_dir: Path, tokenizer, out_dir: Path) -> Path:
    """Copy the final checkpoint into a loadable HF directory (weights + config + tokenizer), atomically."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        if (checkpoint_dir / f).exists():
            shutil.copy2(checkpoint_dir / f, tmp / f)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def student_init_ref(cfg: DistillConfig, teacher_path: str):
    """The student's starting weights in the object store, so every worker (on any node) starts identical."""
    import ray
    from transformers import AutoModelForCausalLM

    from raykd.models import build_student, count_parameters

    if cfg.student.path is not None:
        student = AutoModelForCausalLM.from_pretrained(cfg.student.path)
    else:
        student, _ = build_student(teacher_path, cfg.student, cfg.seed)
    state = {k: v.detach().cpu().numpy() for k, v in student.state_dict().items()}
    return ray.put((student.config, state)), count_parameters(student)


@dataclass
class Trained:
    handle: Any  # DeploymentHandle of the teacher app (still running)
    student_dir: Path  # exported HF directory of the trained student
    loop_cfg: dict  # the Train loop config it ran with (reused for the baseline)


def train_in_run(cfg: DistillConfig, prep: Prepared, run_id: str, uri: str, train_name: str | None = None) -> Trained:
    """Deploy the teacher, train the student into MLflow run `run_id`, export it. Ray must be up.

    `train_name` names the Ray Train run (its checkpoints); default `cfg.run_name`. A second call with the
    same name and storage path resumes from the last checkpoint (raykd/pipeline.py and sweeps reuse this).
    The student is written to `<output_dir>/<run_name>/student` and logged as the run's `student/` artifact.
    """
    import mlflow
    import ray

    from raykd.teacher.service import launch_teacher

    tc = cfg.train
    student_ref, student_params = student_init_ref(cfg, prep.teacher_path)
    say(f"deploying teacher ({cfg.teacher.backend}, {cfg.teacher.num_replicas} replica(s))")
    handle = launch_teacher(cfg.teacher, prep.teacher_path, prep.fingerprint)
    info = handle.info.remote().result()
    check_teacher_info(cfg, info, student_vocab=ray.get(student_ref)[0].vocab_size)
    tokens, weights = prep.train, prep.train_weights
    if cfg.seqkd.enabled:  # sequence-level KD: train on the teacher's continuations of the data's prompts
        from raykd.seqkd import teacher_sequences

        tokens, weights = teacher_sequences(handle, tokens, weights, cfg.seqkd, say)
    tokens_ref = ray.put(tokens)
    loop_cfg = dict(cfg=cfg.model_dump(), tokens_ref=tokens_ref, student_ref=student_ref,
                    run_id=run_id, tracking_uri=uri, alpha_only_hard=False,
                    weights_ref=None if weights is None else ray.put(weights))
    say(f"training student ({student_params:,} params) on {tc.num_workers} worker(s), {tc.max_steps} steps")
    ckpt = fit_student(cfg, train_name or cfg.run_name, loop_cfg)
    student_dir = export_student(ckpt, prep.tokenizer, Path(cfg.output_dir) / cfg.run_name / "student")
    mlflow.log_artifacts(str(student_dir), "student", run_id=run_id)
    return Trained(handle, student_dir, loop_cfg)


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    import mlflow

    from raykd.cluster import init_ray, shutdown_ray
    from raykd.tracking import resolve_tracking_uri, tracked_run

    prep = prepare(cfg)
    say(f"teacher {prep.teacher_path}; {len(prep.train)} train / {len(prep.val)} held-out sequences of {cfg.data.seq_len}")
    uri = resolve_tracking_uri(cfg.mlflow)
    tc = cfg.train
    started = False
    params = flatten(cfg)
    params["teacher.resolved_path"] = prep.teacher_path
    with tracked_run(uri, cfg.mlflow.experiment, cfg.run_name, params, {"raykd.job": "distill"}) as run_id:
        try:
            started = init_ray(cfg.teacher.num_replicas * cfg.teacher.num_cpus + tc.num_workers * tc.cpus_per_worker)
            trained = train_in_run(cfg, prep, run_id, uri)
            handle, student_dir, loop_cfg = trained.handle, trained.student_dir, trained.loop_cfg
            out_root = Path(cfg.output_dir) / cfg.run_name

            dirs = {"kd student": student_dir}
            if cfg.eval.baseline:
                base_cfg = cfg.model_copy(deep=True)
                base_cfg.loss.alpha = 0.0
                base_cfg.seqkd.enabled = False  # the baseline learns from the data, not from teacher text
                with tracked_run(uri, cfg.mlflow.experiment, f"{cfg.run_name}-hard-only", flatten(base_cfg),
                                 {"raykd.job": "distill-baseline"}, parent_run_id=run_id) as base_id:
                    say("training the hard-label-only student (same budget, seed and initialisation)")
                    base_loop = dict(loop_cfg, cfg=base_cfg.model_dump(), run_id=base_id, alpha_only_hard=True)
                    if cfg.seqkd.enabled:
                        from raykd.seqkd import data_refs

                        base_loop.update(data_refs(prep.train, prep.train_weights))
                    base_ckpt = fit_student(base_cfg, f"{cfg.run_name}-hard-only", base_loop)
                    dirs["hard-label student"] = export_student(base_ckpt, prep.tokenizer, out_root / "student-hard-only")

            runs = {"kd": run_id, **({"hard-only": base_id} if cfg.eval.baseline else {})}
            with tempfile.TemporaryDirectory() as tmp:
                from raykd.plots import plot_histories

                png = plot_histories(uri, runs, ["loss_hard", "loss_soft", "teacher_wait_fraction"],
                                     Path(tmp) / "training_curves.png", cfg.run_name)
                mlflow.log_artifact(str(png), run_id=run_id)

            say("evaluating on held-out text")
            table, rows = evaluate_all(cfg, prep, handle, dirs)
            print(table, flush=True)
            metrics = {}
            for row in rows:
                metrics.update(row.as_metrics("eval_" + row.model.replace(" ", "_").replace("-", "_")))
            mlflow.log_metrics(metrics, run_id=run_id)
            mlflow.log_text(table, "eval_table.txt", run_id=run_id)
            return {"run_id": run_id, "student_dir": str(student_dir), "rows": rows, "table": table}
        finally:
            shutdown_ray(started)


def check_teacher_info(cfg: DistillConfig, info, student_vocab: int) -> None:
    if info.vocab_size != student_vocab:
        raise ConfigError(f"teacher vocab_size {info.vocab_size} differs from the student's {student_vocab}")
    if cfg.loss.top_k > info.max_top_k:
        raise ConfigError(f"loss.top_k={cfg.loss.top_k} exceeds the teacher's max_top_k={info.max_top_k}")
    if cfg.data.seq_len > info.max_model_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the teacher's max_model_len={info.max_model_len}")


def evaluate_all(cfg: DistillConfig, prep: Prepared, handle, student_dirs: dict[str, Path]):
    from raykd.evaluate import format_table, student_row, teacher_row

    val = prep.val[: cfg.eval.max_sequences]
    signals = handle.score.remote(list(val), 1).result()
    prompts = [row[:16] for row in prep.val[: cfg.eval.gen_prompts]]
    gen = handle.generate.remote(prompts, cfg.eval.gen_tokens).result()
    t_params = teacher_param_count(prep.teacher_path)
    rows = [teacher_row(signals, t_params, gen.tokens_per_second)]
    top1 = np.asarray(signals.topk_ids[:, 0])
    for name, d in student_dirs.items():
        rows.append(student_row(name, str(d), val, top1, prompts, cfg.eval.gen_tokens))
    return format_table(rows), rows


def teacher_param_count(path: str) -> int:
    """Parameter count from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), "np") as fh:
            for key in fh.keys():
                total += int(np.prod(fh.get_slice(key).get_shape()))
    return total
