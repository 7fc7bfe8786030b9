"""End-to-end part of benchmarks/signals_bench.py: the Ray pipeline vs the naive in-process loop, and the cache.

    python benchmarks/signals_bench.py --only e2e

Same teacher (the default tiny teacher), same student (quickstart: 2 layers, width 64, initialised from
the teacher), same data (builtin text, blocks of 128), same loss (T=2, alpha=0.5, top-20, bucket tail),
batch 16 sequences per worker step.

- naive: one process, 2 torch threads; per step the teacher forward (HFTeacherBackend.score, the code the
  Serve replica runs) then the student step. tokens/s over the timed steps; `teacher_share` is the time
  spent in the teacher forward.
- ray: the `raykd distill` training path (raykd.train.fit.train_in_run: teacher on Serve, student on Ray Train,
  prefetch window 4, signals packed on the wire), cache off. student_tokens_per_s and
  teacher_wait_fraction as the loop logs them to MLflow, averaged over the log windows after the first.
- cache: two epochs with the cache on vs off; the second epoch's tokens/s and teacher requests.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def base_cfg(teacher: str, tmp: Path, name: str, **over):
    from raykd.config import DistillConfig

    tree = {
        "run_name": name, "output_dir": str(tmp / "out"),
        "teacher": {"path": teacher, "app_name": "raykd-bench-signals", "num_cpus": 1},
        "student": {"num_layers": 2, "hidden_size": 64},
        "data": {"seq_len": 128},
        "loss": {"temperature": 2.0, "alpha": 0.5, "top_k": 20},
        "train": {"num_workers": 1, "cpus_per_worker": 1, "batch_size": 16, "max_steps": 30, "log_every": 5,
                  "checkpoint_every": 1000, "warmup_steps": 3, "max_inflight": 4, "storage_path": str(tmp / "runs")},
        "mlflow": {"experiment": "signals-bench", "tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
        "signals": {"cache": False, "cache_dir": str(tmp / "signals")},
    }
    for dotted, value in over.items():
        node = tree
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return DistillConfig.model_validate(tree)


def naive_loop(cfg, steps: int, threads: int) -> dict:
    """Teacher forward then student step, in this process (the seed design), with `threads` torch threads."""
    import torch

    from raykd.train.prepare import prepare
    from raykd.loss.kd import distill_loss
    from raykd.models import build_student
    from raykd.teacher.hf_backend import HFTeacherBackend

    torch.set_num_threads(threads)
    prep = prepare(cfg)
    teacher = HFTeacherBackend(prep.teacher_path)
    student, _ = build_student(prep.teacher_path, cfg.student, cfg.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.train.lr)
    rng = np.random.default_rng(0)
    b, lc = cfg.train.batch_size, cfg.loss
    warm, t_teacher, start = 2, 0.0, 0.0
    for step in range(steps + warm):
        if step == warm:
            start, t_teacher = time.perf_counter(), 0.0
        batch = prep.train[rng.choice(len(prep.train), b, replace=False)]
        t0 = time.perf_counter()
        sig = teacher.score(list(batch), lc.top_k)
        t_teacher += time.perf_counter() - t0
        ids = torch.as_tensor(batch, dtype=torch.long)
        logits = student(input_ids=ids).logits[:, :-1].reshape(-1, teacher.vocab_size)
        loss, _, _ = distill_loss(logits, ids[:, 1:].reshape(-1), alpha=lc.alpha, temperature=lc.temperature,
                                  topk_ids=torch.as_tensor(sig.topk_ids), topk_logprobs=torch.as_tensor(sig.topk_logprobs),
                                  tail_logprob=torch.as_tensor(sig.tail_logprob), tail=lc.tail)
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": steps * b * cfg.data.seq_len / elapsed, "teacher_share": t_teacher / elapsed,
            "steps": steps, "threads": threads, "load_avg": os.getloadavg()[0]}


def ray_run(cfg) -> dict:
    """The real training path in an MLflow run; returns its metric histories."""
    from mlflow.tracking import MlflowClient

    from raykd.train.fit import train_in_run
    from raykd.train.prepare import prepare
    from raykd.tracking import resolve_tracking_uri, tracked_run

    prep = prepare(cfg)
    uri = resolve_tracking_uri(cfg.mlflow)
    start = time.perf_counter()
    with tracked_run(uri, cfg.mlflow.experiment, cfg.run_name) as run_id:
        train_in_run(cfg, prep, run_id, uri)
    client = MlflowClient(uri)
    keys = ("student_tokens_per_s", "teacher_wait_fraction", "signal_cache_hits", "signal_cache_misses",
            "signal_teacher_requests")
    hist = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in keys}
    return {"history": hist, "wall_s": time.perf_counter() - start, "load_avg": os.getloadavg()[0]}


def steady(hist: dict[int, float]) -> float:
    """Mean over the log windows after the first (the first holds start-up and the first teacher reply)."""
    values = [v for _, v in sorted(hist.items())][1:] or list(hist.values())
    return float(np.mean(values))


def bench_e2e(teacher: str, quick: bool = False) -> dict:
    from raykd.cluster import shutdown_ray

    steps = 10 if quick else 30
    t = json.loads((Path(teacher) / "config.json").read_text())
    out: dict = {"steps": steps, "batch_size": 16, "seq_len": 128,
                 "teacher": f"{t['num_hidden_layers']} layers, width {t['hidden_size']}, vocab {t['vocab_size']}"}
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["RAYKD_CACHE"] = str(tmp / "cache")  # nothing of the user's cache is touched or reused
        # On a shared 2-core machine 2 OpenMP threads can be slower than 1 (a descheduled thread stalls the
        # other): the naive baseline is the better of the two, both are reported.
        # The load changes by the minute: the naive loop runs before and after the Ray runs.
        out["naive_runs"] = [naive_loop(base_cfg(teacher, tmp, "naive"), steps, threads) for threads in (1, 2)]
        import ray

        # A cluster of our own ("local"): never another developer's, even if /tmp/ray points at one.
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}})
        started = True
        try:
            runs = {}
            for name, over in (("ray_1worker", {}),
                               ("ray_2workers", {"train__num_workers": 2})):
                cfg = base_cfg(teacher, tmp, name, train__max_steps=steps, **over)
                r = ray_run(cfg)
                runs[name] = {"tokens_per_s": steady(r["history"]["student_tokens_per_s"]),
                              "teacher_wait_fraction": steady(r["history"]["teacher_wait_fraction"]),
                              "workers": cfg.train.num_workers, "wall_s": r["wall_s"], "load_avg": r["load_avg"]}
                log(f"{name}: {runs[name]['tokens_per_s']:.0f} tok/s, teacher_wait {runs[name]['teacher_wait_fraction']:.1%}")
            out["ray"] = runs
            epoch = 5 if quick else 15  # steps per epoch (1 worker, 16 sequences per step)
            cache = {}
            for name, on in (("cache_off", False), ("cache_on", True)):
                cfg = base_cfg(teacher, tmp, f"epochs_{name}", data__max_sequences=16 * epoch, train__max_steps=2 * epoch,
                               train__log_every=epoch, signals__cache=on)
                h = ray_run(cfg)["history"]
                cache[name] = {
                    "epoch1_tokens_per_s": h["student_tokens_per_s"][epoch],
                    "epoch2_tokens_per_s": h["student_tokens_per_s"][2 * epoch],
                    "epoch2_teacher_wait_fraction": h["teacher_wait_fraction"][2 * epoch],
                    "teacher_requests": {s: h["signal_teacher_requests"].get(s) for s in (epoch, 2 * epoch)},
                    "cache_hits_end": h["signal_cache_hits"].get(2 * epoch),
                }
                log(f"{name}: epoch 2 {cache[name]['epoch2_tokens_per_s']:.0f} tok/s, requests {cache[name]['teacher_requests']}")
            out["cache"] = {"steps_per_epoch": epoch, **cache}
        finally:
            shutdown_ray(started)
        out["naive_runs"].append(naive_loop(base_cfg(teacher, tmp, "naive"), steps, 1))
        for r in out["naive_runs"]:
            log(f"naive in-process, {r['threads']} thread(s): {r['tokens_per_s']:.0f} tok/s "
                f"(teacher {r['teacher_share']:.0%} of the time)")
        out["naive"] = max(out["naive_runs"], key=lambda r: r["tokens_per_s"])
    return out


def report_lines(e: dict) -> list[str]:
    n = e["naive"]
    lines = ["## End to end: student tokens/s", "",
             f"Tiny teacher ({e['teacher']}) → student (2 layers, width 64), batch {e['batch_size']} × "
             f"{e['seq_len']} tokens per worker step, top-20, T=2; {e['steps']} timed steps. Ray: teacher replica 1 CPU, "
             "each Train worker 1 CPU / 1 torch thread, prefetch window 4, cache off. Naive: one process; the "
             "baseline (1.00×) is the fastest of its runs (1 thread before and after the Ray runs, 2 threads).", "",
             "| pipeline | student tokens/s | vs naive | teacher_wait_fraction | load avg |", "|---|---:|---:|---:|---:|"]
    for r in e.get("naive_runs", [n]):
        lines.append(f"| naive in-process loop, {r.get('threads', 2)} thread(s) (teacher forward, then student step) | "
                     f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / n['tokens_per_s']:.2f}× | "
                     f"({r['teacher_share']:.0%} of time in the teacher) | {r['load_avg']:.1f} |")
    for name, r in e.get("ray", {}).items():
        lines.append(f"| Ray: Serve teacher + {r['workers']} Train worker(s) | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / n['tokens_per_s']:.2f}× | {r['teacher_wait_fraction']:.1%} | {r['load_avg']:.1f} |")
    c = e.get("cache")
    if c:
        lines += ["", f"Second epoch with the signal cache vs without (1 worker, {c['steps_per_epoch']} steps per epoch):", "",
                  "| cache | epoch 1 tokens/s | epoch 2 tokens/s | epoch 2 teacher_wait | teacher requests after epoch 1 / 2 |",
                  "|---|---:|---:|---:|---:|"]
        for name in ("cache_off", "cache_on"):
            r = c[name]
            req = r["teacher_requests"]
            lines.append(f"| {name.split('_')[1]} | {r['epoch1_tokens_per_s']:.0f} | {r['epoch2_tokens_per_s']:.0f} | "
                         f"{r['epoch2_teacher_wait_fraction']:.1%} | {req.get(str(c['steps_per_epoch']), req.get(c['steps_per_epoch']))} / "
                         f"{req.get(str(2 * c['steps_per_epoch']), req.get(2 * c['steps_per_epoch']))} |")
    lines.append("")
    return lines
