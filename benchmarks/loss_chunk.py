"""Student step time by `signals.loss_chunk_size`: the whole batch's logits vs the loss per chunk of rows.

    python benchmarks/loss_chunk.py                      # ~3 min on 2 cores
    python benchmarks/loss_chunk.py --sizes 0 128 512 2048 --repeats 3

The peer_trl shape (benchmarks/peer_trl.py): the reference teacher (4 x 256, vocab 4096) scores GSM8K text
once (top-20); its 2 x 128 student takes training steps exactly as a Train worker does (raykd/train/student.py
StudentTrainer, one torch thread, batch 8 x 512 tokens, alpha 0.5, T 2, forward KL with the tail bucket).
Each chunk size (0 = null: full logits) runs in a fresh process, in rotated order, `--repeats` times; a
measurement is the mean of 5 steps after 3 warm-up steps. Writes benchmarks/results/loss_chunk.md and .json
(date, machine, load average, command).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
BATCH, SEQ, K = 8, 512, 20


def child(chunk: int) -> dict:
    import numpy as np
    import torch

    from common import reference_teacher
    from transformers import AutoTokenizer

    from raykd.config import DistillConfig
    from raykd.loss.objective import Objective
    from raykd.models import build_student
    from raykd.teacher.hf_backend import HFTeacherBackend
    from raykd.train.student import MicroBatch, StudentTrainer

    torch.set_num_threads(1)
    teacher = str(reference_teacher())
    cfg = DistillConfig.model_validate({
        "teacher": {"path": teacher}, "student": {"num_layers": 2, "hidden_size": 128}, "data": {"seq_len": SEQ},
        "loss": {"alpha": 0.5, "temperature": 2.0, "top_k": K},
        "train": {"num_workers": 1, "batch_size": BATCH, "max_steps": 100},
        "signals": {"loss_chunk_size": chunk or None}})
    student, _ = build_student(teacher, cfg.student, 0)
    tok = AutoTokenizer.from_pretrained(teacher)
    recs = [json.loads(x) for x in GSM8K.read_text().splitlines()[:800]]
    ids = np.asarray(tok("\n\n".join(r["question"] + "\n" + r["answer"] for r in recs)).input_ids, np.int32)
    ids = ids[: 4 * BATCH * SEQ].reshape(4, BATCH, SEQ)
    hf = HFTeacherBackend(teacher, device="cpu")
    sigs = [hf.score(list(ids[i]), K) for i in range(4)]
    state = {k: v.detach().numpy() for k, v in student.state_dict().items()}
    trainer = StudentTrainer(cfg, student.config, state, Objective(cfg, student.config, use_teacher=True),
                             device=torch.device("cpu"))
    mask = np.ones((BATCH, SEQ), np.uint8)
    for i in range(3):
        trainer.step(i, [MicroBatch(ids[i % 4], sigs[i % 4], None, mask, False)])
    t = time.perf_counter()
    for i in range(3, 8):
        trainer.step(i, [MicroBatch(ids[i % 4], sigs[i % 4], None, mask, False)])
    step = (time.perf_counter() - t) / 5
    return {"chunk": chunk, "step_s": step, "tokens_per_s": BATCH * SEQ / step, "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child)))
        return
    from common import describe, describe_line, reference_teacher

    reference_teacher()  # built once (cached) before any timing
    start, rows = os.getloadavg(), []
    for r in range(a.repeats):
        order = a.sizes[r % len(a.sizes):] + a.sizes[: r % len(a.sizes)]
        for c in order:
            out = subprocess.run([sys.executable, __file__, "--child", str(c)], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[loss_chunk] {rows[-1]}", file=sys.stderr, flush=True)
    data = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": describe_line(describe()),
            "command": " ".join(["python", "benchmarks/loss_chunk.py", *sys.argv[1:]]),
            "load_start": start, "load_end": os.getloadavg(), "rows": rows}

    def render(d: dict) -> str:
        base = statistics.mean(r["tokens_per_s"] for r in d["rows"] if r["chunk"] == 0) if any(
            r["chunk"] == 0 for r in d["rows"]) else None
        lines = ["# Student step time by signals.loss_chunk_size", "",
                 f"- date: {d['date']}", f"- machine: {d['machine']}", f"- command: `{d['command']}`",
                 f"- load average (1/5/15 min): {d['load_start']} at the start, {d['load_end']} at the end",
                 f"- shape: the peer_trl student (2 x 128, vocab 4096), batch {BATCH} x {SEQ} tokens, top-{K} "
                 "signals, alpha 0.5, T 2, one torch thread; mean of 5 steps after 3 warm-up steps, a fresh "
                 "process per measurement, sizes in rotated order", "",
                 "| loss_chunk_size | student tokens/s (each measurement) | mean | vs full logits |", "|---|---|---|---|"]
        for c in sorted({r["chunk"] for r in d["rows"]}):
            v = [r["tokens_per_s"] for r in d["rows"] if r["chunk"] == c]
            m = statistics.mean(v)
            lines.append(f"| {c or 'null (full logits)'} | {', '.join(f'{x:,.0f}' for x in v)} | {m:,.0f} | "
                         f"{m / base:.2f}x |" if base else f"| {c} | {', '.join(f'{x:,.0f}' for x in v)} | {m:,.0f} | |")
        return "\n".join(lines) + "\n"

    from common import write_results

    write_results("loss_chunk", None, data, render)


if __name__ == "__main__":
    main()
