"""Driver side of training: the student's first weights, the Ray Train run, and the exported student.

    trained = train_in_run(cfg, prep, run_id, uri)          # data ingested, teacher deployed, student trained
    trained.student_dir, trained.handle, trained.loop        # HF directory, the teacher's handle, the LoopConfig
    trained.data                                             # the BlockData it trained on (raykd/data/ingest.py)

`train_in_run` is what `raykd distill`, each pipeline stage and (through `make_trainer`) each sweep trial
run. Ray must be up. Checkpoints go to `<train.storage_path>/<name>/`; a second call with the same name and
storage path resumes from the last one (Ray Train restores by run name).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.config import DistillConfig, default_cache_dir
from raykd.console import say
from raykd.files import atomic_dir
from raykd.train.loop_config import LoopConfig
from raykd.train.prepare import Prepared, check_teacher_info


def storage_root(cfg: DistillConfig) -> str:
    return str(Path(cfg.train.storage_path or default_cache_dir() / "runs").expanduser().resolve())


def make_trainer(cfg: DistillConfig, name: str, storage_path: str, loop: LoopConfig, data,
                 callbacks: list | None = None):
    """The TorchTrainer of one student run: `train.num_workers` workers running raykd/train/loop.py, each
    reading its batches of `data` (a BlockData) through `ray.train.get_dataset_shard` (raykd/train/batches.py)."""
    import dataclasses

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raykd.train.batches import TRACE_ENV, plan_windows, resume_point, train_datasets
    from raykd.train.loop import train_loop_per_worker

    tc = cfg.train
    first, resume_from = resume_point(storage_path, name, loop.init_checkpoint)
    first = min(first, tc.max_steps)
    if resume_from:  # a whole checkpoint Ray Train's snapshot missed: the loop loads it when Train has none
        loop = dataclasses.replace(loop, init_checkpoint=resume_from)
    step_blocks = tc.batch_size * tc.grad_accum_steps  # one worker's blocks per optimizer step
    windows = plan_windows(data.n_train, data.seq_len, step_blocks, tc.num_workers, first, tc.max_steps)
    datasets, dataset_config = train_datasets(data, cfg, windows)
    # The driver's RAYKD_BATCH_TRACE reaches the workers with the loop config, also on a cluster joined in-process.
    loop = dataclasses.replace(loop, data_windows=tuple(windows), batch_trace=os.environ.get(TRACE_ENV))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.to_train_loop_config(),
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker={"CPU": tc.cpus_per_worker}
        ),
        # A lost worker restarts the group from the last checkpoint (train.max_failures); the loop resumes there
        # with the same data order (raykd/train/batches.py), so no sample is lost or doubled.
        run_config=RunConfig(name=name, storage_path=storage_path, callbacks=callbacks or [],
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=tc.max_failures)),
        datasets=datasets or None,
        dataset_config=dataset_config,
    )


def fit_student(cfg: DistillConfig, name: str, loop: LoopConfig, data, label: str | None = None) -> Path:
    """Run the TorchTrainer on `data` (a BlockData); return the directory of its final checkpoint (resumes a
    same-named run).

    Rank 0's progress is drawn as one bar, `label` (default `train <name>`), on the driver's console.
    """
    from raykd.train.progress import TrainProgress

    with TrainProgress(label or f"train {name}", cfg.train.max_steps) as progress:
        loop = dataclasses.replace(loop, progress=progress.queue)
        result = make_trainer(cfg, name, storage_root(cfg), loop, data).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} reported no checkpoint")
    return Path(result.checkpoint.path)


def export_student(checkpoint_dir: Path, tokenizer, out_dir: Path) -> Path:
    """Copy the final checkpoint into a loadable HF directory (weights + config + tokenizer + checksums.rank0.json),
    atomically (a temporary directory beside `out_dir`, renamed).

    The final checkpoint holds HF safetensors whatever train.strategy (raykd/train/checkpoint.py: FSDP gathers
    them onto rank 0 at the last step): `model.safetensors`, or shards with `model.safetensors.index.json`.
    """
    from raykd.train.checkpoint import WEIGHTS_INDEX
    from raykd.train.integrity import write_checksums

    weights = sorted(checkpoint_dir.glob("model*.safetensors"))
    if not weights:
        raise RuntimeError(f"checkpoint {checkpoint_dir} holds no student weights (model*.safetensors)")
    with atomic_dir(out_dir) as tmp:
        for f in ("config.json", "generation_config.json", WEIGHTS_INDEX, *(w.name for w in weights)):
            if (checkpoint_dir / f).exists():
                shutil.copy2(checkpoint_dir / f, tmp / f)
        tokenizer.save_pretrained(tmp)
        write_checksums(tmp)  # sizes and sha256 of the student's files (raykd/train/integrity.py)
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
    loop: LoopConfig  # what the Train workers ran with (reused for the baseline)
    data: Any  # BlockData the student trained on (sequence-level KD: the teacher's text)
    source_data: Any  # BlockData of data.source (its held-out blocks are the evaluation's)


def log_teacher_scoring(info, run_id: str, uri: str) -> None:
    """Say, and tag the MLflow run with, how the teacher scores (vLLM: engine top-k, or the fallback and why)."""
    from mlflow.tracking import MlflowClient

    note = f" ({info.scoring_note})" if info.scoring == "prompt_logprobs" and info.scoring_note else ""
    say(f"teacher scoring: {info.scoring}{note}")
    tags = {"raykd.teacher_scoring": info.scoring, "raykd.teacher_scoring_note": info.scoring_note[:5000]}
    client = MlflowClient(uri)
    for key, value in tags.items():
        if value:
            client.set_tag(run_id, key, value)


def train_in_run(cfg: DistillConfig, prep: Prepared, run_id: str, uri: str, train_name: str | None = None,
                 data=None) -> Trained:
    """Ingest the data (unless `data`, a BlockData, is given), deploy the teacher, train the student into MLflow
    run `run_id`, export it. Ray must be up.

    `train_name` names the Ray Train run (its checkpoints); default `cfg.run_name`. The student is written
    to `<output_dir>/<run_name>/student` and logged as the run's `student/` artifact.
    """
    import mlflow
    import ray

    from raykd.teacher.service import launch_teacher
    from raykd.train.prepare import check_offline_coverage, ingest_data

    tc = cfg.train
    if data is None:
        data = ingest_data(cfg, prep)
        mlflow.log_metrics(data.metrics(), run_id=run_id)
    if cfg.signals.offline_path:
        check_offline_coverage(cfg, prep, data)
    student_ref, student_params = student_init_ref(cfg, prep.teacher_path)
    say(f"deploying teacher ({cfg.teacher.backend}, {cfg.teacher.num_replicas} replica(s))")
    handle = launch_teacher(cfg.teacher, prep.teacher_path, prep.fingerprint)
    info = handle.info.remote().result()
    check_teacher_info(cfg, info, student_vocab=ray.get(student_ref)[0].vocab_size)
    log_teacher_scoring(info, run_id, uri)
    if cfg.teachers is not None and len(cfg.teachers.apps) > 1:  # the other teacher apps (raykd/train/teachers.py)
        from raykd.train.teachers import launch_teachers

        say(f"deploying teachers {', '.join(cfg.teachers.names[1:])}")
        for other in launch_teachers(cfg, list(prep.teachers))[1:]:
            check_teacher_info(cfg, other.info.remote().result(), student_vocab=ray.get(student_ref)[0].vocab_size)
    op = cfg.loss.on_policy
    if op.enabled and op.engine == "vllm":  # the student rollout deployment (raykd/train/rollout_engine.py)
        from raykd.train.rollout_engine import launch_rollout_engine

        say("deploying the student rollout engine (vllm)")
        launch_rollout_engine(cfg, student_ref, Path(cfg.output_dir) / cfg.run_name / "rollout-student")
    train_data = data
    if cfg.seqkd.enabled:  # sequence-level KD: train on the teacher's continuations of the data's prompts
        from raykd.data.ingest import BlockData
        from raykd.train.seqkd import teacher_sequences

        prompts = data.take(0, min(data.n_train, cfg.seqkd.max_prompts or data.n_train))
        train_data = BlockData.from_arrays(teacher_sequences(handle, prompts, cfg.seqkd))
    routes = getattr(train_data, "routes", None)  # teachers.routing: each block's teacher
    loop = LoopConfig(cfg, student_ref=student_ref, run_id=run_id, tracking_uri=uri,
                      block_routes=ray.put(routes) if routes is not None else None)
    how = f"{tc.strategy}, {tc.precision}" + (f", {tc.grad_accum_steps} micro-batches per step" if tc.grad_accum_steps > 1
                                              else "") + (", activation checkpointing" if tc.activation_checkpointing else "")
    say(f"training student ({student_params:,} params) on {tc.num_workers} worker(s) ({how}), {tc.max_steps} steps")
    ckpt = fit_student(cfg, train_name or cfg.run_name, loop, train_data, label="train student")
    student_dir = export_student(ckpt, prep.tokenizer, Path(cfg.output_dir) / cfg.run_name / "student")
    mlflow.log_artifacts(str(student_dir), "student", run_id=run_id)
    return Trained(handle, student_dir, loop, train_data, data)
