"""Teacher signals at wire speed, measured in one command (issue 4):

  1. format:  bytes per scored token by top-k, unpacked arrays vs packed Arrow (memory), IPC (wire) and
              Parquet (disk), at the tiny teacher's vocabulary (real signals) and at 128,256 (Llama-3 size,
              synthetic ids); and the KD loss from the packed form vs the unpacked one (relative error);
  2. loss:    peak memory and time of the full-vocabulary KD loss (forward + backward, student and teacher
              logits from hidden states x lm_head) at vocab 128,256: naive `F.kl_div` on full logits vs
              raykd.loss.chunked, and the top-k loss naive vs chunked. Each measurement runs in a fresh
              subprocess and reports its max RSS (`resource.getrusage`), capped with RLIMIT_AS below the
              machine's available memory so a naive run that does not fit fails cleanly;
  3. e2e:     student tokens/s of the Ray pipeline (teacher in Serve, student in Train, the real
              `raykd distill` path) vs the naive in-process loop (teacher forward then student step, one
              process, same models, same loss), teacher_wait_fraction, and a second epoch with the signal
              cache vs without (benchmarks/signals_bench_e2e.py).

    python benchmarks/signals_bench.py                    # everything (~30 min on 2 cores)
    python benchmarks/signals_bench.py --only format loss
    python benchmarks/signals_bench.py --quick            # small sizes, a smoke run

Writes benchmarks/results/signals.json and signals.md. The machine is shared: every section records the
load average next to its timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
BIG_VOCAB = 128_256
GIB = 1 << 30


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "memory_gib": round(mem / GIB, 1), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "load_avg": os.getloadavg()}


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 * GIB


# --------------------------------------------------------------------------------------------- 1. format
def default_teacher() -> str:
    from raykd.config import TeacherConfig
    from raykd.teacher.build import ensure_tiny_teacher

    return str(ensure_tiny_teacher(TeacherConfig().build))


def bench_format(ks: list[int], n_seqs: int) -> dict:
    import pyarrow.parquet as pq
    import torch

    from raykd.config import DataConfig, StudentConfig
    from raykd.data.blocks import tokenize_blocks
    from raykd.data.sources import load_texts
    from raykd.loss.kd import kl_topk
    from raykd.models import build_student, model_fingerprint
    from raykd.signals.format import bytes_per_token, pack, sequence_hash, to_ipc, unpack
    from raykd.signals import TeacherSignals
    from raykd.teacher.hf_backend import HFTeacherBackend

    torch.set_num_threads(2)
    teacher = default_teacher()
    backend = HFTeacherBackend(teacher)
    from transformers import AutoTokenizer

    blocks = tokenize_blocks(load_texts(DataConfig()), AutoTokenizer.from_pretrained(teacher), 128)[:n_seqs]
    student, _ = build_student(teacher, StudentConfig(num_layers=2, hidden_size=64), 0)
    with torch.no_grad():
        s_logits = student(input_ids=torch.as_tensor(blocks, dtype=torch.long)).logits[:, :-1].reshape(-1, backend.vocab_size)
    fp = model_fingerprint(teacher)
    hashes = [sequence_hash(b) for b in blocks]
    rows = []
    rng = np.random.default_rng(0)
    for vocab in (backend.vocab_size, BIG_VOCAB):
        for k in ks:
            if vocab == backend.vocab_size:
                sig = backend.score(list(blocks), k)
            else:  # the layout depends on vocab and k only: real log-probs, ids redrawn from the big vocabulary
                base = backend.score(list(blocks), k)
                ids = rng.integers(0, vocab, (base.num_rows, k)).astype(np.int32)
                sig = TeacherSignals(ids, base.topk_logprobs, base.tail_logprob, base.target_logprob, base.offsets)
            batch = pack(sig, vocab_size=vocab, teacher_fingerprint=fp, seq_hashes=hashes)
            with tempfile.TemporaryDirectory() as tmp:
                pq.write_table(batch_table(batch), f"{tmp}/s.parquet", compression="none", write_page_checksum=True)
                disk = os.path.getsize(f"{tmp}/s.parquet")
            row = {"vocab": vocab, "k": k, "unpacked": sig.nbytes() / sig.num_rows,
                   "arrow": bytes_per_token(batch), "ipc": len(to_ipc(batch)) / sig.num_rows,
                   "parquet": disk / sig.num_rows}
            if vocab == backend.vocab_size:
                back = unpack(batch)
                for tail in ("bucket", "renormalize"):
                    vals = []
                    for s in (sig, back):
                        vals.append(kl_topk(s_logits, torch.as_tensor(s.topk_ids), torch.as_tensor(s.topk_logprobs),
                                            torch.as_tensor(s.tail_logprob), 2.0, tail=tail).item())
                    # k=1 renormalised compares one outcome: both losses are exactly 0.
                    row[f"kl_rel_err_{tail}"] = abs(vals[1] - vals[0]) / abs(vals[0]) if vals[0] else 0.0
            rows.append(row)
            log(f"format vocab={vocab} k={k}: {row['unpacked']:.1f} -> arrow {row['arrow']:.1f}, "
                f"ipc {row['ipc']:.1f}, parquet {row['parquet']:.1f} bytes/token")
    return {"teacher": Path(teacher).name, "sequences": len(blocks), "seq_len": 128, "rows": rows}


def batch_table(batch):
    import pyarrow as pa

    return pa.Table.from_batches([batch])


# --------------------------------------------------------------------------------------------- 2. loss
def loss_worker(method: str, n: int, vocab: int, hidden: int, chunk: int) -> dict:
    """One measurement (runs in its own process): forward + backward of one loss; max RSS and time."""
    import torch
    import torch.nn.functional as F

    from raykd.loss import chunked, kd

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(n, hidden, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.05).requires_grad_()
    th = torch.randn(n, hidden, generator=g) * 0.5
    tw = torch.randn(vocab, hidden, generator=g) * 0.05
    k, temperature = 20, 2.0
    if "topk" in method:
        with torch.no_grad():  # teacher signals as they arrive: (n, k) only, built chunk-wise here
            ids = torch.empty(n, k, dtype=torch.long)
            lp = torch.empty(n, k)
            tail = torch.empty(n)
            for lo in range(0, n, 256):
                t = torch.log_softmax(th[lo : lo + 256] @ tw.T, -1)
                lp[lo : lo + 256], ids[lo : lo + 256] = t.topk(k, -1)
                tail[lo : lo + 256] = torch.log1p(-lp[lo : lo + 256].exp().sum(-1).clamp(max=1 - 1e-7))
            del t
    base_rss = current_rss()
    start = time.perf_counter()
    if method == "naive_full":  # the seed design: both full logits, F.kl_div
        s_logp = F.log_softmax(h @ w.T / temperature, -1)
        with torch.no_grad():
            t_logp = F.log_softmax(th @ tw.T / temperature, -1)
        loss = F.kl_div(s_logp, t_logp, reduction="batchmean", log_target=True) * temperature**2
    elif method == "chunked_full":
        loss = chunked.kl_full_chunked(h, w, th, tw, temperature, chunk_size=chunk)
    elif method == "naive_topk":
        loss = kd.kl_topk(h @ w.T, ids, lp, tail, temperature)
    elif method == "chunked_topk":
        loss = chunked.kl_topk_chunked(h, w, ids, lp, tail, temperature, chunk_size=chunk)
    else:
        raise ValueError(method)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"loss": float(loss), "seconds": seconds, "peak_rss_gib": peak / GIB, "base_rss_gib": base_rss / GIB,
            "loss_peak_gib": (peak - base_rss) / GIB, "grad_norm": float(h.grad.norm())}


def current_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_loss_subprocess(method: str, n: int, vocab: int, hidden: int, chunk: int) -> dict:
    cap = int(min(22 * GIB, available_bytes() - 2 * GIB))
    code = (f"import resource, json, sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap})); "
            f"from benchmarks.signals_bench import loss_worker; "
            f"print(json.dumps(loss_worker({method!r}, {n}, {vocab}, {hidden}, {chunk})))")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    row = {"method": method, "tokens": n, "vocab": vocab, "hidden": hidden, "chunk": chunk if "chunked" in method else None,
           "cap_gib": round(cap / GIB, 1), "load_avg": os.getloadavg()[0]}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        row.update(error=last[:200], fits=False)
        log(f"loss {method} N={n}: did not fit / failed after {time.perf_counter() - start:.0f}s ({last[:120]})")
        return row
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]), fits=True)
    log(f"loss {method} N={n}: peak RSS {row['peak_rss_gib']:.2f} GiB (loss part {row['loss_peak_gib']:.2f}), "
        f"{row['seconds']:.1f}s")
    return row


def bench_loss(naive_ns: list[int], chunked_ns: list[int], hidden: int, chunk: int) -> dict:
    rows = []
    for n in naive_ns:
        rows.append(run_loss_subprocess("naive_full", n, BIG_VOCAB, hidden, chunk))
        if not rows[-1]["fits"]:
            break
    for n in chunked_ns:
        rows.append(run_loss_subprocess("chunked_full", n, BIG_VOCAB, hidden, chunk))
    for n in naive_ns[1:2] or naive_ns[:1]:
        rows.append(run_loss_subprocess("naive_topk", n, BIG_VOCAB, hidden, chunk))
        rows.append(run_loss_subprocess("chunked_topk", n, BIG_VOCAB, hidden, chunk))
    fit = [r for r in rows if r["method"] == "naive_full" and r["fits"]]
    summary = {}
    if fit:
        n = fit[-1]["tokens"]
        chunked = next((r for r in rows if r["method"] == "chunked_full" and r["tokens"] == n and r["fits"]), None)
        if chunked:
            summary = {"tokens": n, "naive_peak_gib": fit[-1]["peak_rss_gib"], "chunked_peak_gib": chunked["peak_rss_gib"],
                       "ratio_total": chunked["peak_rss_gib"] / fit[-1]["peak_rss_gib"],
                       "ratio_loss_part": chunked["loss_peak_gib"] / fit[-1]["loss_peak_gib"],
                       "naive_seconds": fit[-1]["seconds"], "chunked_seconds": chunked["seconds"]}
    return {"vocab": BIG_VOCAB, "hidden": hidden, "chunk": chunk, "rows": rows, "largest_naive_that_fits": summary}


# --------------------------------------------------------------------------------------------- report
def write_report(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "signals.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [f"# Teacher signals benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {m['cpus']}-core {m['processor']} CPU, {m['memory_gib']} GiB, no GPU; shared "
             f"(load average at start {m['load_avg'][0]:.1f}). Command: `python benchmarks/signals_bench.py`.", ""]
    if "format" in results:
        f = results["format"]
        lines += ["## Bytes per scored token", "",
                  f"Real signals of the tiny teacher on {f['sequences']} builtin sequences of {f['seq_len']} tokens; at "
                  f"vocab {BIG_VOCAB:,} the same log-probs with ids drawn from the big vocabulary. KL rel. err: "
                  "T=2 top-k KD loss of the (untrained, teacher-initialised) student, packed vs unpacked signals.", "",
                  "| vocab | k | unpacked arrays | packed Arrow | IPC (wire) | Parquet (disk) | KL rel. err bucket | renormalize |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in f["rows"]:
            kl = (f"{r['kl_rel_err_bucket']:.1e} | {r['kl_rel_err_renormalize']:.1e}" if "kl_rel_err_bucket" in r
                  else "– | –")
            lines.append(f"| {r['vocab']:,} | {r['k']} | {r['unpacked']:.1f} | {r['arrow']:.1f} | {r['ipc']:.1f} | "
                         f"{r['parquet']:.1f} | {kl} |")
        lines.append("")
    if "loss" in results:
        lo = results["loss"]
        lines += ["## KD loss memory and time (forward + backward)", "",
                  f"Vocab {lo['vocab']:,}, hidden {lo['hidden']}, T=2, student and teacher logits from hidden "
                  f"states × lm_head; chunked: {lo['chunk']} rows per chunk. Peak = max RSS of a fresh process "
                  "(inputs and weights included); loss part = peak − RSS after the inputs were built.", "",
                  "| method | tokens | peak RSS GiB | loss part GiB | seconds | note |", "|---|---:|---:|---:|---:|---|"]
        for r in lo["rows"]:
            if r["fits"]:
                lines.append(f"| {r['method']} | {r['tokens']} | {r['peak_rss_gib']:.2f} | {r['loss_peak_gib']:.2f} | "
                             f"{r['seconds']:.1f} | load {r['load_avg']:.1f} |")
            else:
                lines.append(f"| {r['method']} | {r['tokens']} | – | – | – | did not fit under {r['cap_gib']} GiB "
                             f"(`{r['error'][:60]}`) |")
        s = lo["largest_naive_that_fits"]
        if s:
            lines += ["", f"At {s['tokens']} tokens (the largest the naive loss fits here): chunked peak "
                      f"{s['chunked_peak_gib']:.2f} GiB vs naive {s['naive_peak_gib']:.2f} GiB = "
                      f"**{s['ratio_total']:.1%}** (loss part alone: {s['ratio_loss_part']:.1%}); time "
                      f"{s['chunked_seconds']:.1f}s vs {s['naive_seconds']:.1f}s."]
        lines.append("")
    if "e2e" in results:
        from benchmarks.signals_bench_e2e import report_lines

        lines += report_lines(results["e2e"])
    (RESULTS / "signals.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {RESULTS / 'signals.md'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=["format", "loss", "e2e"], default=["format", "loss", "e2e"])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--hidden", type=int, default=256, help="hidden width of the loss benchmark's lm_heads")
    p.add_argument("--chunk", type=int, default=256, help="rows per chunk of the chunked losses")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    results: dict = {"machine": machine()}
    previous = RESULTS / "signals.json"
    if previous.is_file():  # keep sections not re-run
        results = {**json.loads(previous.read_text()), **results}
    if "format" in args.only:
        results["format"] = bench_format([1, 5, 10, 20, 32, 64], 8 if args.quick else 64)
    if "loss" in args.only:
        if args.quick:
            results["loss"] = bench_loss([512], [512, 1024], args.hidden, args.chunk)
        else:
            results["loss"] = bench_loss([1024, 2048, 4096, 8192], [1024, 4096, 8192, 16384], args.hidden, args.chunk)
    if "e2e" in args.only:
        from benchmarks.signals_bench_e2e import bench_e2e

        results["e2e"] = bench_e2e(default_teacher(), quick=args.quick)
    write_report(results)


if __name__ == "__main__":
    main()
