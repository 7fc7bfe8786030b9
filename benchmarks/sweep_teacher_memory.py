"""Sweep trials sharing one teacher vs each trial deploying its own: peak memory and wall time.

    python benchmarks/sweep_teacher_memory.py                      # 4 trials, both modes (~10-20 min on 2 cores)
    python benchmarks/sweep_teacher_memory.py --trials 2 4 --steps 20

For each trial count N and each mode, runs the real command

    raykd sweep --config jobs/configs/sweep_asha.yaml num_samples=N max_concurrent_trials=N scheduler=fifo \
        teacher_per_trial=<false|true> base.train.max_steps=<steps> ...

in a fresh Ray cluster (a child process), with all N trials running at once, and samples every second the
memory of that cluster's processes: the proportional set size (PSS: shared pages split among the processes
that map them, so libraries are not counted N times) of the teacher replicas (`ServeReplica:*:Teacher`) and
of every process of the cluster. Shared mode is what `raykd sweep` does (one Serve app, deployed once);
private mode (`teacher_per_trial: true`) deploys one teacher per trial, as a sweep of independent
`raykd distill` runs would. Writes benchmarks/results/sweep_teacher_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "jobs" / "configs" / "sweep_asha.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {mem:.0f} GiB, no GPU"


class Sampler(threading.Thread):
    """Peak PSS of the teacher replicas and of all descendants of `pid`, sampled every `every_s`."""

    def __init__(self, pid: int, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.stop = threading.Event()
        self.peak_teacher = self.peak_total = 0
        self.peak_replicas = 0

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            teacher = total = replicas = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    pss = p.memory_full_info().pss
                    title = " ".join(p.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                total += pss
                if "ServeReplica:" in title and ":Teacher" in title:
                    teacher += pss
                    replicas += 1
            self.peak_teacher = max(self.peak_teacher, teacher)
            self.peak_total = max(self.peak_total, total)
            self.peak_replicas = max(self.peak_replicas, replicas)
            self.stop.wait(self.every_s)


def run_one(trials: int, private: bool, steps: int, work: Path) -> dict:
    name = f"bench-{'private' if private else 'shared'}-{trials}"
    cmd = [sys.executable, "-m", "raykd.cli", "sweep", "--config", str(CONFIG), f"name={name}",
           f"storage_path={work / 'sweeps'}", f"num_samples={trials}", f"max_concurrent_trials={trials}",
           "scheduler=fifo", f"teacher_per_trial={str(private).lower()}", f"base.train.max_steps={steps}",
           "base.train.cpus_per_worker=0.5", "base.train.torch_threads=1", f"base.output_dir={work / 'outputs'}",
           f"export_path={work / name / 'best.yaml'}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}
    log = work / f"{name}.log"
    print(f"[bench] {name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    for attempt in range(3):  # an overloaded machine can miss Ray's 30 s node start-up deadline: retry that only
        start = time.perf_counter()
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)
            sampler = Sampler(proc.pid)
            sampler.start()
            rc = proc.wait()
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        if rc == 0 or "timed out during startup" not in log.read_text():
            break
        print(f"[bench] {name}: Ray start-up timed out (attempt {attempt + 1}); retrying", file=sys.stderr, flush=True)
    if rc != 0:
        raise SystemExit(f"[bench] {name} failed (rc {rc}); see {log}")
    row = dict(mode="private" if private else "shared", trials=trials, steps=steps, wall_s=round(wall, 1),
               teacher_replicas_peak=sampler.peak_replicas, teacher_pss_peak_mib=round(sampler.peak_teacher / 2**20),
               total_pss_peak_mib=round(sampler.peak_total / 2**20))
    print(f"[bench] {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def to_markdown(rows: list[dict], note: str) -> str:
    out = [f"Machine: {machine()}. {note}", "",
           "| teacher | trials (all at once) | teacher replicas | teacher memory (peak PSS) | all Ray processes (peak PSS) | wall time |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['mode']} | {r['trials']} | {r['teacher_replicas_peak']} | {r['teacher_pss_peak_mib']} MiB | "
                   f"{r['total_pss_peak_mib']} MiB | {r['wall_s']:.0f} s |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[4])
    parser.add_argument("--steps", type=int, default=20, help="training steps per trial")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_teacher_memory.md")
    args = parser.parse_args(argv)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="raykd-bench-sweep-"))  # logs stay here if a run fails
    for n in args.trials:
        for private in (False, True):
            rows.append(run_one(n, private, args.steps, work))
    shutil.rmtree(work, ignore_errors=True)
    note = (f"`raykd sweep` of jobs/configs/sweep_asha.yaml with FIFO scheduling, {args.steps} steps per trial, "
            "1 Train worker per trial (0.5 logical CPU), every trial running at once; shared = one Serve teacher "
            "for the sweep, private = `teacher_per_trial: true`. Written by benchmarks/sweep_teacher_memory.py.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(rows, note))
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "note": note, "rows": rows}, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
