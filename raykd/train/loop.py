"""Worker side: the training loop that Ray Train's `TorchTrainer` runs on each of N workers.

    TorchTrainer(train_loop_per_worker, train_loop_config=LoopConfig(...).to_train_loop_config(), ...)

Each worker reads its deterministic shard of every global batch from Ray Data (raykd/train/batches.py:
`ray.train.get_dataset_shard`, the seeded order of raykd/data/order.py), streams the teacher's signals for its
shard (raykd/train/signal_source.py: cache, offline shards or the Serve deployment; raykd/train/prefetch.py:
a bounded window in flight; on `loss.on_policy` steps the batch is the student's own rollouts graded by the
teacher instead: raykd/train/rollouts.py), takes a student step on the loss of raykd/loss/objective.py (default
`alpha * T^2 * KL + (1 - alpha) * CE`) over `train.grad_accum_steps` micro-batches (raykd/train/student.py:
DDP or FSDP2, fp32 or bf16, activation checkpointing), and every `checkpoint_every` steps reports a
checkpoint (raykd/train/checkpoint.py; under FSDP every rank reports its shards). A re-run with the same run name and storage path gets that checkpoint back
from Ray Train and resumes at the same step, with the same data order. Rank 0 logs metrics to the MLflow
run given in the loop config, and sends its progress (step, loss, tokens/s, teacher wait, ETA) to the driver's
console through the loop config's queue (raykd/train/progress.py).

What the driver sends is a `LoopConfig` (raykd/train/loop_config.py). Sweeps (raykd/sweep/trial.py) also set
`val_ref` (every checkpoint report then carries `val_loss`, and `loss_hard`/`loss_soft` of the step) and
`init_checkpoint` (a directory to start from when Ray Train has no checkpoint of this run: a Train V2 run
cannot be handed one otherwise).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raykd.console import duration, say
from raykd.loss.schedules import lr_lambda  # noqa: F401  (the student's LR schedule; re-exported)
from raykd.train.loop_config import LoopConfig
from raykd.train.progress import describe, post, step_event




def _tell(loop: LoopConfig, msg: str) -> None:
    """A line for the person running the job: through the driver's progress queue, else into the worker's log
    (sys.__stderr__: Ray Train patches print() and would tee the line twice)."""
    if not post(loop.progress, {"say": msg}):
        say(msg, stream=sys.__stderr__)


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from raykd.eval.heldout import heldout_loss
    from raykd.loss.objective import Objective, needs_teacher, off_policy_needs_teacher
    from raykd.plots import objective_figures
    from raykd.teacher.service import teacher_handle
    from raykd.tracking import MetricLogger
    from raykd.train.batches import step_batches
    from raykd.train.integrity import whole_checkpoint
    from raykd.train.prefetch import SignalPrefetcher
    from raykd.train.teachers import worker_signal_source
    from raykd.train.student import MicroBatch, StudentTrainer

    loop = LoopConfig.from_train_loop_config(config)
    cfg = loop.cfg
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(tc.torch_threads or max(1, int(tc.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()  # cuda:<local rank> with use_gpu (NCCL), else cpu (gloo)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    s_config, s_state = ray.get(loop.student_ref)  # read-only arrays in the object store, one copy per node
    # Every loss term (divergence, schedules, dynamic T, feature/attention/adversarial terms): raykd/loss/.
    use_teacher = not loop.alpha_only_hard and needs_teacher(cfg)
    objective = Objective(cfg, s_config, use_teacher=use_teacher, world=world, rank=rank)
    # The student placed for train.strategy / precision / activation_checkpointing, AdamW, its LR schedule.
    trainer = StudentTrainer(cfg, s_config, s_state, objective, device=device, rank=rank, world=world)
    del s_state

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop.init_checkpoint:  # a sweep trial restored by Tune (resume, PBT)
        checkpoint = ray.train.Checkpoint(loop.init_checkpoint)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            # A damaged latest checkpoint (checksums differ) is said in one line and the previous one used.
            start_step = trainer.load(whole_checkpoint(Path(d), lambda msg: rank == 0 and _tell(loop, msg)))
        if rank == 0:
            _tell(loop, f"resuming from step {start_step} ({checkpoint.path})")

    submit = source = None
    if use_teacher:
        handle = teacher_handle(cfg.teacher.app_name)
        extras = objective.teacher_extras()  # hidden states / attention maps for those terms, else None
        # From the cache, else offline shards, else the live teacher, packed on the wire; with several
        # teachers, routed per block or ensembled (raykd/train/teachers.py).
        source = worker_signal_source(cfg, handle, extras, loop.block_routes)
        submit = source.submit
        if cfg.loss.cross_tokenizer is not None:  # another tokenizer: the teacher scores its own tokens of the text
            from raykd.train.cross_signals import cross_submit
            from raykd.train.tokenizer_pair import TokenizerPair

            info = handle.info.remote().result()
            submit = cross_submit(TokenizerPair.load(info.model_path, cfg.student.path), submit, info.max_model_len,
                                  info.vocab_size)
    accum = tc.grad_accum_steps
    # This worker's blocks, step by step (ids, loss mask, sample weights), from its Ray Data shard: each step's
    # batch_size * grad_accum_steps blocks, split into micro-batches below (the same global batch for any split).
    batches = step_batches(list(loop.data_windows), tc.batch_size * accum, start_step, rank=rank,
                           trace_dir=loop.batch_trace)
    # Data batches are scored when their loss uses the teacher (on-policy with alpha 0: hard labels off-policy).
    step_submit = getattr(source, "submit_step", None) or (lambda b: submit(b.ids))
    data_submit = submit and off_policy_needs_teacher(cfg) and step_submit or None
    rollouts = None
    if use_teacher and cfg.loss.on_policy.enabled:  # on-policy steps: the student writes (raykd/train/rollouts.py)
        from raykd.train.rollouts import OnPolicyRollouts, teacher_score_fn

        engine = None
        if cfg.loss.on_policy.engine == "vllm":  # the student rollout deployment, synced to this step's weights
            from raykd.train.rollout_engine import VllmRolloutEngine, rollout_app_name

            engine = VllmRolloutEngine(teacher_handle(rollout_app_name(cfg)), rank, world)
            engine.sync(trainer.placed, start_step)
        rollouts = OnPolicyRollouts(cfg, trainer.placed.student, teacher_score_fn(handle), source.fingerprint,
                                    rank=rank, device=device, engine=engine)
        data_submit = rollouts.data_submit(data_submit, start_step)
    prefetch = SignalPrefetcher(data_submit, batches, tc.max_inflight)

    logger = MetricLogger(loop.tracking_uri, loop.run_id) if rank == 0 else None
    window: dict[str, float] = {}
    counts: dict[str, int] = {}  # steps that reported each metric (on- and off-policy steps report different terms)
    window_steps, window_time, window_tokens = 0, 0.0, 0
    step_start = time.perf_counter()
    for step in range(start_step, tc.max_steps):
        wait_before = prefetch.wait_seconds + (rollouts.wait_seconds if rollouts else 0.0)
        batch, signals = next(prefetch)  # StepBatch of this step's blocks, the teacher's signals of their rows
        on_policy = False
        if rollouts is not None:  # on an on-policy step: prompt + the student's continuation, graded by the teacher
            batch, signals, on_policy = rollouts.step_batch(step, batch, signals)
        micro = [MicroBatch(batch.ids, signals, batch.weight, batch.mask, on_policy)] if accum == 1 else [
            MicroBatch(batch.ids[rows], signals.take_sequences(rows.tolist()) if signals is not None else None,
                       batch.weight[rows] if batch.weight is not None else None, batch.mask[rows], on_policy)
            for rows in np.split(np.arange(len(batch.ids)), accum)]
        step_metrics = trainer.step(step, micro)
        if rollouts is not None:
            rollouts.after_step(step, trainer.placed)  # engine vllm: the weight sync every sync_every steps

        now = time.perf_counter()
        step_time, step_start = now - step_start, now
        waited = prefetch.wait_seconds + (rollouts.wait_seconds if rollouts else 0.0) - wait_before
        step_metrics["teacher_wait_fraction"] = waited / step_time
        for k, v in step_metrics.items():
            window[k] = window.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        window_steps, window_time = window_steps + 1, window_time + step_time
        window_tokens += sum(mb.ids.size for mb in micro)

        done = step + 1 == tc.max_steps
        if (step + 1) % tc.log_every == 0 or done:
            # Average the window over workers so the logged loss is the global batch's, not rank 0's shard.
            keys = sorted(window)  # the same on every worker: the objective's terms come from the shared config
            packed = torch.tensor([window[k] / counts[k] for k in keys] + [window_tokens / window_time],
                                  dtype=torch.float64, device=device)  # on the GPU under NCCL
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(packed)
                packed[: len(keys)] /= world
            metrics = dict(zip(keys, packed.tolist()[: len(keys)]))
            metrics.update(student_tokens_per_s=float(packed[-1]), lr=trainer.lr)
            if source is not None:  # cumulative signal_cache_hits / signal_cache_misses over all workers
                metrics.update(source.metrics())
            if rollouts is not None:  # on_policy_fraction, rollout_tokens_per_s, rollout_staleness, teacher wait
                metrics.update(rollouts.metrics())
            step_values = objective.pop_step_values()  # alpha and temperature of every step (schedules)
            if logger is not None:
                logger.log_per_step({s: {"alpha": a, "temperature": t} for s, a, t in step_values})
                logger.log(metrics, step + 1)
                eta = (tc.max_steps - step - 1) * window_time / window_steps
                if not post(loop.progress, step_event(step + 1, tc.max_steps, start_step, metrics, eta)):
                    say(f"step {step + 1}/{tc.max_steps} {describe(metrics)} eta {duration(eta)}", stream=sys.__stderr__)
            window, counts = {}, {}
            window_steps, window_time, window_tokens = 0, 0.0, 0

        if (step + 1) % tc.checkpoint_every == 0 or done:
            with tempfile.TemporaryDirectory() as tmp:
                # The last checkpoint also holds the student as HF safetensors (FSDP: gathered onto rank 0).
                trainer.save(Path(tmp), step + 1, export=done)
                fsdp = trainer.placed.fsdp  # every rank reports its own shards
                ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 or fsdp else None
                report = {"step": step + 1, "loss": float(step_metrics["loss"])}
                if loop.val_ref is not None and (rank == 0 or fsdp):  # what a sweep ranks trials on
                    val = ray.get(loop.val_ref)
                    val_loss = heldout_loss(trainer.placed.eval_model(), val.ids, mask=val.mask)[0]
                    report.update({k: float(step_metrics[k]) for k in ("loss_hard", "loss_soft") if k in step_metrics})
                    report["val_loss"] = val_loss
                ray.train.report(report, checkpoint=ckpt)
    if logger is not None:  # figures (dynamic-temperature histogram, adversarial curves) of rank 0's rows
        logger.log_per_step({s: {"alpha": a, "temperature": t} for s, a, t in objective.pop_step_values()})
        for name, fig in objective_figures(objective).items():
            logger.log_figure(fig, name)
        logger.close()
