"""Fault injection: one long `raykd distill` during which Train workers, teacher replicas and the driver are
killed at random points; what survives, what is lost, what it costs.

    nice -n 10 python benchmarks/faults.py [--steps 300] [--faults 12] [--seed 0]

The same command (tiny teacher, 1-layer student, 2 Train workers, 2 teacher replicas, a checkpoint every 10
steps, train.max_failures=100) runs once without faults (the reference) and once with `--faults` faults,
round robin over the kinds, each after the run has made progress since the previous one:

  worker   SIGKILL one `ray::RayTrainWorker` process (Ray Train restarts the workers from the last checkpoint)
  replica  SIGKILL one teacher `ray::ServeReplica` process (Serve replaces it; a lost request is re-sent)
  driver   SIGTERM to the driver (a preemption: MLflow run KILLED, cluster shut down, exit 143), then the same
           command again (it resumes from the last checkpoint)

RAYKD_BATCH_TRACE records every (step, rank, blocks). Per rank, in the order written, a step lower than the
one before must be a checkpoint step (a restore); anything else is a doubled sample, and a step skipped is a
lost one; every step must carry the blocks of the seeded order. The final student is compared with the
reference's, tensor by tensor. Results: benchmarks/results/faults.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from common import describe, describe_line, loadavg  # noqa: E402

TEACHER = dict(vocab_size=384, hidden_size=64, num_heads=1, num_layers=2, intermediate_size=128,
               corpus_chars=30_000, max_steps=25, seq_len=64, batch_size=16, max_minutes=1.0)
EVERY = 10
KINDS = ("worker", "replica", "driver")


def command(name: str, teacher: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "raykd.cli", "distill", "--config", str(ROOT / "jobs/configs/quickstart.yaml"),
            f"run_name={name}", f"teacher.path={teacher}", "student.num_layers=1", "student.hidden_size=64",
            "data.source=builtin", "data.builtin_chars=60000", "data.seq_len=64", "data.task_fraction=0",
            "data.max_sequences=null", "eval.tasks.enabled=false", "train.batch_size=8", "train.warmup_steps=2",
            f"train.max_steps={steps}", f"train.checkpoint_every={EVERY}", f"train.log_every={EVERY}",
            "train.max_failures=100", "teacher.num_replicas=2", "eval.baseline=false", "eval.max_sequences=8",
            "eval.gen_tokens=8", "eval.gen_prompts=2", f"output_dir={out}", "mlflow.experiment=faults"]


def processes(root_pid: int, title: str) -> list:
    import psutil

    try:
        tree = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for p in tree:
        try:
            if p.cmdline() and p.cmdline()[0].startswith(title):
                found.append(p)
        except psutil.Error:
            continue
    return found


def trace_lines(trace: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for f in sorted(trace.glob("rank*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.endswith("}")]
        out[int(f.stem[4:])] = rows
    return out


def audit(trace: Path, steps: int, n_train: int) -> dict:
    """Lost and doubled samples (blocks) of the final student's lineage, per the module doc."""
    from raykd.data.order import batch_indices

    lost = doubled = wrong = 0
    per_rank = trace_lines(trace)
    for rank, rows in per_rank.items():
        order = batch_indices(n_train, 8, 2, rank, 0, 0)
        expected = [next(order).tolist() for _ in range(steps)]
        prev = -1
        for r in rows:
            s = r["step"]
            if s <= prev and s % EVERY != 0:
                doubled += (prev - s + 1) * len(r["index"])
            elif s > prev + 1:
                lost += (s - prev - 1) * len(r["index"])
            wrong += r["index"] != expected[s]
            prev = s
        if prev != steps - 1:
            lost += (steps - 1 - prev) * 8
    return {"lost": lost, "doubled": doubled, "wrong_blocks": wrong, "ranks": sorted(per_rank)}


