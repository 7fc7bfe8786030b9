"""Student memory and step time by strategy, precision and activation checkpointing, on 2 CPU workers.

    python benchmarks/student_scale.py                  # ~10-15 min on 2 idle cores
    python benchmarks/student_scale.py --steps 2 --configs ddp-fp32 fsdp-fp32      # a quick look

A ~105M-parameter Llama student (14 layers x 768, SwiGLU 2048, vocab 4096: the 4 x 256 tiny teacher's
tokenizer) is trained with raykd/train/student.py, exactly as a Ray Train worker runs it, on 2 gloo processes
(one torch thread each): the KD loss (alpha 0.5, T 2, top-20 signals of the teacher, computed before timing),
micro-batch 2 x 256 tokens of GSM8K, AdamW. Each configuration runs in fresh processes:

  ddp | fsdp  x  activation checkpointing off | on  x  fp32 | bf16

Per worker: the peak RSS (VmHWM) and the peak above the RSS before the student was built (libraries excluded:
the training state itself; the teacher's signals are scored once by the parent); the initial weights are memory-mapped .npy files, read the
way a worker reads Ray's object store (zero-copy, only the pages touched count). Step time: the mean of
--steps steps after one warm-up step. Also: the memory model's estimate (raykd/train/plan.py) beside.
Writes benchmarks/results/student_scale.json and .md (machine, load averages, command).

Peak RSS counts what glibc keeps after a free as well as live tensors: by default a freed block above the
dynamic mmap threshold raises that threshold (up to 32 MiB), so FSDP's per-layer all-gather buffers and
unsharded gradients (28 MiB a layer here) are later served from the heap and stay resident. With
`MALLOC_MMAP_THRESHOLD_=65536` the threshold is fixed and every block >= 64 KiB is returned on free, so the
peak follows the live tensors (what a GPU's max_memory_allocated measures): run both, the command line says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
STUDENT = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=14, num_attention_heads=12,
               num_key_value_heads=12, head_dim=64, max_position_embeddings=512, tie_word_embeddings=False)
VOCAB = 4096  # the reference teacher's (benchmarks/common.py)
CONFIGS = [f"{s}-{p}{'-ac' if ac else ''}" for s in ("ddp", "fsdp") for p in ("fp32", "bf16") for ac in (False, True)]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def gsm8k_blocks(teacher: Path, seq_len: int, n: int) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    ids: list[int] = []
    with GSM8K.open() as f:
        for line in f:
            rec = json.loads(line)
            ids += tok(rec["question"] + "\n" + rec["answer"] + "\n\n").input_ids
            if len(ids) >= seq_len * n:
                break
    return np.asarray(ids[: seq_len * n], np.int64).reshape(n, seq_len)


def worker(rank: int, world: int, port: int, spec: dict, out: str) -> None:
    """One Train worker's part of a configuration: build, precompute signals, time steps, measure memory."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from transformers import LlamaConfig

    from raykd.config import DistillConfig
    from raykd.loss.objective import Objective
    from raykd.data.order import micro_batch_indices
    from raykd.train.student import MicroBatch, StudentTrainer

    strategy, precision, *rest = spec["name"].split("-")
    cfg = DistillConfig.model_validate({
        "teacher": {"path": spec["teacher"]}, "data": {"seq_len": spec["seq_len"]},
        "loss": {"alpha": 0.5, "temperature": 2.0, "top_k": 20},
        "train": {"num_workers": world, "batch_size": spec["batch"], "strategy": strategy, "precision": precision,
                  "activation_checkpointing": bool(rest), "max_steps": 100, "lr": 1e-4, "warmup_steps": 0},
    })
    s_config = LlamaConfig(**spec["student_config"])
    state = {name: np.load(Path(spec["weights"]) / f"{name}.npy", mmap_mode="r") for name in spec["names"]}
    import pickle

    blocks = np.load(spec["blocks"])
    signals = pickle.loads(Path(spec["signals"]).read_bytes())  # the teacher's, scored once by the parent
    rows = micro_batch_indices(len(blocks), spec["batch"], 1, world, rank, 0, 0)
    micro = []
    for _ in range(spec["steps"] + 1):
        r = next(rows)
        micro.append(MicroBatch(blocks[r], signals.take_sequences(r.tolist())))
    del signals
    base_kib = status_kib("VmRSS")
    objective = Objective(cfg, s_config, use_teacher=True, world=world, rank=rank)
    trainer = StudentTrainer(cfg, s_config, state, objective, device=torch.device("cpu"), rank=rank, world=world)
    times = []
    for step, mb in enumerate(micro):
        dist.barrier()
        t0 = time.perf_counter()
        trainer.step(step, [mb])
        dist.barrier()
        if step > 0:  # step 0 warms up (allocations, FSDP lazy init)
            times.append(time.perf_counter() - t0)
    peak_kib = status_kib("VmHWM")
    result = {"rank": rank, "base_rss_mib": base_kib / 1024, "peak_rss_mib": peak_kib / 1024,
              "peak_above_base_mib": (peak_kib - base_kib) / 1024, "step_s": times,
              "tokens_per_s": spec["batch"] * spec["seq_len"] * world / float(np.mean(times))}
    (Path(out) / f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run_config(spec: dict) -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(worker, args=(2, port, spec, out), nprocs=2, join=True, start_method="spawn")
        return [json.loads((Path(out) / f"{r}.json").read_text()) for r in range(2)]


def estimate(name: str, batch: int, seq_len: int) -> float:
    from transformers import LlamaConfig

    from raykd.config import DistillConfig
    from raykd.train.plan import GIB, student_memory

    strategy, precision, *rest = name.split("-")
    cfg = DistillConfig.model_validate({"data": {"seq_len": seq_len}, "train": {
        "num_workers": 2, "batch_size": batch, "strategy": strategy, "precision": precision,
        "activation_checkpointing": bool(rest)}})
    return student_memory(cfg, LlamaConfig(vocab_size=VOCAB, **STUDENT)).total / GIB * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--tag", default="", help="suffix of the results files")
    args = ap.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common import describe, loadavg, reference_teacher, write_results

    teacher = reference_teacher()
    config = LlamaConfig(vocab_size=VOCAB, **STUDENT)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    log(f"student {params / 1e6:.1f}M params; teacher {teacher}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        weights.mkdir()
        names = []
        for name, t in model.state_dict().items():
            np.save(weights / f"{name}.npy", t.numpy())
            names.append(name)
        del model
        import pickle

        from raykd.teacher.hf_backend import HFTeacherBackend

        blocks = gsm8k_blocks(teacher, args.seq_len, 2 * args.batch * (args.steps + 1))
        blocks_path, signals_path = Path(tmp) / "blocks.npy", Path(tmp) / "signals.pkl"
        np.save(blocks_path, blocks)
        signals_path.write_bytes(pickle.dumps(HFTeacherBackend(str(teacher), device="cpu").score(list(blocks), 20)))
        rows = {}
        loads = [loadavg()]
        for name in args.configs:
            spec = {"name": name, "teacher": str(teacher), "student_config": config.to_dict(), "weights": str(weights),
                    "names": names, "blocks": str(blocks_path), "signals": str(signals_path), "batch": args.batch, "seq_len": args.seq_len,
                    "steps": args.steps}
            t0 = time.perf_counter()
            ranks = run_config(spec)
            loads.append(loadavg())
            rows[name] = {"ranks": ranks, "estimate_mib": estimate(name, args.batch, args.seq_len),
                          "peak_above_base_mib": max(r["peak_above_base_mib"] for r in ranks),
                          "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks),
                          "step_s": float(np.mean([t for r in ranks for t in r["step_s"]])),
                          "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in ranks])),
                          "load_avg_after": loads[-1]}
            log(f"{name}: peak {rows[name]['peak_rss_mib']:.0f} MiB (+{rows[name]['peak_above_base_mib']:.0f}), "
                f"step {rows[name]['step_s']:.2f} s, load {loads[-1][0]} ({time.perf_counter() - t0:.0f} s)")
    machine = describe()
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")  # fixed: glibc returns freed large blocks (module doc)
    command = (f"MALLOC_MMAP_THRESHOLD_={malloc} " if malloc else "") + "python benchmarks/student_scale.py " + \
        " ".join(sys.argv[1:])
    data = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command.strip(),
            "machine": machine, "student_params": params, "batch": args.batch, "seq_len": args.seq_len,
            "steps": args.steps, "load_avg": loads, "configs": rows}
    write_results("student_scale", args.tag, data, render)


def render(d: dict) -> str:
    from common import describe_line

    rows = d["configs"]
    lines = [
        "# Student memory and step time: DDP vs FSDP, activation checkpointing, fp32 vs bf16",
        "",
        f"`{d['command']}` on {d['date'][:10]}: {describe_line(d['machine'])}. Load average (1/5/15 min) before: "
        f"{d['load_avg'][0]}, after the last configuration: {d['load_avg'][-1]}.",
        "",
        f"Student: {d['student_params'] / 1e6:.1f}M-parameter Llama (14 x 768, vocab 4096), 2 gloo workers (one "
        f"torch thread each), micro-batch {d['batch']} x {d['seq_len']} tokens per worker, KD loss with the tiny "
        f"teacher's top-20 signals, AdamW. Peak = VmHWM of the worker process; 'training state' = peak minus the "
        f"RSS before the student was built (libraries excluded). Step time: mean of {d['steps']} steps after a "
        "warm-up step. Estimate: raykd/train/plan.py's memory model (CPU: no runtime term).",
        "",
        "| configuration | peak RSS / worker (MiB) | training state (MiB) | vs DDP same precision+AC | estimate (MiB) "
        "| step (s) | student tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ref = rows.get(name.replace("fsdp", "ddp"))
        ratio = f"{r['peak_above_base_mib'] / ref['peak_above_base_mib']:.2f}x" if ref and name.startswith("fsdp") else ""
        lines.append(f"| {name} | {r['peak_rss_mib']:,.0f} | {r['peak_above_base_mib']:,.0f} | {ratio} | "
                     f"{r['estimate_mib']:,.0f} | {r['step_s']:.2f} | {r['tokens_per_s']:,.0f} |")
    lines += ["", "Load average after each configuration: " + ", ".join(
        f"{n} {r['load_avg_after'][0]}" for n, r in rows.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
