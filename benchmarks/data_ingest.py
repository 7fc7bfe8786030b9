"""Training data through Ray Data (issue 14), measured in one command:

  1. driver memory: peak RSS of the driver (`resource.getrusage`, the driver process only) ingesting a text
     data set of 10 MB and of 100 MB (tinyshakespeare repeated), each in a fresh process with its own Ray:
     the tokens stay in the object store, so the goal is flat within 10 %;
  2. tokenization: tokens/s of the Ray Data ingest (read + tokenize + pack, an actor per core, wall time with
     the actors' start) against the same work in the driver (raykd/data/blocks.py `pack_in_process`);
  3. training: student tokens/s of the same training step (forward, backward, AdamW; the tiny teacher's
     student, one process, one thread) fed by the Ray Data stream (raykd/train/batches.py `step_batches`:
     the windows a Train worker reads through get_dataset_shard) against an in-memory (N, L) array indexed
     in the same seeded order. Alternated over 3 seeds; the ratio is reported per seed (goal: >= 0.95).

    python benchmarks/data_ingest.py                    # ~10 min on 2 cores
    python benchmarks/data_ingest.py --sizes 2 20       # another 10x (a loaded machine: 10 -> 100 MB is slow)
    python benchmarks/data_ingest.py --quick            # 1 and 5 MB, short training: a smoke run

Writes benchmarks/results/data_ingest.json and data_ingest.md (date, machine, command, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SEQ_LEN = 128
MB = 1 << 20
# The test suite's tiny teacher (tests/conftest.py TINY_TEACHER): seconds to build; its 384-token BPE is what
# the tokenizer throughput is measured with.
TEACHER = dict(vocab_size=384, hidden_size=64, num_heads=1, num_layers=2, intermediate_size=128,
               corpus_chars=30_000, max_steps=25, seq_len=64, batch_size=16, max_minutes=1.0)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    model, flags = platform.processor() or platform.machine(), []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in line.split()]
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": model, "flags": flags, "cpus": os.cpu_count(), "memory_gib": round(mem / (1 << 30), 1)}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def teacher() -> str:
    from raykd.config import TinyTeacherConfig
    from raykd.teacher.build import ensure_tiny_teacher

    return str(ensure_tiny_teacher(TinyTeacherConfig(**TEACHER)))


def text_file(directory: Path, mb: int) -> Path:
    """tinyshakespeare repeated to `mb` MB."""
    path = directory / f"text_{mb}mb.txt"
    if not path.exists() or path.stat().st_size < mb * MB:
        base = SHAKESPEARE.read_bytes()
        with path.open("wb") as fh:
            left = mb * MB
            while left > 0:
                fh.write(base[:left])
                left -= len(base[:left])
    return path


def start_ray():
    import ray

    from raykd.cluster import quiet_ray_loggers

    for attempt in range(4):  # a loaded machine can miss Ray's fixed 30 s raylet start-up window
        try:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            break
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == 3:
                raise
            log(f"Ray start-up timed out (attempt {attempt + 1}); retrying")
    quiet_ray_loggers()
    return ray


def data_cfg(path: Path):
    from raykd.config import DataConfig

    return DataConfig(source=str(path), seq_len=SEQ_LEN, val_fraction=0.01)


# --------------------------------------------------------------------------------- child: 1 + 2 (ingest)
def child_ingest(path: Path, teacher_path: str) -> dict:
    """In a fresh process: ingest `path` through Ray Data; the driver's peak RSS before and after."""
    from raykd.data.ingest import ingest
    from raykd.data.sources import plan_chunks

    ray = start_ray()
    rss_ray = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = data_cfg(path)
    t = time.perf_counter()
    chunks = plan_chunks(cfg)
    plan_s = time.perf_counter() - t
    data = ingest(cfg, teacher_path, None, chunks)
    wall = time.perf_counter() - t
    out = {"mb": path.stat().st_size / MB, "chunks": len(chunks), "tokens": data.stats.tokens,
           "blocks": data.n_blocks, "plan_s": plan_s, "ingest_s": data.seconds, "wall_s": wall,
           "tokens_per_s": data.stats.tokens / data.seconds, "rss_after_ray_init_mb": rss_ray / MB,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, "load": load()}
    ray.shutdown()
    return out


