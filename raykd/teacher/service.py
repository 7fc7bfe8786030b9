"""The teacher as a Ray Serve application: one deployment, typed methods, numpy in and out.

    handle = launch_teacher(cfg.teacher, model_path)          # serve.run, or reuse a matching app
    signals = await handle.score.remote(list_of_int_arrays, 20)  # -> TeacherSignals
    info = handle.info.remote().result()                       # -> TeacherInfo

Any Ray process of the cluster (Train workers, Tune trials, other jobs) reaches the same replicas with
`teacher_handle(app_name)`, so one teacher serves many consumers. The backend is chosen by
`teacher.backend` and built lazily inside the replica: importing this module imports neither torch nor vLLM.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from raykd.config import TeacherConfig
from raykd.signals import TeacherSignals

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "Teacher"


@dataclass(frozen=True)
class TeacherInfo:
    model_path: str
    fingerprint: str  # identifies the weights; keys the signal cache
    backend: str
    vocab_size: int
    max_model_len: int
    max_top_k: int


class Teacher:
    """Serve deployment body. One backend per replica; requests run one at a time on it."""

    def __init__(self, model_path: str, teacher_cfg: dict[str, Any], fingerprint: str):
        cfg = TeacherConfig.model_validate(teacher_cfg)
        if cfg.backend == "hf":
            import torch

            from raykd.teacher.hf_backend import HFTeacherBackend

            torch.set_num_threads(max(1, int(cfg.num_cpus)))
            self.backend = HFTeacherBackend(model_path, dtype=cfg.dtype)
            max_top_k = self.backend.vocab_size
        else:
            from raykd.teacher.vllm_backend import VllmTeacherBackend  # noqa: PLC0415 (lazy: vLLM is heavy)

            self.backend = VllmTeacherBackend(model_path, cfg.vllm)
            max_top_k = cfg.vllm.max_logprobs
        self.info_ = TeacherInfo(
            model_path, fingerprint, cfg.backend, self.backend.vocab_size, self.backend.max_model_len, max_top_k
        )
        self._lock = asyncio.Lock()

    def info(self) -> TeacherInfo:
        return self.info_

    async def score(self, token_ids: list[np.ndarray], top_k: int) -> TeacherSignals:
        """Top-k T=1 log-probs for positions 0..L_b-2 of each sequence (see raykd/signals.py)."""
        if top_k > self.info_.max_top_k:
            raise ValueError(f"top_k={top_k} exceeds this teacher's max_top_k={self.info_.max_top_k}")
        if hasattr(self.backend, "score_async"):
            return await self.backend.score_async(token_ids, top_k)
        async with self._lock:  # one forward at a time: concurrent ones would fight over the same cores
            return await asyncio.to_thread(self.backend.score, token_ids, top_k)

    async def generate(self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0):
        """Continuations of `prompts` (see the backend's `Generation`)."""
        if hasattr(self.backend, "generate_async"):
            return await self.backend.generate_async(prompts, max_new_tokens, temperature)
        async with self._lock:
            return await asyncio.to_thread(self.backend.generate, prompts, max_new_tokens, temperature)


def teacher_handle(app_name: str):
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name)


def launch_teacher(cfg: TeacherConfig, model_path: str, fingerprint: str) -> Any:
    """Deploy the teacher app (or reuse a running one with the same weights and backend); return its handle."""
    from ray import serve

    try:
        handle = teacher_handle(cfg.app_name)
        info = handle.info.remote().result(timeout_s=30)
        if info.fingerprint == fingerprint and info.backend == cfg.backend:
            log.info("reusing running teacher app %s (%s)", cfg.app_name, info.model_path)
            return handle
        log.info("teacher app %s serves other weights; redeploying", cfg.app_name)
    except Exception:  # no such app yet
        pass

    gpus = cfg.num_gpus if cfg.backend == "hf" else max(cfg.num_gpus, 0.0)
    deployment = serve.deployment(
        Teacher,
        name=DEPLOYMENT_NAME,
        num_replicas=cfg.num_replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": gpus},
        health_check_period_s=10,
    )
    app = deployment.bind(model_path, cfg.model_dump(), fingerprint)
    return serve.run(app, name=cfg.app_name, route_prefix=None)
