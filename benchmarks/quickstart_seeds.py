"""The quickstart's claim over seeds: KD student vs hard-label student, held-out loss and task exact match.

    python benchmarks/quickstart_seeds.py                        # 5 seeds, ~15 min on 2 idle cores
    python benchmarks/quickstart_seeds.py --seeds 0 1 2 3 4 5 6  # more

Runs the real command once per seed, exactly as a user does:

    raykd distill --config jobs/configs/quickstart.yaml seed=N

each in its own process with its own embedded Ray cluster, one MLflow store and one raykd cache for all
seeds (a fresh one unless --cache is given): the first seed builds the offline teacher (its wall time is the
"fresh clone, empty cache" quickstart time), the others reuse it from the cache. `seed` changes the
students' data order and initialisation draw, not the teacher. Numbers are read back from the MLflow runs.

Writes benchmarks/results/quickstart_seeds.md and .json: per-seed table, mean, std (ddof 1), margin
(KD - hard, negative = KD better), the acceptance check (KD better in every seed, |mean margin| > 2 x the
larger std), the table seed 0 printed, date, machine, load average, command, wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = "jobs/configs/quickstart.yaml"
MODELS = {"teacher": "teacher", "kd": "kd_student", "hard": "hard_label_student"}
LEVELS = (1, 2, 3, 4)


def machine() -> str:
    """The machine line of the results file (benchmarks/common.py reads lscpu and /proc/meminfo)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import describe, describe_line

    return describe_line(describe())


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_seed(seed: int, cache: Path, store: Path, extra: list[str], log) -> dict:
    cmd = ["raykd", "distill", "--config", CONFIG, f"seed={seed}", f"run_name=quickstart-s{seed}",
           f"output_dir={store / 'outputs'}", *extra]
    env = {**os.environ, "RAYKD_CACHE": str(cache), "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)  # its own embedded cluster, as on a laptop
    fresh = not (cache / "teachers").exists()
    log(f"seed {seed}: {' '.join(cmd)}  (load {load()}{', empty cache' if fresh else ''})")
    for attempt in range(3):  # an overloaded machine can miss Ray's fixed raylet start-up window
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode == 0 or "timed out during startup" not in proc.stderr:
            break
        log(f"seed {seed}: Ray did not start in time (load {load()}); again")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"seed {seed} failed (exit {proc.returncode})")
    table = proc.stdout[proc.stdout.index("model "):].rstrip() if "model " in proc.stdout else proc.stdout
    return {"seed": seed, "wall_s": round(wall, 1), "empty_cache": fresh, "load_after": load(),
            "metrics": read_metrics(store, seed), "table": table}