def in_driver_tokenize(path: Path, teacher_path: str) -> dict:
    """The same read + tokenize + pack in this one process."""
    from transformers import AutoTokenizer

    from raykd.data.blocks import pack_in_process
    from raykd.data.ingest import pad_id
    from raykd.data.records import RecordEncoder
    from raykd.data.sources import plan_chunks

    cfg = data_cfg(path)
    tok = AutoTokenizer.from_pretrained(teacher_path)
    chunks = plan_chunks(cfg, validate=False)
    t = time.perf_counter()
    blocks, stats = pack_in_process(cfg, RecordEncoder(tok, cfg), pad_id(tok), chunks)
    s = time.perf_counter() - t
    return {"mb": path.stat().st_size / MB, "tokens": stats.tokens, "seconds": s, "tokens_per_s": stats.tokens / s,
            "load": load()}


# ------------------------------------------------------------------------------- child: 3 (training speed)
def child_train(path: Path, teacher_path: str, steps: int, seeds: list[int], batch: int) -> dict:
    """Student tokens/s fed by the Ray Data stream vs by an in-memory array, alternated per seed."""
    import torch

    from raykd.config import StudentConfig
    from raykd.data.ingest import ingest
    from raykd.data.order import batch_indices
    from raykd.data.sources import plan_chunks
    from raykd.models import build_student
    from raykd.train.batches import WINDOW_TOKENS, StepOrderData, plan_windows, step_batches, window_name

    torch.set_num_threads(1)
    start_ray()
    cfg = data_cfg(path)
    data = ingest(cfg, teacher_path, None, plan_chunks(cfg))
    arr = data.take(0, data.n_train)  # the in-memory array: (N, L) ids and mask in this process

    def run(batches, seed: int) -> tuple[float, float]:
        """(tokens/s over `steps` steps, from asking for the first batch to the last step's end; seconds until
        the first batch arrived)."""
        torch.manual_seed(seed)
        model, _ = build_student(teacher_path, StudentConfig(num_layers=2, hidden_size=64), seed=seed)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        first_s = None
        for _, b in zip(range(steps), batches):
            first_s = time.perf_counter() - t0 if first_s is None else first_s
            ids = torch.as_tensor(b[0], dtype=torch.long)
            logits = model(input_ids=ids).logits[:, :-1]
            keep = torch.as_tensor(b[1][:, 1:] > 0)
            loss = torch.nn.functional.cross_entropy(logits[keep], ids[:, 1:][keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return steps * batch * data.seq_len / (time.perf_counter() - t0), first_s

    def memory(seed: int):
        for index in batch_indices(data.n_train, batch, 1, 0, seed, 0):
            yield arr.ids[index], arr.mask[index]

    def stream(seed: int, window_tokens: int):
        windows = plan_windows(data.n_train, data.seq_len, batch, 1, 0, steps, window_tokens)
        config = StepOrderData(data.offsets, data.n_train, data.seq_len, batch, seed, windows)
        shard = config.configure({window_name(w): data.chunks for w in range(len(windows))}, world_size=1)[0]
        for b in step_batches(windows, batch, 0, shard=shard.__getitem__):
            yield b.ids, b.mask

    rows = []
    quarter = steps * batch * data.seq_len // 4
    for seed in seeds:
        # the three measurements in a rotated order per seed (seed 0: in-memory first, 1: second, 2: third), so
        # that a drift of the machine's speed over the run does not favour one of them
        # - as a run plans it (WINDOW_TOKENS per window: here one window, read before the first step)
        # - 4 windows: 3 read in the background while the student trains (a long run's steady state, compressed:
        #   each window read scans all the chunks, here every steps/4 steps instead of every 16M tokens)
        jobs = [("mem", lambda: run(memory(seed), seed)), ("plan", lambda: run(stream(seed, WINDOW_TOKENS), seed)),
                ("four", lambda: run(stream(seed, quarter), seed))]
        k = seed % 3
        out = {name: job() for name, job in jobs[-k:] + jobs[:-k]} if k else {name: job() for name, job in jobs}
        (mem, _), (streamed, first_s), (streamed4, first4_s) = out["mem"], out["plan"], out["four"]
        rows.append({"seed": seed, "in_memory_tokens_per_s": mem, "streaming_tokens_per_s": streamed,
                     "ratio": streamed / mem, "streaming_first_batch_s": first_s,
                     "streaming_4_windows_tokens_per_s": streamed4, "ratio_4_windows": streamed4 / mem,
                     "streaming_4_windows_first_batch_s": first4_s, "load": load()})
        log(f"seed {seed}: in-memory {mem:,.0f} tok/s, streaming {streamed:,.0f} ({streamed / mem:.3f}x), "
            f"4 windows {streamed4:,.0f} ({streamed4 / mem:.3f}x)")
    return {"mb": path.stat().st_size / MB, "blocks": data.n_train, "steps": steps, "batch": batch,
            "seq_len": data.seq_len, "rows": rows}


def in_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report
def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    m, small, big = results["machine"], results["ingest"][0], results["ingest"][1]
    drv = results["in_driver"]
    train = results["train"]
    ratios = [r["ratio"] for r in train["rows"]]
    ratios4 = [r["ratio_4_windows"] for r in train["rows"]]
    lines = [
        "# Data ingest through Ray Data (issue 14)", "",
        f"- date: {results['date']}", f"- machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, flags "
        f"{' '.join(m['flags']) or 'none of avx512/amx'} (load averages below)",
        f"- command: `{results['command']}`",
        f"- load average (1, 5, 15 min) at start: {results['load_start']}, at end: {results['load_end']}",
        f"- data: tinyshakespeare repeated; format text, seq_len {SEQ_LEN}, chunk_mb 4; tokenizer: the tiny teacher's "
        "384-token BPE (tests/conftest.py)", "",
        "| measure | value | goal |", "|---|---|---|",
        f"| driver peak RSS, {small['mb']:.0f} MB of text ({small['tokens']:,} tokens) | {small['peak_rss_mb']:.0f} MB "
        f"(after ray.init {small['rss_after_ray_init_mb']:.0f} MB) | |",
        f"| driver peak RSS, {big['mb']:.0f} MB of text ({big['tokens']:,} tokens) | {big['peak_rss_mb']:.0f} MB "
        f"(after ray.init {big['rss_after_ray_init_mb']:.0f} MB) | |",
        f"| driver peak RSS growth for {big['mb'] / small['mb']:.0f}x the data | "
        f"{big['peak_rss_mb'] / small['peak_rss_mb'] - 1:+.1%} | within 10 % |",
        f"| Ray Data tokenization, {big['mb']:.0f} MB ({big['chunks']} chunks, wall incl. actor start) | "
        f"{big['tokens_per_s']:,.0f} tokens/s | |",
        f"| Ray Data tokenization, {small['mb']:.0f} MB ({small['chunks']} chunks) | {small['tokens_per_s']:,.0f} tokens/s | |",
        f"| in-driver tokenization, {drv['mb']:.0f} MB (one process) | {drv['tokens_per_s']:,.0f} tokens/s | |",
        f"| Ray Data / in-driver tokens/s ({big['mb']:.0f} MB vs {drv['mb']:.0f} MB) | "
        f"{big['tokens_per_s'] / drv['tokens_per_s']:.2f}x | |",
        f"| student tokens/s streaming (as planned) / in-memory, per seed | "
        f"{', '.join(f'{r:.3f}' for r in ratios)} (mean {np.mean(ratios):.3f}) | >= 0.95 |",
        f"| student tokens/s streaming (4 windows) / in-memory, per seed | "
        f"{', '.join(f'{r:.3f}' for r in ratios4)} (mean {np.mean(ratios4):.3f}) | >= 0.95 |",
        "",
        f"Training: the tiny teacher's 2-layer 64-wide student, batch {train['batch']} x {train['seq_len']} tokens, "
        f"{train['steps']} steps per measurement, one thread, forward + masked CE + backward + AdamW; the stream is "
        f"the windows a Train worker reads (`StepOrderData` -> `step_batches`), the array is `BlockData.take` of "
        f"all {train['blocks']:,} training blocks indexed in the same seeded order. Per seed the three "
        "measurements run in one process, in an order rotated by seed (seed 0: in-memory first; 1: second; 2: last).", "",
        "Timed from asking for the first batch to the end of the last step, so the stream's wait for its first "
        "window counts (listed); the in-memory array is already in the process. `as planned`: the windows a run "
        "plans (16M tokens per worker: here one). `4 windows`: the steps cut in 4, the later 3 read in the "
        "background while the student trains, each read a scan of every chunk: a long run's steady state, "
        "compressed (there a window lasts 16M tokens).", "",
        "| seed | in-memory tok/s | streaming as planned tok/s (ratio, first window s) | streaming 4 windows tok/s "
        "(ratio, first window s) | load (1 min) |",
        "|---|---|---|---|---|",
        *[f"| {r['seed']} | {r['in_memory_tokens_per_s']:,.0f} | {r['streaming_tokens_per_s']:,.0f} "
          f"({r['ratio']:.3f}, {r['streaming_first_batch_s']:.1f}) | {r['streaming_4_windows_tokens_per_s']:,.0f} "
          f"({r['ratio_4_windows']:.3f}, {r['streaming_4_windows_first_batch_s']:.1f}) | {r['load'][0]} |"
          for r in train["rows"]],
        "",
    ]
    (RESULTS / "data_ingest.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs=2, default=(10, 100), metavar=("SMALL_MB", "LARGE_MB"),
                    help="the two data set sizes (default 10 and 100 MB)")
    ap.add_argument("--workdir", default="/tmp/raykd-data-bench")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "ingest":
            out = child_ingest(Path(rest[0]), rest[1])
        else:
            out = child_train(Path(rest[0]), rest[1], int(rest[2]), [int(s) for s in rest[3].split(",")], int(rest[4]))
        print(json.dumps(out))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = (1, 5) if args.quick else tuple(args.sizes)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "command": "python benchmarks/data_ingest.py" + (" --quick" if args.quick else "")
               + (f" --sizes {sizes[0]} {sizes[1]}" if not args.quick and sizes != (10, 100) else ""),
               "load_start": load()}
    t_path = teacher()
    files = [text_file(work, mb) for mb in sizes]
    results["ingest"] = []
    for f in files:
        log(f"ingest {f.name} (fresh process, its own Ray)")
        results["ingest"].append(in_child("--child", "ingest", str(f), t_path))
        log(json.dumps(results["ingest"][-1]))
    log(f"in-driver tokenization of {files[0].name}")
    results["in_driver"] = in_driver_tokenize(files[0], t_path)
    log(json.dumps(results["in_driver"]))
    steps = 20 if args.quick else 480  # ~10 s a measurement: 120 steps (2.5 s) swung the ratio by +-15 %
    log(f"training speed, streaming vs in-memory ({files[0].name}, {steps} steps x 3 seeds)")
    results["train"] = in_child("--child", "train", str(files[0]), t_path, str(steps), "0,1,2", "16")
    results["load_end"] = load()
    write(results)


if __name__ == "__main__":
    main()
