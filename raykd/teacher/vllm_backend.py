"""vLLM backend of the teacher: an `AsyncLLM` engine inside the Serve replica, scoring at prefill speed.

    backend = VllmTeacherBackend("/path/to/hf_dir", VllmConfig(dtype="float32"))   # starts the engine
    signals = await backend.score([np.array([1, 5, 9, 2])], top_k=20)               # TeacherSignals, 3 rows
    gen = await backend.generate(prompts, 64, 0.7, logprobs_k=20)                   # tokens + their top-k

A `TeacherBackend` (raykd/teacher/backend.py) that returns log-probs only (no hidden states or attention maps).

Scoring is teacher forcing through vLLM's public `prompt_logprobs=k`: the engine runs the LM head at every
prompt position and returns, per position, the log-prob of the actual next token and the top-k (T = 1, a
float32 log-softmax). `flat_logprobs=True, detokenize=False` and an engine without a tokenizer keep the front
end to a few flat Python lists per request (no per-token dicts or strings); `rows_from_flat` reshapes them into
the `(N, k)` arrays of raykd/signals/teacher_signals.py. vLLM does not return the tail mass: it is `1 - sum(top-k probs)`,
computed in float64 and floored at what float32 log-probs resolve (`tail_logprob`).

That is the fallback. By default (`teacher.vllm.scoring: auto`) the engine computes the same signals itself,
as arrays with no Python object per position (raykd/teacher/vllm_topk.py: a vLLM worker extension with a
fused top-k kernel); `start()` enables it once and logs which path serves, with the reason for a fallback.

A prompt of exactly the engine's max_model_len is refused by vLLM (it must generate >= 1 token), so the
longest scorable sequence, `self.max_model_len`, is one less than the engine's.

`check_vllm_teacher` holds the checks that need no engine (model config, weights, architecture, head size,
top-k, lengths); `raykd distill` runs it before any cluster starts and the replica again before its engine.
vLLM is imported inside the functions that need it: importing this module imports neither vLLM nor torch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raykd.config import ConfigError, TeacherConfig, VllmConfig
from raykd.config.teacher import CPU_HEAD_SIZES
from raykd.signals import TeacherSignals
from raykd.teacher.backend import Generation
from raykd.teacher.logprob_arrays import rows_from_flat, signals_from_packed, signals_from_rows, split_packed
from raykd.teacher.vllm_topk import EXTENSION, EXTRA_KEY, load_engine_weights

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class ModelFacts:
    """What the engine will see, read from the model's config without starting vLLM."""

    architecture: str
    vocab_size: int
    head_dim: int
    engine_max_model_len: int  # the engine's max_model_len (prompt + generated tokens)

    @property
    def max_score_len(self) -> int:
        """Longest sequence the engine can score: it must also generate one token."""
        return self.engine_max_model_len - 1


