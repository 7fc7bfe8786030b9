"""One worker's student: the placed model (raykd/train/parallel.py: DDP or FSDP2, fp32 or bf16, activation
checkpointing), AdamW with its LR schedule, the objective, and one optimizer step over micro-batches.

    trainer = StudentTrainer(cfg, s_config, s_state, objective, device=device, rank=rank, world=world)
    metrics = trainer.step(step, [MicroBatch(ids, signals, weights, loss_mask), ...])  # train.grad_accum_steps
    trainer.save(directory, step, export=done)   # every rank (raykd/train/checkpoint.py)
    step = trainer.load(directory)               # every rank, on resume

Runs inside a Ray Train worker (raykd/train/loop.py) or any process group (the equivalence tests,
benchmarks/student_scale.py): it needs torch.distributed initialised when world > 1, not Ray.

Normalisation by the global batch's tokens. Before the first backward of a step every worker counts the rows
its micro-batches train on (`objective.count_rows`: loss masks, seqkd prompts); one all-reduce gives the
global batch's count N. Each micro-batch's loss is its masked sum / (N / W) (`denominator`, reduced in
raykd/loss/divergences.py `reduce_rows`), the micro-batches' gradients add up, and DDP / FSDP average them
over the W workers: the step's gradient is that of (sum over the global batch) / N, however the batch is
split into micro-batches and workers. With one micro-batch whose count is N / W (no loss masks: the
fixed-length blocks of `raykd distill`) the loss is computed exactly as before this existed (a mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raykd.loss.objective import ADDITIVE_METRICS
from raykd.loss.schedules import lr_lambda
from raykd.train.parallel import PlacedStudent, bf16_autocast, place_student


@dataclass
class MicroBatch:
    ids: np.ndarray  # (B, L) token ids
    signals: Any = None  # TeacherSignals of these rows, or None (hard labels only)
    weights: np.ndarray | None = None  # (B, L) per-token sample weights
    loss_mask: np.ndarray | None = None  # (B, L) 1 where ids[b, t] is a label to learn; None: all
    on_policy: bool = False  # student-written rows (raykd/train/rollouts.py): the on-policy loss applies


def merge_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from its micro-batches': loss shares add up, the rest is averaged."""
    if len(parts) == 1:
        return parts[0]
    keys = {k for p in parts for k in p}
    return {k: sum(p.get(k, 0.0) for p in parts) / (1 if k in ADDITIVE_METRICS else len(parts)) for k in keys}


class StudentTrainer:
    def __init__(self, cfg: Any, s_config: Any, s_state: dict[str, np.ndarray], objective: Any, *,
                 device: torch.device, rank: int = 0, world: int = 1):
        from raykd.config.distill import loss_chunk
        from raykd.train.chunked_objective import CHUNKED_FORWARD_KWARGS

        self.cfg, self.tc, self.objective = cfg, cfg.train, objective
        self.device, self.rank, self.world = device, rank, world
        self.chunk = loss_chunk(cfg)  # memory-lean loss: no (B, L, V) logits (auto resolved)
        self.forward_kwargs = {**objective.model_kwargs(), **(CHUNKED_FORWARD_KWARGS if self.chunk else {})}
        # bf16 under DDP: autocast around the forward; under FSDP the MixedPrecisionPolicy casts instead.
        self.autocast = self.tc.precision == "bf16" and self.tc.strategy == "ddp"
        attn = "eager" if objective.attention_pairs else None  # attention maps need the eager kernel
        self.placed: PlacedStudent = place_student(s_config, s_state, self.tc, device, rank, world, self._forward_loss,
                                                   attn_implementation=attn)
        self.optimizer = torch.optim.AdamW(self.placed.student.parameters(), lr=self.tc.lr,
                                           weight_decay=self.tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.tc.warmup_steps,
                                                                                     self.tc.max_steps))

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all workers."""
        return self.tc.batch_size * self.tc.grad_accum_steps * self.world

    # ------------------------------------------------------------------ one step
    def _forward_loss(self, student, ids, *, step, signals, weights, loss_mask, denominator, on_policy=False):
        """The student's forward and the objective's loss: called inside the placed module's forward."""
        from raykd.train.chunked_objective import chunked_objective_loss

        with bf16_autocast(self.device, self.autocast):
            out = student(input_ids=ids, **self.forward_kwargs)  # logits (B, L, V) (+ extras); none if chunked
        if on_policy:  # the student wrote these tokens (config: no chunking, no feature terms with on-policy)
            return self.objective.compute_on_policy_loss(step, out, ids, signals, weights, loss_mask, denominator)
        if self.chunk:
            lm_head = student.get_output_embeddings().weight  # unsharded inside the FSDP root's forward
            return chunked_objective_loss(self.objective, lm_head, step, out, ids, signals, weights, self.chunk,
                                          loss_mask, denominator)
        return self.objective.compute_loss(step, out, ids, signals, weights, loss_mask, denominator)

    def _all_sum(self, value: float) -> float:
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def step(self, step: int, micro: list[MicroBatch]) -> dict[str, float]:
        """One optimizer step over this worker's micro-batches (module doc); returns the step's metrics."""
        counts = [self.objective.count_rows(tuple(mb.ids.shape), mb.loss_mask) for mb in micro]
        per_worker = self._all_sum(sum(counts)) / self.world  # N / W
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.zero_grad()
        parts = []
        for i, mb in enumerate(micro):
            # None: this micro-batch is the worker's whole share, so its own count (a mean) is the same number.
            denominator = None if len(micro) == 1 and counts[0] == per_worker else per_worker
            ids = torch.as_tensor(np.asarray(mb.ids), dtype=torch.long, device=self.device)  # (B, L)
            loss, metrics = self.placed.module(ids, step=step, signals=mb.signals, weights=mb.weights,
                                               loss_mask=mb.loss_mask, denominator=denominator,
                                               **({"on_policy": True} if mb.on_policy else {}))
            with self.placed.accumulating(last=i == len(micro) - 1):
                loss.backward()
            parts.append(metrics)
        self.placed.clip_grad_norm(self.tc.grad_clip)
        self.optimizer.step()
        self.objective.step()
        self.scheduler.step()
        return merge_metrics(parts)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: Path, step: int, export: bool = False) -> None:
        """Every rank: a checkpoint of this step (and, with `export`, the student as an HF directory)."""
        from raykd.train.checkpoint import save_checkpoint
        from raykd.train.integrity import write_checksums

        placed = self.placed
        try:
            save_checkpoint(Path(directory), placed, self.optimizer, self.scheduler, step, self.objective,
                            global_batch=self.global_batch, export=export, shard_size=self.tc.export_shard_size)
            if placed.rank == 0 or placed.fsdp:  # last: what this rank wrote, so a resume can tell a damaged copy
                write_checksums(Path(directory), placed.rank, writers=placed.world if placed.fsdp else 1)
        except Exception as e:  # a full disk surfaces from safetensors, torch.save or json alike
            # Loud, in one line; nothing was handed to Ray Train, so the previous checkpoint stays the latest.
            raise RuntimeError(f"the checkpoint of step {step} could not be written to {directory} "
                               f"({type(e).__name__}: {e}); the previous checkpoint is kept") from e

    def load(self, directory: Path) -> int:
        """Every rank: restore model, optimizer, LR schedule and learnable loss parts; returns the step."""
        from raykd.train.checkpoint import load_checkpoint

        return load_checkpoint(Path(directory), self.placed, self.optimizer, self.scheduler, self.objective,
                               global_batch=self.global_batch)
