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

A prompt of exactly the engine's max_model_len is refused by vLLM (it must generate >= 1 token), so the
longest scorable sequence, `self.max_model_len`, is one less than the engine's.

`check_vllm_teacher` holds the checks that need no engine (model config, weights, architecture, head size,
top-k, lengths); `raykd distill` runs it before any cluster starts and the replica again before its engine.
vLLM is imported inside the functions that need it: importing this module imports neither vLLM nor torch.
"""

from __future__ import annotations

import asyncio
import itertools
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

log = logging.getLogger(__name__)

# A float32 log-softmax cannot resolve probability mass below about one ulp of 1.0 per summed entry.
_F32_ULP = 2.0**-23


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


# --------------------------------------------------------------------------------------------- conversion
def rows_from_flat(flat: Any, n_rows: int, k: int, prompt: bool) -> tuple[np.ndarray, np.ndarray]:
    """`(n_rows, k + 1)` int32 ids and float32 log-probs from a vLLM `FlatLogprobs`.

    Column 0 is the actual token (the next prompt token, or the sampled one), columns 1..k the top-k, most
    likely first: vLLM stores exactly 1 + k entries per position in flat mode (no de-duplication). Prompt
    log-probs start with an empty entry for position 0 (nothing predicts the first token).
    """
    start = flat.start_indices[1] if prompt else 0
    size = len(flat.token_ids) - start
    if size != n_rows * (k + 1) or len(flat.logprobs) - start != size:
        raise RuntimeError(f"vLLM returned {size} log-prob entries for {n_rows} positions; expected "
                           f"{n_rows} x (1 actual token + top_k={k}) (has vLLM's FlatLogprobs layout changed?)")
    # fromiter with a count: one pass over the Python list, no intermediate object array (~30 % faster).
    ids = np.fromiter(itertools.islice(flat.token_ids, start, None), np.int32, size)
    lps = np.fromiter(itertools.islice(flat.logprobs, start, None), np.float32, size)
    return ids.reshape(n_rows, k + 1), lps.reshape(n_rows, k + 1)


def tail_logprob(topk_logprobs: np.ndarray, vocab_size: int) -> np.ndarray:
    """`(N,)` log of the mass outside the top-k, `log(1 - sum exp(topk))`, from `(N, k)` T = 1 log-probs.

    float64 with `expm1` so that a top-k mass close to 1 keeps its digits; floored at k float32 ulps of 1.0,
    the resolution of the float32 log-softmax the log-probs come from (below it the difference is noise).
    -inf when the top-k is the whole vocabulary.
    """
    n, k = topk_logprobs.shape
    if k >= vocab_size:
        return np.full(n, -np.inf, np.float32)
    x = topk_logprobs.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))  # log of the top-k mass, <= 0 up to rounding
    rest = -np.expm1(np.minimum(lse, 0.0))
    return np.log(np.maximum(rest, k * _F32_ULP)).astype(np.float32)


def signals_from_rows(parts: list[tuple[np.ndarray, np.ndarray]], vocab_size: int) -> TeacherSignals:
    """Concatenate per-sequence `rows_from_flat` outputs into TeacherSignals (offsets by sequence)."""
    ids = np.concatenate([p[0] for p in parts])
    lps = np.concatenate([p[1] for p in parts])
    offsets = np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])]).astype(np.int64)
    topk_lp = np.ascontiguousarray(lps[:, 1:])
    return TeacherSignals(
        np.ascontiguousarray(ids[:, 1:]), topk_lp, tail_logprob(topk_lp, vocab_size),
        np.ascontiguousarray(lps[:, 0]), offsets,
    )


def compare_signals(ref: TeacherSignals, got: TeacherSignals) -> dict[str, float]:
    """Agreement of two teachers' signals on the same rows (e.g. transformers vs vLLM on the same weights).

    top1: fraction of rows with the same most likely token; shared: fraction of top-k entries whose id is in
    both top-k lists; median/p99/max: |log-prob difference| over those shared entries; target_*: |difference|
    of the actual next token's log-prob; tail_max: largest |difference| of the tail mass (probability).
    """
    if not np.array_equal(ref.offsets, got.offsets) or ref.topk_ids.shape != got.topk_ids.shape:
        raise ValueError("signals cover different rows or top-k sizes")
    k = ref.top_k
    eq = ref.topk_ids[:, :, None] == got.topk_ids[:, None, :]  # (N, k, k): entry i of ref is entry j of got
    hit, where = eq.any(2), eq.argmax(2)
    diff = np.abs(ref.topk_logprobs - np.take_along_axis(got.topk_logprobs, where, 1))[hit].astype(np.float64)
    target = np.abs(ref.target_logprob.astype(np.float64) - got.target_logprob)
    tail = np.abs(np.exp(ref.tail_logprob.astype(np.float64)) - np.exp(got.tail_logprob.astype(np.float64)))
    return {
        "rows": float(ref.num_rows), "top_k": float(k),
        "top1": float(np.mean(ref.topk_ids[:, 0] == got.topk_ids[:, 0])), "shared": float(hit.mean()),
        "median": float(np.median(diff)), "p99": float(np.quantile(diff, 0.99)), "max": float(diff.max()),
        "target_median": float(np.median(target)), "target_max": float(target.max()),
        "tail_max": float(np.nanmax(tail)) if tail.size else 0.0,
    }


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
        if current_platform.is_cpu():
            check_head_size(facts, model_path, _cpu_head_sizes())
            # Read by the engine-core process this spawns. An explicit setting wins over the environment.
            if cfg.cpu_threads_bind != "auto" or "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_threads_bind
        memory: dict[str, Any] = {}
        if cfg.kv_cache_memory_bytes is not None:
            memory["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
        if cfg.gpu_memory_utilization is not None:
            memory["gpu_memory_utilization"] = cfg.gpu_memory_utilization
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
            **memory,
        )
        t0 = time.perf_counter()
        self.engine = AsyncLLM.from_engine_args(args)
        mc = self.engine.model_config
        self.vocab_size = int(mc.get_vocab_size())
        self.engine_max_model_len = int(mc.max_model_len)
        self.max_model_len = self.engine_max_model_len - 1  # vLLM must generate >= 1 token after the prompt
        self.max_top_k = min(cfg.max_logprobs, self.vocab_size)
        self._SamplingParams, self._TokensPrompt, self._FINAL = SamplingParams, TokensPrompt, RequestOutputKind.FINAL_ONLY
        log.info("vLLM engine for %s (%s, %s) ready in %.1fs", model_path, facts.architecture, cfg.dtype,
                 time.perf_counter() - t0)

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

    async def check_health(self) -> None:
        """Raises if the engine (its core process) died: Serve then replaces the replica."""
        await self.engine.check_health()

    def shutdown(self) -> None:
        """Stop the engine's processes (idempotent; also run by the replica's graceful shutdown)."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()