def model_facts(path: str, vcfg: VllmConfig, field: str = "teacher.path") -> ModelFacts:
    """Read config.json (local dir or HF cache) and check what the vllm backend needs of it; ConfigError if not."""
    from transformers import AutoConfig

    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError(f"{field}: vLLM cannot load {path}: no config.json (not a Hugging Face model directory)")
        if not any(p.glob("*.safetensors")):
            raise ConfigError(f"{field}: vLLM cannot load {path}: no *.safetensors weights (the vllm backend "
                              "loads safetensors only)")
    try:
        hf = AutoConfig.from_pretrained(str(p) if p.exists() else path)
    except Exception as e:  # noqa: BLE001 - any parse/lookup failure is the same user error
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"{field}: vLLM cannot load {path}: its config does not load ({type(e).__name__}: {first})") from None
    archs = list(getattr(hf, "architectures", None) or [])
    if not archs:
        raise ConfigError(f"{field}: vLLM cannot load {path}: config.json names no 'architectures' (vLLM picks "
                          "the model class from it)")
    text = hf.get_text_config()
    heads, hidden = getattr(text, "num_attention_heads", 0), getattr(text, "hidden_size", 0)
    head_dim = int(getattr(text, "head_dim", None) or (hidden // heads if heads else 0))
    model_len = getattr(text, "max_position_embeddings", None)
    if vcfg.max_model_len and model_len and vcfg.max_model_len > model_len:
        raise ConfigError(f"teacher.vllm.max_model_len={vcfg.max_model_len} exceeds the model's "
                          f"max_position_embeddings={model_len}")
    return ModelFacts(archs[0], int(text.vocab_size), head_dim, int(vcfg.max_model_len or model_len or 2048))


def check_architecture(facts: ModelFacts, path: str, field: str = "teacher.path") -> None:
    """The architecture must be in vLLM's model registry (skipped, with a note, where vLLM is not installed)."""
    try:
        import vllm
        from vllm.model_executor.models.registry import ModelRegistry
    except ImportError:
        log.info("vllm is not installed here; the replica checks the architecture of %s", path)
        return
    if facts.architecture not in ModelRegistry.get_supported_archs():
        raise ConfigError(f"{field}: vLLM {vllm.__version__} cannot load {path}: architecture "
                          f"{facts.architecture} is not in its model registry (teacher.backend: hf can serve it)")


def check_head_size(facts: ModelFacts, path: str, sizes: tuple[int, ...] = CPU_HEAD_SIZES, field: str = "teacher.path") -> None:
    if facts.head_dim not in sizes:
        raise ConfigError(f"{field}: head size {facts.head_dim} of {path} is not one vLLM's CPU attention supports "
                          f"{list(sizes)}; use teacher.backend: hf, or GPU replicas (teacher.num_gpus)")


def check_vllm_teacher(
    path: str,
    teacher: TeacherConfig,
    *,
    top_k: int | None = None,
    seq_len: int | None = None,
    top_k_field: str = "loss.top_k",
    seq_len_field: str = "data.seq_len",
    architecture: bool = True,
) -> ModelFacts:
    """Everything the engine would refuse, checked without it; raises ConfigError naming the field.

    CPU replicas (`teacher.num_gpus == 0`) also get the CPU attention head-size check. `architecture=False`
    skips the model-registry lookup (it imports vLLM, several seconds).
    """
    vcfg = teacher.vllm
    facts = model_facts(path, vcfg)
    if architecture:
        check_architecture(facts, path)
    if teacher.num_gpus == 0:
        check_head_size(facts, path)
    if top_k is not None and top_k > min(vcfg.max_logprobs, facts.vocab_size):
        raise ConfigError(f"{top_k_field}={top_k} exceeds what the vLLM teacher returns per position: "
                          f"teacher.vllm.max_logprobs={vcfg.max_logprobs}, vocab_size={facts.vocab_size}")
    if seq_len is not None and seq_len > facts.max_score_len:
        raise ConfigError(f"{seq_len_field}={seq_len} exceeds the longest sequence the vLLM teacher scores, "
                          f"{facts.max_score_len} (max_model_len {facts.engine_max_model_len} less the one token "
                          "vLLM must generate; teacher.vllm.max_model_len)")
    return facts


# --------------------------------------------------------------------------------------------- backend
def _cpu_head_sizes() -> tuple[int, ...]:
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return tuple(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # noqa: BLE001 - an internal module moved: fall back to the list of 0.32
        return CPU_HEAD_SIZES


class VllmTeacherBackend:
    """One AsyncLLM engine. Construct inside the process (Serve replica) that will call it; methods are async.

    Attributes: `vocab_size`, `max_model_len` (longest scorable sequence), `max_top_k` (min(max_logprobs, V)).
    """

    returns_extras = False

    def __init__(self, model_path: str, cfg: VllmConfig):
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.inputs import TokensPrompt
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        self.cfg = cfg
        facts = model_facts(model_path, cfg)
        check_architecture(facts, model_path)
        extra: dict[str, Any] = {}
        if current_platform.is_cpu():
            from raykd.teacher.vllm_executor import QuietMultiprocExecutor

            check_head_size(facts, model_path, _cpu_head_sizes())
            # Read by the engine-core process this spawns. An explicit setting wins over the environment.
            if cfg.cpu_threads_bind != "auto" or "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_threads_bind
            # vLLM's executor less its busy wait for the worker's reply: on a CPU that spin takes most of a core
            # the replica and the students need (raykd/teacher/vllm_executor.py). GPUs keep vLLM's default.
            if not cfg.busy_wait:
                extra["distributed_executor_backend"] = QuietMultiprocExecutor
        if cfg.kv_cache_memory_bytes is not None:
            extra["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
        if cfg.gpu_memory_utilization is not None:
            extra["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        args = AsyncEngineArgs(
            model=model_path,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=cfg.enforce_eager,
            max_logprobs=cfg.max_logprobs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            skip_tokenizer_init=True,  # token ids in and out: no tokenizer, no detokenizer in the front end
            load_format="safetensors",  # never unpickle weights
            disable_log_stats=True,
            seed=0,
            worker_extension_cls=EXTENSION if self._topk_importable() else "",
            **extra,
        )
        t0 = time.perf_counter()
        self.engine = AsyncLLM.from_engine_args(args)
        mc = self.engine.model_config
        self.vocab_size = int(mc.get_vocab_size())
        self.engine_max_model_len = int(mc.max_model_len)
        self.max_model_len = self.engine_max_model_len - 1  # vLLM must generate >= 1 token after the prompt
        self.max_top_k = min(cfg.max_logprobs, self.vocab_size)
        self._SamplingParams, self._TokensPrompt, self._FINAL = SamplingParams, TokensPrompt, RequestOutputKind.FINAL_ONLY
        self.scoring, self.scoring_note = "pending", ""
        self._started: asyncio.Future | None = None
        try:  # in a Serve replica the constructor runs on the replica's loop: choose the path right after it
            self._started = asyncio.get_running_loop().create_task(self._choose_scoring())
        except RuntimeError:  # no running loop (tests, benchmarks): the first request chooses
            pass
        log.info("vLLM engine for %s (%s, %s) ready in %.1fs", model_path, facts.architecture, cfg.dtype,
                 time.perf_counter() - t0)

    # ------------------------------------------------------------------ scoring path
    def _topk_importable(self) -> bool:
        """Can vLLM's worker import the extension? (It runs raykd's code: raykd must be importable there too.)"""
        self._no_topk = ""
        if self.cfg.scoring == "prompt_logprobs":
            self._no_topk = "teacher.vllm.scoring=prompt_logprobs"
            return False
        try:
            import raykd.teacher.vllm_topk  # noqa: F401
            from vllm.platforms import current_platform

            if current_platform.is_cpu():
                import numba  # noqa: F401  (the CPU kernel)
        except ImportError as e:
            self._no_topk = f"cannot import the worker extension ({e})"
        return not self._no_topk

    async def start(self) -> None:
        """Choose the scoring path once (idempotent): enable the engine top-k, or keep vLLM's prompt_logprobs.

        One log line names the path and, for the fallback, the reason. teacher.vllm.scoring: engine-topk makes a
        fallback a ConfigError instead.
        """
        if self._started is None:
            self._started = asyncio.ensure_future(self._choose_scoring())
        await asyncio.shield(self._started)

    async def _choose_scoring(self) -> None:
        reason = self._no_topk
        if not reason:
            try:
                infos = await self.engine.collective_rpc("raykd_enable_topk")
                self.scoring, self.scoring_note = "engine-topk", json.dumps(infos[0], sort_keys=True)
                log.warning("teacher scoring: engine top-k in vLLM's worker (%s)", self.scoring_note)
                return
            except Exception as e:  # noqa: BLE001 - any refusal means: keep vLLM's own path
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        self.scoring, self.scoring_note = "prompt_logprobs", reason
        if self.cfg.scoring == "engine-topk":
            raise ConfigError(f"teacher.vllm.scoring=engine-topk: the engine top-k cannot run here: {reason}")
        log.warning("teacher scoring: vLLM prompt_logprobs path (fast top-k unavailable: %s)", reason)

    # ------------------------------------------------------------------ requests
    async def _run_all(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        """One engine request per prompt, all in flight at once (the scheduler batches them); final outputs.

        If one fails or the caller is cancelled, the others are cancelled too, which aborts them in vLLM.
        """
        batch = uuid.uuid4().hex[:12]

        async def one(i: int) -> Any:
            final = None
            async for out in self.engine.generate(self._TokensPrompt(prompt_token_ids=prompts[i]), params[i],
                                                  f"raykd-{batch}-{i}"):
                final = out
            return final

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(prompts))]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise

    def _check_sequences(self, seqs: list[np.ndarray], min_len: int, new_tokens: int, what: str) -> None:
        """Lengths against the engine (prompt + new tokens <= its max_model_len) and ids against the vocabulary."""
        for i, s in enumerate(seqs):
            if s.ndim != 1 or len(s) < min_len:
                raise ValueError(f"{what} {i} has shape {s.shape}; it needs at least {min_len} token(s)")
            if len(s) + new_tokens > self.engine_max_model_len:
                if new_tokens == 1:  # scoring
                    raise ValueError(f"{what} {i} has {len(s)} tokens > max_model_len {self.max_model_len} of the "
                                     "vLLM teacher (the engine's, less the one token it must generate; "
                                     "teacher.vllm.max_model_len)")
                raise ValueError(f"{what} {i}: {len(s)} tokens + max_new_tokens {new_tokens} exceed the vLLM "
                                 f"teacher's max_model_len {self.engine_max_model_len}")
            if s.min() < 0 or s.max() >= self.vocab_size:
                raise ValueError(f"{what} {i} has token ids outside [0, vocab_size={self.vocab_size})")

    def _check_k(self, k: int, what: str) -> None:
        if not 1 <= k <= self.max_top_k:
            raise ValueError(f"{what}={k} must be in [1, {self.max_top_k}] (teacher.vllm.max_logprobs="
                             f"{self.cfg.max_logprobs}, vocab_size={self.vocab_size})")

    async def score(self, token_ids: list[np.ndarray], top_k: int, extras: dict[str, list[int]] | None = None,
                    positions: list[np.ndarray] | None = None, labels: list[np.ndarray] | None = None) -> TeacherSignals:
        """Top-k T = 1 log-probs for positions 0..L_b-2 of each sequence, as HFTeacherBackend.score."""
        if extras or positions is not None or labels is not None:
            raise ValueError("the vllm backend returns log-probs only: no hidden states, attention maps or "
                             "masked-LM positions (teacher.backend: hf)")
        seqs = [np.asarray(s) for s in token_ids]
        if not seqs:
            raise ValueError("score needs at least one sequence")
        self._check_k(top_k, "top_k")
        self._check_sequences(seqs, 2, 1, "sequence")
        await self.start()
        if self.scoring == "engine-topk":
            return await self.score_engine_topk(seqs, top_k)
        return await self.score_prompt_logprobs(seqs, top_k)

    async def score_engine_topk(self, seqs: list[np.ndarray], top_k: int) -> TeacherSignals:
        """The fast path (checked sequences; `start()` enabled it): one (L_b-1, 2k+1) array per sequence."""
        params = self._SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=top_k, flat_logprobs=True, detokenize=False,
            output_kind=self._FINAL, extra_args={EXTRA_KEY: top_k},
        )
        outs = await self._run_all([s.tolist() for s in seqs], [params] * len(seqs))
        parts = [split_packed(o.prompt_token_id_logprobs, top_k, len(s) - 1) for o, s in zip(outs, seqs)]
        return signals_from_packed(parts, top_k, self.vocab_size)

    async def score_prompt_logprobs(self, seqs: list[np.ndarray], top_k: int) -> TeacherSignals:
        """The fallback: vLLM's prompt_logprobs, per-position lists turned into arrays (checked sequences)."""
        params = self._SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=top_k, flat_logprobs=True, detokenize=False,
            output_kind=self._FINAL,
        )
        outs = await self._run_all([s.tolist() for s in seqs], [params] * len(seqs))
        parts = [rows_from_flat(o.prompt_logprobs, len(s) - 1, top_k, prompt=True) for o, s in zip(outs, seqs)]
        return signals_from_rows(parts, self.vocab_size)

    async def generate(
        self,
        prompts: list[np.ndarray],
        max_new_tokens: int,
        temperature: float = 0.0,
        *,
        top_p: float = 1.0,
        seed: int | None = None,
        logprobs_k: int = 0,
    ) -> Generation:
        """Exactly `max_new_tokens` new tokens per prompt (EOS ignored, as the hf backend), greedy at T = 0.

        `seed` makes sampling reproducible (prompt b uses seed + b). `logprobs_k > 0` also returns the T = 1
        top-k of every generated token in `Generation.signals` (sequence-level KD).
        """
        seqs = [np.asarray(p) for p in prompts]
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
        if logprobs_k:
            self._check_k(logprobs_k, "logprobs_k")
        self._check_sequences(seqs, 1, max_new_tokens, "prompt")

        def params(b: int) -> Any:
            return self._SamplingParams(
                max_tokens=max_new_tokens, ignore_eos=True, temperature=temperature, top_p=top_p,
                seed=None if seed is None else seed + b, logprobs=logprobs_k or None, flat_logprobs=True,
                detokenize=False, output_kind=self._FINAL,
            )

        start = time.perf_counter()
        outs = await self._run_all([s.tolist() for s in seqs], [params(b) for b in range(len(seqs))])
        seconds = time.perf_counter() - start
        tokens = [np.asarray(o.outputs[0].token_ids, np.int32) for o in outs]
        signals = None
        if logprobs_k:
            parts = [rows_from_flat(o.outputs[0].logprobs, len(t), logprobs_k, prompt=False) for o, t in zip(outs, tokens)]
            signals = signals_from_rows(parts, self.vocab_size)
        return Generation(tokens, seconds, signals)

    async def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """New weights for the engine, e.g. the on-policy student's (raykd/teacher/vllm_topk.py)."""
        await load_engine_weights(self.engine, weights, self._no_topk)

    async def check_health(self) -> None:
        """Raises if the engine (its core process) died: Serve then replaces the replica."""
        await self.engine.check_health()

    def shutdown(self) -> None:
        """Stop the engine's processes (idempotent; also run by the replica's graceful shutdown)."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()