def run_with_faults(cmd: list[str], env: dict, trace: Path, faults: int, seed: int, log) -> dict:
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(faults)]
    rng.shuffle(kinds)
    injected: list[dict] = []
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    lines_at_fault, restarts = 0, 0
    start = time.time()
    while True:
        if driver.poll() is not None:
            if driver.returncode == 143 and injected and injected[-1]["kind"] == "driver":
                restarts += 1
                driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True)
                continue
            break
        lines = sum(len(r) for r in trace_lines(trace).values()) if trace.is_dir() else 0
        if kinds and lines >= lines_at_fault + rng.randint(10, 40):
            kind = kinds[0]
            victims = {"worker": lambda: processes(driver.pid, "ray::RayTrainWorker"),
                       "replica": lambda: processes(driver.pid, "ray::ServeReplica")}.get(kind, lambda: [driver])()
            if victims:
                victim = rng.choice(victims)
                os.kill(victim.pid, signal.SIGTERM if kind == "driver" else signal.SIGKILL)
                injected.append({"kind": kind, "at_s": round(time.time() - start, 1), "trace_lines": lines})
                log(f"fault {len(injected)}: {kind} pid {victim.pid} at {injected[-1]['at_s']}s")
                kinds.pop(0)
                lines_at_fault = lines
                if kind == "driver":
                    try:
                        driver.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        os.killpg(driver.pid, signal.SIGKILL)
                        driver.wait()
        time.sleep(0.2)
    err = driver.stderr.read() if driver.stderr else ""
    return {"returncode": driver.returncode, "seconds": time.time() - start, "injected": injected,
            "driver_restarts": restarts, "not_injected": kinds, "stderr_tail": err[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--faults", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults"))
    args = ap.parse_args()

    from raykd.config import TinyTeacherConfig
    from raykd.teacher.build import ensure_tiny_teacher

    work = Path(tempfile.mkdtemp(prefix="raykd-faults-"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAYKD_CACHE=str(work / "cache"), MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    os.environ["RAYKD_CACHE"] = env["RAYKD_CACHE"]
    teacher = ensure_tiny_teacher(TinyTeacherConfig(**TEACHER))
    log = lambda msg: print(f"[faults] {msg}", flush=True)  # noqa: E731
    load_before = loadavg()

    t0 = time.time()
    ref = subprocess.run(command("reference", teacher, work / "out", args.steps), env=env, capture_output=True,
                         text=True)
    ref_s = time.time() - t0
    assert ref.returncode == 0, ref.stderr[-3000:]
    log(f"reference run: {ref_s:.0f}s")

    trace = work / "trace"
    faulted = run_with_faults(command("faulted", teacher, work / "out", args.steps), {**env, "RAYKD_BATCH_TRACE": str(trace)},
                              trace, args.faults, args.seed, log)
    log(f"faulted run: {faulted['seconds']:.0f}s, exit {faulted['returncode']}")

    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("faults").experiment_id])}
    n_train = int(runs["reference"].data.metrics["data_train_blocks"])
    samples = audit(trace, args.steps, n_train)
    equal = None
    if faulted["returncode"] == 0:
        a = load_file(str(work / "out" / "faulted" / "student" / "model.safetensors"))
        b = load_file(str(work / "out" / "reference" / "student" / "model.safetensors"))
        equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    n = len(faulted["injected"])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": describe_line(describe()),
        "load_before": load_before, "load_after": loadavg(),
        "command": f"nice -n 10 python benchmarks/faults.py --steps {args.steps} --faults {args.faults} --seed {args.seed}",
        "faults_injected": n, "by_kind": {k: sum(f["kind"] == k for f in faulted["injected"]) for k in KINDS},
        "survived": faulted["returncode"] == 0, "samples": samples, "final_student_equal_bitwise": equal,
        "reference_seconds": round(ref_s, 1), "faulted_seconds": round(faulted["seconds"], 1),
        "overhead_per_fault_s": round((faulted["seconds"] - ref_s) / max(n, 1), 1), "faults": faulted["injected"],
        "driver_restarts": faulted["driver_restarts"], "stderr_tail": faulted["stderr_tail"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [f"# Fault injection ({result['date']})", "", f"Machine: {result['machine']}; load average before "
          f"{load_before}, after {result['load_after']}.", "", f"Command: `{result['command']}`", "",
          "| faults injected | worker / replica / driver | run finished | samples lost | samples doubled | "
          "wrong blocks | overhead per fault | final student equal (bitwise) |", "| --- | --- | --- | --- | --- | --- | --- | --- |",
          f"| {n} | {' / '.join(str(result['by_kind'][k]) for k in KINDS)} | {result['survived']} | {samples['lost']} | "
          f"{samples['doubled']} | {samples['wrong_blocks']} | {result['overhead_per_fault_s']} s | {equal} |", "",
          f"Reference run {result['reference_seconds']} s, faulted run {result['faulted_seconds']} s "
          f"(driver re-runs: {faulted['driver_restarts']}).", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
