"""The teacher as a Ray Serve application: one deployment, typed methods, numpy in and out.

    handle = launch_teacher(cfg.teacher, model_path)          # serve.run, or reuse a matching app
    signals = await handle.score.remote(list_of_int_arrays, 20)  # -> TeacherSignals
    info = handle.info.remote().result()                       # -> TeacherInfo

Any Ray process of the cluster (Train workers, Tune trials, other jobs) reaches the same replicas with
`teacher_handle(app_name)`, so one teacher serves many consumers. The backend (a `TeacherBackend`,
raykd/teacher/backend.py) is chosen by `teacher.backend` and built inside the replica: importing this
module imports neither torch nor vLLM.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from raykd.config import ConfigError, TeacherConfig
from raykd.signals import TeacherSignals
from raykd.teacher.backend import Generation, TeacherBackend

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
    replica: str = ""  # Serve replica id of the replica that answered
    pid: int = 0  # its process id (its vLLM engine runs in child processes)
    scored_requests: int = 0  # score requests that replica has answered so far (shows how load spreads)
    in_flight: int = 0  # score requests that replica holds at this moment, scoring or queued (a fault test kills a busy one)
    scoring: str = ""  # how that replica scores: "engine-topk", "prompt_logprobs" (vLLM) or "transformers"
    scoring_note: str = ""  # engine-topk: the kernel in use; prompt_logprobs: why the fast path is not used
    variant: str = ""  # backend and dtype (TeacherConfig.signal_variant): with the fingerprint, keys the signal cache


def make_backend(cfg: TeacherConfig, model_path: str) -> TeacherBackend:
    """The `TeacherBackend` for `cfg.backend`; heavy imports (torch, vLLM) happen here, in the replica."""
    if cfg.backend == "hf":
        import torch

        from raykd.teacher.hf_backend import ServedHFBackend

        torch.set_num_threads(max(1, int(cfg.num_cpus)))
        return ServedHFBackend(model_path, dtype=cfg.dtype)
    from raykd.teacher.vllm_backend import VllmTeacherBackend  # noqa: PLC0415 (lazy: vLLM is heavy)

    return VllmTeacherBackend(model_path, cfg.vllm)


class Teacher:
    """Serve deployment body. One backend per replica; requests run one at a time on it."""

    def __init__(self, model_path: str, teacher_cfg: dict[str, Any], fingerprint: str):
        from raykd.cluster import serve_replica_on_loopback

        serve_replica_on_loopback()  # an embedded cluster: nothing of this replica listens beyond the machine
        cfg = TeacherConfig.model_validate(teacher_cfg)
        self.backend: TeacherBackend = make_backend(cfg, model_path)
        b = self.backend
        self.info_ = TeacherInfo(model_path, fingerprint, cfg.backend, b.vocab_size, b.max_model_len, b.max_top_k,
                                 variant=cfg.signal_variant)
        self._scored = self._in_flight = 0
        try:
            from ray import serve

            self.info_ = dataclasses.replace(self.info_, replica=serve.get_replica_context().replica_id.unique_id,
                                             pid=os.getpid())
        except Exception:  # noqa: BLE001 - constructed outside Serve (tests, benchmarks)
            pass

    async def info(self) -> TeacherInfo:
        await self.backend.start()  # the scoring path is chosen once the engine runs
        b = self.backend
        return dataclasses.replace(self.info_, scored_requests=self._scored, in_flight=self._in_flight, scoring=b.scoring,
                                   scoring_note=getattr(b, "scoring_note", ""))

    async def check_health(self) -> None:
        """Serve's periodic probe: a replica whose vLLM engine died raises here and is replaced."""
        await self.backend.check_health()

    def __del__(self) -> None:  # graceful replica shutdown: stop the engine's child processes with it
        backend = getattr(self, "backend", None)  # absent when the constructor raised
        if backend is not None:
            backend.shutdown()

    async def score(
        self, token_ids: list[np.ndarray], top_k: int, extras: dict[str, list[int]] | None = None, *,
        positions: list[np.ndarray] | None = None, labels: list[np.ndarray] | None = None,
    ) -> TeacherSignals:
        """Top-k T=1 log-probs for positions 0..L_b-2 of each sequence (see raykd/signals/teacher_signals.py).

        `extras` asks for intermediate representations in `signals.extras`, rows aligned with the top-k rows:
        {"hidden_states": [HF hidden_states indices, 0 = embeddings], "attentions": [0-based layers]} (see
        HFTeacherBackend.score). Only the hf backend can: vLLM returns log-probs, not hidden states or attention.
        A masked-LM teacher (hf backend, raykd/mlm/) is scored at `positions[b]` with targets `labels[b]`.
        """
        if top_k > self.info_.max_top_k:
            raise ValueError(f"top_k={top_k} exceeds this teacher's max_top_k={self.info_.max_top_k}")
        if (extras or positions is not None) and not self.backend.returns_extras:
            raise ValueError(f"teacher backend '{self.info_.backend}' cannot return {sorted(extras or ['masked-LM rows'])} "
                             "(vLLM gives log-probs only); use teacher.backend: hf for hidden-state or attention "
                             "distillation")
        self._scored += 1  # requests actually scored (refused ones above are not)
        self._in_flight += 1
        try:
            return await self.backend.score(token_ids, top_k, extras, positions, labels)
        finally:
            self._in_flight -= 1

    async def score_packed(
        self, token_ids: list[np.ndarray], top_k: int, extras: dict[str, list[int]] | None = None
    ) -> bytes:
        """`score`, packed for the wire (raykd/signals/format.py: Arrow IPC, ~87 bytes/token at k=20 vs 168),
        each row keyed by its sequence hash so the caller can cache it as is."""
        from raykd.signals.format import pack, sequence_hash, to_ipc

        signals = await self.score(token_ids, top_k, extras)
        return to_ipc(pack(signals, vocab_size=self.info_.vocab_size, teacher_fingerprint=self.info_.fingerprint,
                           seq_hashes=[sequence_hash(s) for s in token_ids]))

    async def load_weights(self, weights: dict[str, np.ndarray], version: int) -> int:
        """Replace the served weights (vllm backend; HF names -> arrays) and remember `version` (the trainer's
        step): what a student rollout deployment (raykd/train/rollouts.py, engine vllm) receives every
        `loss.on_policy.sync_every` steps. Returns `version` once the engine serves the new weights."""
        if not hasattr(self.backend, "load_weights"):
            raise ValueError(f"teacher backend '{self.info_.backend}' cannot load new weights; use backend vllm")
        await self.backend.load_weights(weights)
        self.weights_version = version
        return version

    async def generate(self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0, *,
                       top_p: float = 1.0, seed: int | None = None, logprobs_k: int = 0) -> Generation:
        """Continuations of `prompts` (raykd/teacher/backend.py `Generation`).

        vllm backend only: `top_p`, `seed` (prompt b samples with seed + b) and `logprobs_k` (T = 1 top-k of
        every generated token in `Generation.signals`, for sequence-level KD).
        """
        return await self.backend.generate(prompts, max_new_tokens, temperature, top_p=top_p, seed=seed,
                                           logprobs_k=logprobs_k)


