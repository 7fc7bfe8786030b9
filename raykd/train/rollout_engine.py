"""`loss.on_policy.engine: vllm`: a student rollout deployment on Ray Serve that writes the on-policy continuations
and receives the trainer's weights every `sync_every` steps.

    handle = launch_rollout_engine(cfg, student_ref, out_dir)       # driver (raykd/train/fit.py), before training
    engine = VllmRolloutEngine(teacher_handle(rollout_app_name(cfg)), placed, rank, world)   # each Train worker
    tokens = engine.generate(prompts, 96, 1.0, 1.0, seed)           # (B, G) from the served weights
    engine.sync(placed, step + 1)                                   # every worker; rank 0 pushes its weights

The deployment is raykd's Teacher deployment (raykd/teacher/service.py) serving the *student*'s HF directory
on the vllm backend (`teacher.vllm` settings, dtype float32 when train.precision is fp32), under its own app
name: `generate` writes exactly G tokens per prompt (seeded sampling), `load_weights` loads new weights in vLLM's worker (the model's own `load_weights`,
through raykd's worker extension) and drops the prefix cache. A sync is: rank 0 gathers the student's full state
dict, sends it (object store -> replica -> engine process), waits until the engine serves it, and every worker
waits at a barrier, so no worker generates with weights older than the last sync. The staleness a rollout then
has is (the step it trains) - (the last sync before it was written): up to sync_every - 1 + max_staleness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def rollout_app_name(cfg: Any) -> str:
    """The Serve app of the run's student rollout deployment (beside the teacher's)."""
    return f"{cfg.teacher.app_name}-student-rollouts"


def rollout_cpus(cfg: Any) -> float:
    """Logical CPUs the run's student rollout deployment reserves (0 unless engine vllm is on): what the
    embedded cluster of `raykd distill` / `raykd pipeline` adds for it."""
    op = cfg.loss.on_policy
    return cfg.teacher.num_cpus if op.enabled and op.engine == "vllm" else 0.0


def rollout_teacher_config(cfg: Any, model_dir: str):
    """A TeacherConfig serving the student directory on vLLM with the teacher's vLLM settings, one replica, in the
    trainer's precision (fp32 training: a float32 engine, so the sampling policy is the trained student's)."""
    from raykd.config import TeacherConfig

    dtype = "float32" if cfg.train.precision == "fp32" else "bfloat16"
    # scoring auto: the worker extension that carries the weight sync is installed.
    vllm = cfg.teacher.vllm.model_copy(update={"scoring": "auto", "dtype": dtype})
    return TeacherConfig(path=model_dir, backend="vllm", num_replicas=1, num_cpus=cfg.teacher.num_cpus,
                         num_gpus=cfg.teacher.num_gpus and vllm.tensor_parallel_size, app_name=rollout_app_name(cfg),
                         vllm=vllm)


def save_student_dir(student_ref: Any, out_dir: Path) -> Path:
    """The student's initial weights as an HF directory (config + safetensors) the vLLM engine can load."""
    import ray
    import torch
    from safetensors.torch import save_file

    config, state = ray.get(student_ref)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    tensors = {k: torch.as_tensor(np.array(v)).contiguous() for k, v in state.items()}
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # shared with the embeddings: safetensors refuses aliases
    save_file(tensors, str(out_dir / "model.safetensors"))
    return out_dir


def launch_rollout_engine(cfg: Any, student_ref: Any, out_dir: Path):
    """Deploy the student rollout app (driver side); returns its handle."""
    from raykd.models import model_fingerprint
    from raykd.teacher.service import launch_teacher

    model_dir = str(save_student_dir(student_ref, out_dir))
    return launch_teacher(rollout_teacher_config(cfg, model_dir), model_dir, model_fingerprint(model_dir))


class VllmRolloutEngine:
    """Worker side of engine vllm: generation on the rollout deployment, weight syncs from rank 0."""

    def __init__(self, handle: Any, rank: int = 0, world: int = 1):
        self.handle, self.rank, self.world = handle, rank, world
        self.version = 0  # the trainer step whose weights the deployment serves (0: the initial student)
        self.syncs = 0

    def generate(self, prompts: np.ndarray, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int) -> np.ndarray:
        gen = self.handle.generate.remote([np.asarray(p, np.int64) for p in prompts], max_new_tokens, temperature,
                                          top_p=top_p, seed=seed).result()
        return np.stack([np.asarray(t, np.int64) for t in gen.tokens])

    def sync(self, placed: Any, version: int) -> None:
        """Every worker calls this at the same step: rank 0 pushes the full student, all wait for it."""
        import torch.distributed as dist

        state = placed.full_state_dict()  # rank 0: the whole student on the CPU (collective under FSDP)
        if self.rank == 0:
            weights = {k: v.detach().float().numpy() for k, v in state.items()}
            self.handle.load_weights.remote(weights, version).result()
        if self.world > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()
        self.version, self.syncs = version, self.syncs + 1
