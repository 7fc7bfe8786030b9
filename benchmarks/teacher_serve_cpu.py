"""Where the CPU goes while a vLLM teacher scores through Ray Serve: per process, with and without vLLM's busy wait.

    python benchmarks/teacher_serve_cpu.py                              # float32 and bfloat16, k = 20, ~4 min
    python benchmarks/teacher_serve_cpu.py --dtypes float32 --seconds 10

For each setting of `teacher.vllm.busy_wait` (true: vLLM's executor, whose engine core spins while its worker
computes; false: raykd's default on CPU, raykd/teacher/vllm_executor.py) one Serve replica of the quickstart's
teacher scores 128-token sequences of tinyshakespeare as the Train workers call it (`SignalSource`: sequence
hashes, `score_packed`, unpacking here; 16 sequences a request, 8 in flight) for --seconds after a warm-up. It
reports prompt tokens/s and the CPU each process used over that window, in cores (CPU seconds / wall seconds):
vLLM's engine core, vLLM's model worker, the Serve replica (front end, packing), this caller, and the rest.
Writes benchmarks/results/teacher_serve_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import psutil
from teacher_throughput import QUICKSTART_BUILD, ROOT, cpu_facts, load, log, prompts_for

from shared_paths import add_text_argument, public_name

ROLES = ("engine core", "model worker", "Serve replica", "caller", "other")


def role(proc: psutil.Process, replica_pid: int) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    if "EngineCore" in cmd:
        return "engine core"
    if "VLLM::Worker" in cmd:
        return "model worker"
    return {replica_pid: "Serve replica", psutil.Process().pid: "caller"}.get(proc.pid, "other")


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def measure(model: str, dtype: str, busy_wait: bool, prompts: list[np.ndarray], args) -> dict:
    import ray
    from ray import serve

    from raykd.config import TeacherConfig
    from raykd.teacher.service import launch_teacher
    from raykd.train.signal_source import SignalSource

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = TeacherConfig(path=model, backend="vllm", num_cpus=1, max_ongoing_requests=16, app_name="bench-teacher",
                            vllm=dict(dtype=dtype, kv_cache_memory_bytes=256 << 20, busy_wait=busy_wait))
        handle = launch_teacher(cfg, model, "bench")
        info = handle.info.remote().result()
        batches = [np.stack(prompts[i : i + 16]) for i in range(0, len(prompts), 16)]
        source = SignalSource(lambda seqs, k: handle.score_packed.remote(seqs, k), top_k=args.k, fingerprint="bench")

        def run(n: int) -> int:
            pending, tokens = [], 0
            for batch in batches[:n]:
                pending.append(source.submit(batch))
                tokens += batch.size
                if len(pending) >= 8:
                    pending.pop(0).result()
            for p in pending:
                p.result()
            return tokens

        run(len(batches))  # warm-up
        procs = [p for p in psutil.process_iter() if p.pid != 0]
        before, t0, tokens, load0 = cpu_seconds(procs), time.perf_counter(), 0, load()
        while time.perf_counter() - t0 < args.seconds:
            tokens += run(len(batches))
        wall = time.perf_counter() - t0
        after = cpu_seconds(procs)
        cores = dict.fromkeys(ROLES, 0.0)
        for p in procs:
            if p.pid in before and p.pid in after:
                cores[role(p, info.pid)] += (after[p.pid] - before[p.pid]) / wall
        row = {"dtype": dtype, "busy_wait": busy_wait, "scoring": info.scoring, "tokens_per_s": round(tokens / wall),
               "seconds": round(wall, 1), "cores": {r: round(c, 3) for r, c in cores.items()},
               "load": [load0, load()]}
        log(f"{dtype} busy_wait={busy_wait}: {row['tokens_per_s']:,} tokens/s; cores {row['cores']}")
        return row
    finally:
        serve.shutdown()
        ray.shutdown()


def write(rows: list[dict], args, cpu: dict, started: str) -> None:
    out = ROOT / "benchmarks" / "results" / "teacher_serve_cpu"
    command = "python benchmarks/teacher_serve_cpu.py " + " ".join(public_name(a) for a in args.argv)
    out.with_suffix(".json").write_text(json.dumps({"date": started, "command": command.strip(), "cpu": cpu,
                                                    "k": args.k, "rows": rows}, indent=1))
    lines = [
        "# CPU per process while a vLLM teacher scores through Serve", "",
        f"{started}, `{command.strip()}`. CPU: {cpu['model']}, {cpu['cores']} cores (avx512_bf16 "
        f"{'yes' if cpu['avx512_bf16'] else 'no'}, amx_bf16 {'yes' if cpu['amx_bf16'] else 'no'}), "
        f"{cpu['memory_gib']} GiB, no GPU. The quickstart's teacher (vocab 980), k = {args.k}, 128-token sequences "
        "of tinyshakespeare, 16 a request, 8 in flight, through `SignalSource` as training calls it; "
        f"{args.seconds:g} s after a warm-up. Cores = CPU seconds / wall seconds of each process over that window.", "",
        "| dtype | teacher.vllm.busy_wait | tokens/s | " + " | ".join(ROLES) + " | load before -> after |",
        "|---|---|---|" + "---|" * len(ROLES) + "---|",
    ]
    for r in rows:
        lines.append(f"| {r['dtype']} | {str(r['busy_wait']).lower()} | {r['tokens_per_s']:,} | "
                     + " | ".join(f"{r['cores'][k]:.2f}" for k in ROLES) + f" | {r['load'][0]} -> {r['load'][1]} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF model dir; default: the quickstart's tiny teacher (cached/built)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seqs", type=int, default=512)
    add_text_argument(p)
    args = p.parse_args()
    import sys

    args.argv = sys.argv[1:]
    started, cpu = time.strftime("%Y-%m-%d %H:%M %Z"), cpu_facts()
    model = args.model
    if model is None:
        from raykd.config import TinyTeacherConfig
        from raykd.teacher.build import ensure_tiny_teacher

        model = str(ensure_tiny_teacher(TinyTeacherConfig(**QUICKSTART_BUILD)))
    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    prompts = prompts_for(model, args.seqs, 128, vocab, args.text)
    rows = []
    for dtype in args.dtypes.split(","):
        for busy_wait in (True, False):
            rows.append(measure(model, dtype, busy_wait, prompts, args))
            write(rows, args, cpu, started)


if __name__ == "__main__":  # vLLM on CPU spawns its engine process: the engine must start under this guard
    main()