def read_metrics(store: Path, seed: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("raykd-quickstart")
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = 'quickstart-s{seed}'")
    assert len(runs) == 1, f"expected one run quickstart-s{seed}, found {len(runs)}"
    m = runs[0].data.metrics
    out = {}
    for short, name in MODELS.items():
        if f"eval_{name}_heldout_loss" not in m:  # no teacher row when the student has another tokenizer
            continue
        out[f"{short}_loss"] = m[f"eval_{name}_heldout_loss"]
        for lv in LEVELS:
            key = f"eval_{name}_task_em_L{lv}"
            if key in m:
                out[f"{short}_em_L{lv}"] = m[key]
        if f"eval_{name}_task_em" in m:
            out[f"{short}_em"] = m[f"eval_{name}_task_em"]
    return out


def summarize(rows: list[dict]) -> dict:
    kd = [r["metrics"]["kd_loss"] for r in rows]
    hard = [r["metrics"]["hard_loss"] for r in rows]
    margins = [k - h for k, h in zip(kd, hard)]
    sd = statistics.stdev if len(rows) > 1 else (lambda xs: float("nan"))
    s = {"n": len(rows), "kd_mean": statistics.mean(kd), "kd_std": sd(kd), "hard_mean": statistics.mean(hard),
         "hard_std": sd(hard), "margin_mean": statistics.mean(margins), "margin_std": sd(margins),
         "teacher_loss": statistics.mean(r["metrics"]["teacher_loss"] for r in rows)}
    s["ratio_to_2max_std"] = abs(s["margin_mean"]) / (2 * max(s["kd_std"], s["hard_std"])) if len(rows) > 1 else float("nan")
    s["kd_better_every_seed"] = all(m < 0 for m in margins)
    s["accepted"] = len(rows) >= 5 and s["kd_better_every_seed"] and s["ratio_to_2max_std"] > 1
    for short in MODELS:
        for suffix in [f"em_L{lv}" for lv in LEVELS] + ["em"]:
            vals = [r["metrics"].get(f"{short}_{suffix}") for r in rows]
            if all(v is not None for v in vals):
                s[f"{short}_{suffix}"] = statistics.mean(vals)
    return s


def markdown(rows: list[dict], s: dict, meta: dict) -> str:
    def em(m, short):
        return " / ".join(f"{m[f'{short}_em_L{lv}']:.2f}" for lv in LEVELS if f"{short}_em_L{lv}" in m) or "-"

    later = ", ".join(f"{r['wall_s'] / 60:.1f}" for r in rows[1:]) or "-"
    lines = [
        "# Quickstart over seeds: KD student vs hard-label student", "",
        f"- date: {meta['date']}", f"- machine: {meta['machine']}",
        f"- load average (1/5/15 min): {meta['load_start']} at the start, {meta['load_end']} at the end "
        "(a shared machine: other jobs ran; ratios inside one run are what count)",
        f"- command: `{meta['command']}` — per seed: `raykd distill --config {CONFIG} seed=N`",
        *[f"- failed attempt (not in the table): {f}" for f in meta.get("failed", [])],
        f"- teacher: {meta['teacher']}", *([f"- note: {meta['note']}"] if meta.get("note") else []),
        (f"- quickstart wall time with an empty cache (seed {rows[0]['seed']}, teacher build included): "
         f"{rows[0]['wall_s'] / 60:.1f} min; later seeds (teacher cached): {later} min" if rows[0].get("empty_cache")
         and not meta["teacher"].startswith("given") else
         "- wall time per seed (teacher given, not built): " + ", ".join(f"{r['wall_s'] / 60:.1f}" for r in rows) + " min"),
        "",
        "Held-out loss (nats/token, 128 held-out sequences of 128 tokens; lower is better) and task-suite exact "
        "match per level L1..L4 (greedy decoding; 34 / 200 / 200 / 200 test prompts).", "",
        "| seed | teacher | KD student | hard-label student | KD − hard | EM L1..L4 teacher | EM L1..L4 KD | EM L1..L4 hard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['seed']} | {m['teacher_loss']:.4f} | {m['kd_loss']:.4f} | {m['hard_loss']:.4f} | "
                     f"{m['kd_loss'] - m['hard_loss']:+.4f} | {em(m, 'teacher')} | {em(m, 'kd')} | {em(m, 'hard')} |")
    lines.append(f"| mean ± std | {s['teacher_loss']:.4f} | {s['kd_mean']:.4f} ± {s['kd_std']:.4f} | "
                 f"{s['hard_mean']:.4f} ± {s['hard_std']:.4f} | {s['margin_mean']:+.4f} ± {s['margin_std']:.4f} | "
                 f"{em(s, 'teacher')} | {em(s, 'kd')} | {em(s, 'hard')} |")
    ret = lambda short: " / ".join(  # noqa: E731
        f"{s[f'{short}_em_L{lv}'] / s[f'teacher_em_L{lv}']:.2f}" if s.get(f"teacher_em_L{lv}") else "nan"
        for lv in LEVELS if f"{short}_em_L{lv}" in s)
    lines += [
        "", f"Mean margin KD − hard {s['margin_mean']:+.4f} nats; larger seed std {max(s['kd_std'], s['hard_std']):.4f}; "
        f"|margin| / (2 × larger std) = {s['ratio_to_2max_std']:.1f}; KD better in every seed: "
        f"{s['kd_better_every_seed']}. Acceptance (≥ 5 seeds, every seed, > 2 × std): **{'met' if s['accepted'] else 'NOT met'}**.",
    ]
    if "kd_em_L1" in s:
        lines.append(f"Retention (student EM / teacher EM, mean over seeds) L1..L4: KD {ret('kd')}, "
                     f"hard-label {ret('hard')}.")
    lines += ["", f"The table `raykd distill` printed for seed {rows[0]['seed']}:", "", "```", rows[0]["table"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--cache", help="raykd cache to use (default: a fresh temporary one: the first seed builds the teacher)")
    p.add_argument("--name", default="quickstart_seeds", help="results file stem in benchmarks/results/")
    p.add_argument("--teacher", help="an already built teacher directory (teacher.path) instead of the offline build")
    p.add_argument("--note", help="a line for the results file (e.g. where a given teacher comes from)")
    p.add_argument("--resume", action="store_true", help="keep the seeds already in the results file, run the others")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json (after a code change)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every seed")
    a = p.parse_args()

    def log(msg: str) -> None:
        print(f"[quickstart_seeds {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if a.render:
        data = json.loads((RESULTS / f"{a.name}.json").read_text())
        if a.note:
            data["meta"]["note"] = a.note
        write(data["seeds"], data["meta"], a.name)
        return
    meta = {"note": a.note, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "load_start": load(), "command": " ".join(["python", "benchmarks/quickstart_seeds.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="raykd-qs-") as tmp:
        cache = Path(a.cache) if a.cache else Path(tmp) / "cache"
        store = Path(tmp)
        rows: list[dict] = []
        if a.resume and (RESULTS / f"{a.name}.json").is_file():
            data = json.loads((RESULTS / f"{a.name}.json").read_text())
            rows, meta = data["seeds"], {**data["meta"], "command": data["meta"]["command"] + " + " + meta["command"]}
        for seed in a.seeds:
            if any(r["seed"] == seed for r in rows):
                continue
            extra = [*a.overrides, *([f"teacher.path={a.teacher}"] if a.teacher else [])]
            try:
                rows.append(run_seed(seed, cache, store, extra, log))
            except SystemExit as e:  # one seed's failure (e.g. Ray's OOM killer on a shared machine) is reported
                log(str(e))
                meta.setdefault("failed", []).append(f"seed {seed}: {e} (load {load()})")
                continue
            m = rows[-1]["metrics"]
            log(f"seed {seed}: KD {m['kd_loss']:.4f} hard {m['hard_loss']:.4f} ({m['kd_loss'] - m['hard_loss']:+.4f}) "
                f"in {rows[-1]['wall_s']:.0f} s")
            if "teacher" not in meta:
                meta["teacher"], meta["teacher_build"] = describe_teacher(Path(a.teacher) if a.teacher else cache)
            meta["load_end"] = load()
            s = write(rows, meta, a.name)  # after every seed: a long run interrupted keeps what it measured
    log(f"wrote {RESULTS / a.name}.md: margin {s['margin_mean']:+.4f}, x(2 max std) {s['ratio_to_2max_std']:.1f}, "
        f"every seed {s['kd_better_every_seed']}")


def describe_teacher(where: Path) -> tuple[str, dict | None]:
    """The built teacher in a raykd cache, or a given teacher directory."""
    found = next((where / "teachers").glob("tiny-*/raykd_teacher.json"), None)
    if found is None:
        return f"given: teacher.path={where}", None
    t = json.loads(found.read_text())
    text = (f"offline tiny teacher {t['fingerprint']} ({t['num_parameters'] / 1e6:.2f}M parameters, {t['steps']} "
            f"pre-training steps, stopped by {t['stopped_by']}, held-out loss on its own text {t['val_loss']:.3f}, "
            f"built in {t['seconds']['total']:.0f} s)")
    return text, {k: t[k] for k in ("fingerprint", "steps", "stopped_by", "val_loss", "seconds")}


def write(rows: list[dict], meta: dict, name: str) -> dict:
    s = summarize(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "summary": s, "seeds": rows}, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(rows, s, meta))
    return s


if __name__ == "__main__":
    main()
