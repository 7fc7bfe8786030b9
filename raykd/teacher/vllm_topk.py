"""Teacher scoring inside vLLM's worker: top-k, log-sum-exp and the target's log-prob as tensors, returned as
one float32 array per request. No Python object per position anywhere (the issue-15 fast path).

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(..., worker_extension_cls=EXTENSION))
    await engine.collective_rpc("raykd_enable_topk")            # once; raises where it cannot run
    params = SamplingParams(max_tokens=1, prompt_logprobs=k, extra_args={EXTRA_KEY: k}, ...)
    out.prompt_token_id_logprobs                                 # (L-1, 2k+1) float32 per request

Engine side (vLLM's worker process). `TopkScoringExtension` is mixed into vLLM's worker class
(`worker_extension_cls`, vLLM's hook for RLHF weight sync); `raykd_enable_topk` wraps two methods of that
worker's V1 model runner instance (nothing global):

  * `_get_prompt_logprobs_dict` - where vLLM computes prompt log-probs one request at a time (LM head, a float32
    log-softmax over (L, V), top-k, gather, a rank count over (L, V)), later turned into one Python float per
    entry by the front end. Requests whose `SamplingParams.extra_args` carry `EXTRA_KEY` are taken out: the
    rows of all of them in this step are gathered with one index, the LM head (`model.compute_logits`, the
    engine's own: same GEMM, soft-cap, vocab padding) runs on chunks, and a fused kernel gives per row the
    top-k log-probs, ids and the target's log-prob (CPU: raykd/teacher/topk_kernel.py; GPU: torch ops on the
    device). Other requests (generation, other callers' prompt_logprobs) run vLLM's own code.
  * `sample_tokens` - attaches the finished requests' arrays to `ModelRunnerOutput.prompt_token_id_logprobs_dict`,
    the channel vLLM 0.32 has for `prompt_logprob_token_ids`: the scheduler puts it in `EngineCoreOutput`,
    msgpack ships a tensor as one raw buffer, and the front end hands `RequestOutput.prompt_token_id_logprobs`
    over as a numpy array.

Per request the array is (L-1, 2k+1) float32: [k log-probs | k ids as int32 bits | target log-prob]. A
request's rows are emitted in the step that computes its last prompt chunk (vLLM's own rule, so chunked
prefill works); partial chunks live on the request's state and vanish with it if it is preempted.

`raykd_enable_topk` refuses (raises, and the replica keeps vLLM's prompt_logprobs path) where this cannot
run as written: a runner without these methods (another vLLM version, the V2 model runner), tensor or
pipeline parallelism (vocab-parallel logits; not implemented), or a `logprobs_mode` other than log-probs.
`RAYKD_TOPK_CHUNK` (logits per LM-head chunk) overrides the default chunk size.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

EXTRA_KEY = "raykd_topk"
EXTENSION = "raykd.teacher.vllm_topk.TopkScoringExtension"
_RUNNER_NEEDS = ("_get_prompt_logprobs_dict", "sample_tokens", "execute_model", "num_prompt_logprobs", "requests",
                 "input_batch", "query_start_loc", "model", "model_config")
# CPU: logits per chunk sized for the L2 cache (the kernel reads every chunk once, right after the GEMM wrote it);
# GPU: large chunks, the bound is memory.
_CHUNK = {"cpu": 1 << 19, "gpu": 1 << 24}
# Worker-side counters (this process only): rows scored, seconds in the LM head and the kernel, and the
# worker thread's CPU seconds inside execute_model + sample_tokens (robust to other load on the machine).
_ZERO = {"rows": 0, "steps": 0, "lm_head_s": 0.0, "kernel_s": 0.0, "model_cpu_s": 0.0}
STATS: dict[str, float] = dict(_ZERO)


class TopkUnavailable(RuntimeError):
    """The engine-side top-k cannot run in this engine; the message says why."""


# ============================================================================ engine side (vLLM's worker)
def _requested_k(state: Any) -> int:
    sp = getattr(state, "sampling_params", None)
    return int((getattr(sp, "extra_args", None) or {}).get(EXTRA_KEY, 0))


def _topk_rows(compute_logits, h, targets, k: int, kernel: str, vocab: int, chunk: int):
    """(M, 2k+1) float32 on h's device for hidden rows h (M, H) and next tokens targets (M,) int64."""
    import torch

    m = h.shape[0]
    out = torch.empty((m, 2 * k + 1), dtype=torch.float32, device=h.device)
    step = max(16, chunk // vocab)
    for a in range(0, m, step):
        b = min(a + step, m)
        t0 = time.perf_counter()
        logits = compute_logits(h[a:b])
        t1 = time.perf_counter()
        if kernel == "numba":  # fused per-row top-k + log-sum-exp, written into the packed rows in place
            from raykd.teacher.topk_kernel import topk_packed

            topk_packed(logits, targets[a:b], k, out.numpy()[a:b])
        else:  # vLLM's own ops (Sampler.compute_logprobs + gather_logprobs, less the rank count), on the device
            lp = logits.log_softmax(dim=-1, dtype=torch.float32)
            vals, ids = lp.topk(k, dim=-1)
            out[a:b, :k] = vals
            out[a:b, k : 2 * k] = ids.to(torch.int32).view(torch.float32)
            out[a:b, 2 * k] = lp.gather(-1, targets[a:b, None])[:, 0]
        STATS["lm_head_s"] += t1 - t0
        STATS["kernel_s"] += time.perf_counter() - t1
    STATS["rows"] += m
    return out


def _check_runner(runner: Any) -> None:
    for name in _RUNNER_NEEDS:
        if not hasattr(runner, name):
            raise TopkUnavailable(f"vLLM's model runner {type(runner).__name__} has no {name} (not the V1 runner "
                                  "raykd's extension was written for)")
    pc = getattr(runner, "parallel_config", None)
    tp, pp = getattr(pc, "tensor_parallel_size", 1), getattr(pc, "pipeline_parallel_size", 1)
    if tp > 1 or pp > 1:
        raise TopkUnavailable(f"tensor_parallel_size={tp}, pipeline_parallel_size={pp}: vocab-parallel logits are "
                              "not handled by the engine top-k yet")
    mode = getattr(runner.model_config, "logprobs_mode", "raw_logprobs")
    if mode not in ("raw_logprobs", "processed_logprobs"):
        raise TopkUnavailable(f"logprobs_mode={mode} (the engine top-k returns log-probs)")


def install(runner: Any) -> dict[str, Any]:
    """Wrap `runner` (a V1 GPUModelRunner / CPUModelRunner instance) for raykd's top-k requests."""
    import torch

    if getattr(runner, "_raykd_topk", None):
        return dict(runner._raykd_topk)
    _check_runner(runner)
    device = "cpu" if runner.device.type == "cpu" else "gpu"
    kernel = "numba" if device == "cpu" else "torch"
    if kernel == "numba":
        from raykd.teacher.topk_kernel import warm_up

        warm_up()  # compile (or load the on-disk cache) now, not in the first scoring step
    chunk = int(os.environ.get("RAYKD_TOPK_CHUNK", _CHUNK[device]))
    vocab = int(runner.model_config.get_vocab_size())
    orig_plp, orig_sample, orig_execute = runner._get_prompt_logprobs_dict, runner.sample_tokens, runner.execute_model
    ready: dict[str, torch.Tensor] = {}  # finished requests' arrays, attached to the next ModelRunnerOutput

    def get_prompt_logprobs_dict(hidden_states, num_scheduled_tokens):
        plp = runner.num_prompt_logprobs  # req_id -> k, kept by vLLM's input batch
        ours = {r: n for r, n in plp.items() if _requested_k(runner.requests.get(r))}
        if not ours:
            return orig_plp(hidden_states, num_scheduled_tokens)
        for r in ours:
            del plp[r]  # vLLM's own loop must not see them
        try:
            finished = _score(hidden_states, num_scheduled_tokens, ours)
            return orig_plp(hidden_states, num_scheduled_tokens) if plp else {}
        finally:
            plp.update({r: n for r, n in ours.items() if r not in finished})

    def _score(hidden_states, num_scheduled_tokens, ours: dict[str, int]) -> set[str]:
        idx, tgt, spans = [], [], []
        for req_id in ours:
            n_tok = num_scheduled_tokens.get(req_id)
            if n_tok is None:  # preempted in prefill
                continue
            req = runner.requests[req_id]
            prompt = req.prompt_token_ids
            start_tok = req.num_computed_tokens + 1
            remaining = len(prompt) - start_tok
            done = n_tok > remaining  # vLLM's rule: in the == case the rows are returned in the next step
            n = remaining if done else n_tok
            if n > 0:
                off = int(runner.query_start_loc.np[runner.input_batch.req_id_to_index[req_id]])
                idx.append(np.arange(off, off + n))
                tgt.append(np.asarray(prompt[start_tok : start_tok + n], np.int64))
            spans.append((req_id, req, max(n, 0), done))
        if not spans:
            return set()
        kmax = max(ours[r] for r, *_ in spans)
        if idx:
            dev = hidden_states.device
            rows = torch.from_numpy(np.concatenate(idx)).to(dev)
            targets = torch.from_numpy(np.concatenate(tgt)).to(dev)
            packed = _topk_rows(runner.model.compute_logits, hidden_states.index_select(0, rows), targets, kmax,
                                kernel, vocab, chunk).cpu()
            STATS["steps"] += 1
        finished, a = set(), 0
        for req_id, req, n, done in spans:
            k = ours[req_id]
            if n:
                part = packed[a : a + n]
                a += n
                if k != kmax:  # requests of different k in one step: [lp | ids | target] of this k
                    part = torch.cat([part[:, :k], part[:, kmax : kmax + k], part[:, 2 * kmax :]], 1)
                chunks = getattr(req, "_raykd_chunks", None)
                if chunks is None:
                    chunks = req._raykd_chunks = []  # on the request state: dropped with it on preemption
                chunks.append(part)
            if done:
                chunks = getattr(req, "_raykd_chunks", None) or [torch.empty((0, 2 * k + 1))]
                ready[req_id] = (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).contiguous()
                req._raykd_chunks = None
                finished.add(req_id)
        return finished

    def execute_model(*args, **kwargs):
        c0 = time.thread_time()
        try:
            return orig_execute(*args, **kwargs)
        finally:
            STATS["model_cpu_s"] += time.thread_time() - c0

    def sample_tokens(*args, **kwargs):
        c0 = time.thread_time()
        try:
            out = orig_sample(*args, **kwargs)
            if ready:
                target = getattr(out, "_model_runner_output", out)  # AsyncGPUModelRunnerOutput wraps it
                if target is None or not hasattr(target, "prompt_token_id_logprobs_dict"):
                    raise RuntimeError("raykd top-k: no ModelRunnerOutput to attach the scores to")
                target.prompt_token_id_logprobs_dict = {**(target.prompt_token_id_logprobs_dict or {}), **ready}
                ready.clear()
            return out
        finally:
            STATS["model_cpu_s"] += time.thread_time() - c0

    runner._get_prompt_logprobs_dict = get_prompt_logprobs_dict
    runner.sample_tokens = sample_tokens
    runner.execute_model = execute_model
    import vllm

    runner._raykd_topk = {"kernel": kernel, "device": device, "chunk_logits": chunk, "runner": type(runner).__name__,
                          "vllm": vllm.__version__}
    return dict(runner._raykd_topk)


class TopkScoringExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); its methods are reached with collective_rpc."""

    def raykd_enable_topk(self) -> dict[str, Any]:
        return install(self.model_runner)

    def raykd_load_weights(self, weights: dict[str, Any]) -> int:
        """Replace the engine's weights by `weights` (HF parameter names -> (dtype, shape, bytes)) through vLLM's
        in-place reload (the model's own `load_weights`: q/k/v and gate/up fused as at start-up, then the same
        post-load processing): the on-policy student's weight sync (raykd/train/rollout_engine.py)."""
        import torch

        def tensor(packed: Any) -> torch.Tensor:  # (dtype, shape, bytes): see load_engine_weights
            dtype, shape, data = packed
            return torch.from_numpy(np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy())

        # vLLM's in-place reload: restores the loaders the post-load processing (CPU GEMM repacking) removed.
        self.model_runner.reload_weights(weights_iterator=((n, tensor(a)) for n, a in weights.items()),
                                         is_checkpoint_format=True)
        return len(weights)

    def raykd_topk_stats(self, reset: bool = True) -> dict[str, float]:
        out = dict(STATS)
        if reset:
            STATS.update(_ZERO)
        return out


async def load_engine_weights(engine: Any, weights: dict[str, Any], unavailable: str = "") -> None:
    """Front-end side of `raykd_load_weights`: new weights (HF names -> arrays) into an AsyncLLM's worker, then its
    prefix cache dropped so no KV entry of the old weights is reused. `unavailable`: why the extension is not
    installed in that engine ("" when it is)."""
    if unavailable:
        raise RuntimeError(f"loading weights needs raykd's vLLM worker extension, which cannot run here: {unavailable}")
    # Plain (dtype, shape, bytes) triples: vLLM's RPC decodes untyped arguments, and a numpy array would arrive as
    # its raw encoding, not as an array.
    packed = {name: (str(np.asarray(a).dtype), list(np.shape(a)), np.ascontiguousarray(a).tobytes())
              for name, a in weights.items()}
    await engine.collective_rpc("raykd_load_weights", args=(packed,))
    await engine.reset_prefix_cache()