def teacher_handle(app_name: str):
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name)


def launch_teacher(cfg: TeacherConfig, model_path: str, fingerprint: str) -> Any:
    """Deploy the teacher app (or reuse a running one with the same weights, backend and dtype); return its handle."""
    from ray import serve

    try:
        handle = teacher_handle(cfg.app_name)
        info = handle.info.remote().result(timeout_s=30)
        if info.fingerprint == fingerprint and info.variant == cfg.signal_variant:  # same weights, backend, dtype
            log.info("reusing running teacher app %s (%s)", cfg.app_name, info.model_path)
            return handle
        log.info("teacher app %s serves other weights; redeploying", cfg.app_name)
    except Exception:  # no such app yet
        pass

    # Handles are all we need: no HTTP proxy (nothing listens on a port). If Serve already runs on this
    # cluster (e.g. a RayService with its own proxies), its settings are kept.
    serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False, "log_level": "WARNING"})
    try:
        return serve.run(teacher_app(cfg, model_path, fingerprint), name=cfg.app_name, route_prefix=None)
    except RuntimeError as e:  # a replica constructor raised: surface its one-line ConfigError, not the traceback
        found = re.search(r"ConfigError: ([^\n]+)", str(e))
        if found:
            raise ConfigError(found.group(1)) from None
        raise


def teacher_app(cfg: TeacherConfig, model_path: str, fingerprint: str) -> Any:
    """The bound Serve application (replicas and resources from `cfg`); also built by raykd/teacher/app.py."""
    from ray import serve

    # vllm: num_gpus equals tensor_parallel_size (checked in TeacherConfig), one GPU per tensor-parallel rank,
    # all visible to the replica, whose engine spawns its rank workers itself.
    scale: dict[str, Any] = {"num_replicas": cfg.num_replicas}
    if cfg.autoscaling is not None:
        scale = {"autoscaling_config": cfg.autoscaling.model_dump()}
    deployment = serve.deployment(
        Teacher,
        name=DEPLOYMENT_NAME,
        **scale,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        health_check_period_s=10,
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    return deployment.bind(model_path, cfg.model_dump(), fingerprint)
