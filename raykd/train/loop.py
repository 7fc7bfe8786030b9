"""The per-worker training loop that Ray Train's `TorchTrainer` runs on each of N workers (DDP).

Each worker owns a deterministic shard of every global batch, streams the teacher's signals for its
shard from the Serve deployment (bounded window in flight), takes a student step on
`alpha * T^2 * KL + (1 - alpha) * CE`, and every `checkpoint_every` steps reports a checkpoint
(`model.safetensors` + `config.json`, `optimizer.pt`, `state.json`). A re-run with the same run name
and storage path gets that checkpoint back from Ray Train and resumes at the same step, with the same
data order. Rank 0 logs metrics to the MLflow run given in the loop config.

Loop config keys (built by raykd/distill.py): cfg (DistillConfig dict), tokens_ref (ObjectRef of
`(N, L)` int32 train blocks), student_ref (ObjectRef of (HF config, state dict)), run_id, tracking_uri,
alpha_only_hard (bool: train without the teacher).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raykd.config import DistillConfig

METRIC_KEYS = ("loss", "loss_soft", "loss_hard", "teacher_wait_fraction")


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


def save_checkpoint(directory: Path, model, optimizer, scheduler, step: int) -> None:
    import torch

    model.save_pretrained(directory, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps({"step": step}))


def load_checkpoint(directory: Path, model, optimizer, scheduler) -> int:
    import torch
    from safetensors.torch import load_model

    load_model(model, directory / "model.safetensors")
    state = torch.load(directory / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(json.loads((directory / "state.json").read_text())["step"])


def train_loop_per_worker(loop_cfg: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from raykd.losses import distill_loss
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.warmup_steps, tc.max_steps))

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start_step = load_checkpoint(Path(d), model, optimizer, scheduler)
    raw_model = model
    model = ray.train.torch.prepare_model(model)
    device = next(model.parameters()).device

    use_teacher = not loop_cfg["alpha_only_hard"] and lc.alpha > 0
    submit = None
    if use_teacher:
        handle = teacher_handle(cfg.teacher.app_name)
        submit = lambda batch: handle.score.remote(list(batch), lc.top_k)  # noqa: E731
    rows_iter = global_batch_indices(len(tokens), tc.batch_size, world, rank, cfg.seed, start_step)
    batches = (tokens[next(rows_iter)] for _ in range(start_step, tc.max_steps))
    prefetch = SignalPrefetcher(submit, batches, tc.max_inflight)

    logger = MetricLogger(loop_cfg.get("tracking_uri"), loop_cfg.get("run_id")) if rank == 0 else None
    window = {k: 0.0 for k in METRIC_KEYS}
    window_steps, window_time, window_tokens = 0, 0.0, 0
    step_start = time.perf_counter()
    for step in range(start_step, tc.max_steps):
        wait_before = prefetch.wait_seconds
        batch, signals = next(prefetch)
        ids = torch.as_tensor(batch, dtype=torch.long, device=device)  # (B, L)
        logits = model(input_ids=ids).logits[:, :-1]  # (B, L-1, V)
        flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
        labels = ids[:, 1:].reshape(-1)
        kwargs = {}
        if signals is not None:
            kwargs = dict(
                topk_ids=torch.as_tensor(np.array(signals.topk_ids), device=device),
                topk_logprobs=torch.as_tensor(np.array(signals.topk_logprobs), device=device),
                tail_logprob=torch.as_tensor(np.array(signals.tail_logprob), device=device),
                tail=lc.tail,
            )
        alpha = lc.alpha if use_teacher else 0.0
        loss, loss_soft, loss_hard = distill_loss(flat, labels, alpha=alpha, temperature=lc.temperature, **kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()

        now = time.perf_counter()
        step_time, step_start = now - step_start, now
        values = (loss.item(), loss_soft.item(), loss_hard.item(), (prefetch.wait_seconds - wait_before) / step_time)
        for k, v in zip(METRIC_KEYS, values):
            window[k] += v
        window_steps, window_time, window_tokens = window_steps + 1, window_time + step_time, window_tokens + ids.numel()

        done = step + 1 == tc.max_steps
        if (step + 1) % tc.log_every == 0 or done:
            # Average the window over workers so the logged loss is the global batch's, not rank 0's shard.
            packed = torch.tensor([window[k] / window_steps for k in METRIC_KEYS] + [window_tokens / window_time])
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(packed)
                packed[: len(METRIC_KEYS)] /= world
            metrics = dict(zip(METRIC_KEYS, packed.tolist()[: len(METRIC_KEYS)]))
            metrics.update(
                student_tokens_per_s=float(packed[-1]), temperature=lc.temperature, alpha=alpha,
                lr=scheduler.get_last_lr()[0],
            )
            if logger is not None:
                logger.log(metrics, step + 1)
                print(
                    f"[raykd] step {step + 1}/{tc.max_steps} loss {metrics['loss']:.4f} "
                    f"(soft {metrics['loss_soft']:.4f} hard {metrics['loss_hard']:.4f}) "
                    f"{metrics['student_tokens_per_s']:.0f} tok/s teacher_wait {metrics['teacher_wait_fraction']:.1%}",
                    flush=True,
                )
            window = {k: 0.0 for k in METRIC_KEYS}
            window_steps, window_time, window_tokens = 0, 0.0, 0

        if (step + 1) % tc.checkpoint_every == 0 or done:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_checkpoint(Path(tmp), raw_model, optimizer, scheduler, step + 1)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({"step": step + 1, "loss": float(loss.item())}, checkpoint=ckpt)
    if logger is not None:
        logger.close()
