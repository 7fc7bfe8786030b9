"""Shared by benchmarks/student_scale.py and benchmarks/peer_trl.py: the reference teacher, and what a result
file states about the machine (CPU model and the flags that matter for bf16: avx512_bf16, amx_bf16; cores,
memory, load average, library versions).

    from common import describe, describe_line, loadavg, reference_teacher, write_results
    teacher = reference_teacher()      # tiny Llama 4 x 256, vocab 4096 (built once, cached)
    write_results("peer_trl", tag, data, render)   # benchmarks/results/peer_trl[_tag].json + .md, md printed
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

# raykd's tiny teacher at the width of the benchmarks' reference model (4 x 256, head_dim 64).
TEACHER = dict(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688,
               max_steps=300, max_minutes=3.0)
VOCAB = 4096


def reference_teacher() -> Path:
    """raykd's tiny teacher (TEACHER, trained on the builtin corpus; cached) with its vocabulary padded to 4096.

    The builder's byte-level BPE stops at ~1k tokens on that corpus (merges never cross words), so the
    trained rows are kept and the embeddings and lm_head are resized to 4096 rows (the new ones are never a
    label: the tokenizer does not produce them). Speed depends on the width of the logits, not on the rows'
    values: this is the 4 x 256, vocab 4096 model raykd's peer comparisons are stated for.
    """
    from raykd.config import TinyTeacherConfig, default_cache_dir
    from raykd.teacher.build import ensure_tiny_teacher

    base = ensure_tiny_teacher(TinyTeacherConfig(**TEACHER))
    out = default_cache_dir() / "teachers" / f"{base.name}-v{VOCAB}"
    if not (out / "config.json").is_file():
        import shutil

        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model.resize_token_embeddings(VOCAB, mean_resizing=False)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        for f in base.iterdir():
            if f.name.startswith("tokenizer") or f.name == "raykd_teacher.json":
                shutil.copy(f, tmp / f.name)
        tmp.rename(out)
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def describe() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.SubprocessError):
        pass
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal")), 0)
    import torch
    import transformers

    return {
        "cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "gpu": None,
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
    }


def describe_line(m: dict) -> str:
    bf16 = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if m[f]) or "no bf16 instructions"
    return (f"{m['cpu']} ({bf16}), {m['cores']} cores, {m['memory_gib']} GiB, no GPU; Python {m['python']}, "
            f"torch {m['torch']}, transformers {m['transformers']}")


def write_results(name: str, tag: str | None, data: dict, render) -> None:
    """benchmarks/results/<name>[_<tag>].json (the data) and .md (`render(data)`, also printed)."""
    import json

    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    stem = name + (f"_{tag}" if tag else "")
    (results / f"{stem}.json").write_text(json.dumps(data, indent=2))
    (results / f"{stem}.md").write_text(render(data))
    print(render(data))
