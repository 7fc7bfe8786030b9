"""The per-worker training loop that Ray Train's `TorchTrainer` runs on each of N workers (DDP).

Each worker owns a deterministic shard of every global batch, streams the teacher's signals for its
shard from the Serve deployment (bounded window in flight), takes a student step on the loss of
raykd/objective.py (default `alpha * T^2 * KL + (1 - alpha) * CE`), and every `checkpoint_every` steps
reports a checkpoint (`model.safetensors` + `config.json`, `optimizer.pt`, `state.json`, and
`objective.pt` when the loss has learnable parts). A re-run with the same run name
and storage path gets that checkpoint back from Ray Train and resumes at the same step, with the same
data order. Rank 0 logs metrics to the MLflow run given in the loop config.

Loop config keys (built by raykd/distill.py): cfg (DistillConfig dict), tokens_ref (ObjectRef of
`(N, L)` int32 train blocks), student_ref (ObjectRef of (HF config, state dict)), run_id, tracking_uri,
alpha_only_hard (bool: train without the teacher), weights_ref (optional ObjectRef of `(N, L)` float32
per-token sample weights). Sweeps (raykd/sweep_trial.py) add: val_ref (optional ObjectRef of `(M, L)` int32
held-out blocks: every checkpoint report then carries `val_loss`, and `loss_hard`/`loss_soft` of the step)
and init_checkpoint (optional directory to start from when Ray Train has no checkpoint of this run: a
Train V2 run cannot be handed one otherwise).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raykd.config import DistillConfig



def global_batch_indices(n: int, batch: int, world: int, rank: int, seed: int, start_step: int) -> Iterator[np.ndarray]:
    """Rows of this worker's shard for steps start_step, start_step+1, ...: seeded per-epoch permutations."""
    perms: dict[int, np.ndarray] = {}

    def perm(epoch: int) -> np.ndarray:
        if epoch not in perms:
            if len(perms) > 2:
                perms.pop(min(perms))  # a batch spans at most two epochs
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        return perms[epoch]

    step = start_step
    while True:
        first = (step * world + rank) * batch
        yield np.array([perm(pos // n)[pos % n] for pos in range(first, first + batch)], np.int64)
        step += 1


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def save_checkpoint(directory: Path, model, optimizer, scheduler, step: int, objective=None) -> None:
    import torch

    model.save_pretrained(directory, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / "optimizer.pt")
    if objective is not None:  # learnable loss parts (projections, discriminator): raykd/objective.py
        objective.save(directory)
    (directory / "state.json").write_text(json.dumps({"step": step}))


def load_checkpoint(directory: Path, model, optimizer, scheduler, objective=None) -> int:
    import torch
    from safetensors.torch import load_model

    load_model(model, directory / "model.safetensors")
    state = torch.load(directory / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if objective is not None:
        objective.load(directory)
    return int(json.loads((directory / "state.json").read_text())["step"])


def heldout_loss(model, val: np.ndarray, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over every position of `val (M, L)`: the number raykd/evaluate.py's
    `student_row` reports as held-out loss, computed in-process (no export) for sweep trials."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(val), batch_size):
            ids = torch.tensor(val[i : i + batch_size], dtype=torch.long)  # (b, L); a copy: object-store arrays are read-only
            logits = model(input_ids=ids).logits[:, :-1].float()  # (b, L-1, V)
            labels = ids[:, 1:].reshape(-1)
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="sum").item()
            count += labels.numel()
    model.train(was_training)
    return total / max(1, count)


def train_loop_per_worker(loop_cfg: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from raykd.objective import Objective, needs_teacher
    from raykd.signal_cache import signal_source
    from raykd.train.chunked_objective import CHUNKED_FORWARD_KWARGS, chunked_objective_loss
    from raykd.teacher.service import teacher_handle
    from raykd.train.teacher_client import SignalPrefetcher
    from raykd.tracking import MetricLogger

    cfg = DistillConfig.model_validate(loop_cfg["cfg"])
    tc, lc = cfg.train, cfg.loss
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(tc.torch_threads or max(1, int(tc.cpus_per_worker)))
    torch.manual_seed(cfg.seed)

    tokens: np.ndarray = ray.get(loop_cfg["tokens_ref"])
    s_config, s_state = ray.get(loop_cfg["student_ref"])
    model = AutoModelForCausalLM.from_config(s_config, dtype=torch.float32)
    model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in s_state.items()})
    # Every loss term (divergence, schedules, dynamic T, feature/attention/adversarial terms): raykd/objective.py.
    use_teacher = not loop_cfg["alpha_only_hard"] and needs_teacher(cfg)
    objective = Objective(cfg, s_config, use_teacher=use_teacher, world=world, rank=rank)
    objective.prepare_student(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.warmup_steps, tc.max_steps))

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_cfg.get("init_checkpoint"):  # a sweep trial restored by Tune (resume, PBT)
        checkpoint = ray.train.Checkpoint(loop_cfg["init_checkpoint"])
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start_step = load_checkpoint(Path(d), model, optimizer, scheduler, objective)
        if rank == 0:
            print(f"[raykd] resuming from step {start_step} ({checkpoint.path})", file=sys.__stderr__, flush=True)
    raw_model = model
    model = ray.train.torch.prepare_model(model)
    device = next(model.parameters()).device

    submit = source = None
    if use_teacher:
        handle = teacher_handle(cfg.teacher.app_name)
        extras = objective.teacher_extras()  # hidden states / attention maps for those terms, else None
        # From the cache, else offline shards, else the live teacher, packed on the wire (raykd/signal_cache.py).
        source = signal_source(cfg, handle, extras)
        submit = source.submit
    chunk = cfg.signals.loss_chunk_size  # memory-lean loss: no (B, L, V) logits (raykd/train/chunked_objective.py)
    rows_iter = global_batch_indices(len(tokens), tc.batch_size, world, rank, cfg.seed, start_step)
    # Per-token sample weights (data.weight_field): the same rows as the batches, from a second identical iterator.
    token_weights = ray.get(loop_cfg["weights_ref"]) if loop_cfg.get("weights_ref") is not None else None
    weight_rows = global_batch_indices(len(tokens), tc.batch_size, world, rank, cfg.seed, start_step)
    batches = (tokens[next(rows_iter)] for _ in range(start_step, tc.max_steps))
    prefetch = SignalPrefetcher(submit, batches, tc.max_inflight)

    logger = MetricLogger(loop_cfg.get("tracking_uri"), loop_cfg.get("run_id")) if rank == 0 else None
    window: dict[str, float] = {}
    window_steps, window_time, window_tokens = 0, 0.0, 0
    step_start = time.perf_counter()
    for step in range(start_step, tc.max_steps):
        wait_before = prefetch.wait_seconds
        batch, signals = next(prefetch)
        ids = torch.as_tensor(batch, dtype=torch.long, device=device)  # (B, L)
        forward_kwargs = {**objective.model_kwargs(), **(CHUNKED_FORWARD_KWARGS if chunk else {})}
        out = model(input_ids=ids, **forward_kwargs)  # logits (B, L, V) (+ hidden states, attentions); none if chunked
        weights = token_weights[next(weight_rows)] if token_weights is not None else None  # (B, L)
        if chunk:
            lm_head = raw_model.get_output_embeddings().weight
            loss, step_metrics = chunked_objective_loss(objective, lm_head, step, out, ids, signals, weights, chunk)
        else:
            loss, step_metrics = objective.compute_loss(step, out, ids, signals, weights)
        optimizer.zero_grad(set_to_none=True)
        objective.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        objective.step()
        scheduler.step()

        now = time.perf_counter()
        step_time, step_start = now - step_start, now
        step_metrics["teacher_wait_fraction"] = (prefetch.wait_seconds - wait_before) / step_time
        for k, v in step_metrics.items():
            window[k] = window.get(k, 0.0) + v
        window_steps, window_time, window_tokens = window_steps + 1, window_time + step_time, window_tokens + ids.numel()

        done = step + 1 == tc.max_steps
        if (step + 1) % tc.log_every == 0 or done:
            # Average the window over workers so the logged loss is the global batch's, not rank 0's shard.
            keys = sorted(window)  # the same on every worker: the objective's terms come from the shared config
            packed = torch.tensor([window[k] / window_steps for k in keys] + [window_tokens / window_time])
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(packed)
                packed[: len(keys)] /= world
            metrics = dict(zip(keys, packed.tolist()[: len(keys)]))
            metrics.update(student_tokens_per_s=float(packed[-1]), lr=scheduler.get_last_lr()[0])
            if source is not None:  # cumulative signal_cache_hits / signal_cache_misses over all workers
                metrics.update(source.metrics())
            objective.log_step_values(logger)  # alpha and temperature of every step (schedules)
            if logger is not None:
                logger.log(metrics, step + 1)
                eta = (tc.max_steps - step - 1) * window_time / window_steps
                # sys.__stderr__: Ray Train patches print() and would tee the line twice.
                print(
                    f"[raykd] step {step + 1}/{tc.max_steps} loss {metrics['loss']:.4f} "
                    f"(soft {metrics['loss_soft']:.4f} hard {metrics['loss_hard']:.4f}) "
                    f"{metrics['student_tokens_per_s']:.0f} tok/s teacher_wait {metrics['teacher_wait_fraction']:.1%} "
                    f"eta {eta:.0f}s",
                    file=sys.__stderr__, flush=True,
                )
            window = {}
            window_steps, window_time, window_tokens = 0, 0.0, 0

        if (step + 1) % tc.checkpoint_every == 0 or done:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_checkpoint(Path(tmp), raw_model, optimizer, scheduler, step + 1, objective)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                report = {"step": step + 1, "loss": float(loss.item())}
                if rank == 0 and loop_cfg.get("val_ref") is not None:  # what a sweep ranks trials on
                    report.update({k: float(step_metrics[k]) for k in ("loss_hard", "loss_soft") if k in step_metrics})
                    report["val_loss"] = heldout_loss(raw_model, ray.get(loop_cfg["val_ref"]))
                ray.train.report(report, checkpoint=ckpt)
    objective.finish(logger)  # figures (dynamic-temperature histogram, adversarial curves) on rank 0
    if logger is not None:
        logger.close()
