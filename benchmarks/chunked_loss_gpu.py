"""Peak GPU memory and time of the chunked KD loss vs naive `F.kl_div` on full logits, vocab 128k.

    python benchmarks/chunked_loss_gpu.py --out benchmarks/results/chunked_loss_gpu.md

Both start from the same inputs — student final hidden states `(N, H)` + lm_head `(V, H)`, teacher hidden
states + lm_head — and compute loss + backward to the student. The naive path materialises the
`(N, V)` logits of both models (as a trainer that calls `model(...).logits` does); the chunked path
(raykd/loss/chunked.py) forms `(C, V)` logits one chunk at a time. Peak = max allocated during
forward + backward minus what the inputs hold. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from raykd.loss.kd import kl_full  # noqa: E402
from raykd.loss.chunked import kl_full_chunked  # noqa: E402


def naive(sh, sw, th, tw, T):
    s_logits = sh @ sw.T  # (N, V)
    with torch.no_grad():
        t_logits = th @ tw.T
    loss = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                    reduction="batchmean") * T * T
    loss.backward()
    return loss


def chunked(sh, sw, th, tw, T, chunk):
    loss = kl_full_chunked(sh, sw, th, tw, temperature=T, chunk_size=chunk)
    loss.backward()
    return loss


def measure(fn, n, H, V, **kw):
    torch.cuda.empty_cache()
    g = torch.Generator(device="cuda").manual_seed(0)
    sh = (torch.randn(n, H, device="cuda", generator=g) * 0.5).requires_grad_(True)
    sw = (torch.randn(V, H, device="cuda", generator=g) * 0.02).requires_grad_(True)
    th = torch.randn(n, H, device="cuda", generator=g) * 0.5
    tw = torch.randn(V, H, device="cuda", generator=g) * 0.02
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        loss = fn(sh, sw, th, tw, 2.0, **kw)
        torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return None
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base
    grad = sh.grad.clone()
    return float(loss), peak / 2**30, dt, grad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=128_256)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default="benchmarks/results/chunked_loss_gpu.md")
    args = ap.parse_args()
    V, H = args.vocab, args.hidden
    dev = torch.cuda.get_device_name()
    lines = [f"# Chunked vs naive full-vocabulary KD loss on {dev} (fp32, V={V}, H={H}, chunk={args.chunk})", "",
             "| tokens | naive peak GiB | chunked peak GiB | chunked / naive | naive s | chunked s | rel. loss diff | rel. grad diff |",
             "|---|---|---|---|---|---|---|---|"]
    for n in (1024, 2048, 4096, 8192, 16384, 32768):
        measure(chunked, 256, H, V, chunk=args.chunk)  # warm-up (kernels, allocator)
        c = measure(chunked, n, H, V, chunk=args.chunk)
        nv = measure(naive, n, H, V)
        if nv is None:
            lines.append(f"| {n} | OOM | {c[1]:.2f} | – | – | {c[2]:.3f} | – | – |")
        else:
            rel = abs(c[0] - nv[0]) / abs(nv[0])
            grel = float((c[3] - nv[3]).norm() / nv[3].norm())
            lines.append(f"| {n} | {nv[1]:.2f} | {c[1]:.2f} | {c[1] / nv[1]:.1%} | {nv[2]:.3f} | {c[2]:.3f} | {rel:.1e} | {grel:.1e} |")
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
