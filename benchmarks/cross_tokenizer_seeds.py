"""Cross-tokenizer distillation over seeds: a student with ANOTHER tokenizer distilled from the quickstart's
teacher vs the same student trained on hard labels alone (issue 19's acceptance), held-out loss and task
exact match.

    python benchmarks/cross_tokenizer_seeds.py                 # 3 seeds, ~12 min on 2 idle cores
    python benchmarks/cross_tokenizer_seeds.py --seeds 0 1 2 3 4
    python benchmarks/cross_tokenizer_seeds.py --name cross_tokenizer_seeds_600 train.max_steps=600  # longer

The student is built offline once (cached): raykd's tiny model builder with a vocabulary of 1024 byte-level BPE
tokens trained on the same public-domain text (the teacher's has 2048: other merges, other ids), 2 layers x 64
(the quickstart's student shape), trained for a single step, i.e. a fresh student with its own tokenizer.
Each seed then runs the quickstart exactly as a user does, with that student:

    raykd distill --config jobs/configs/quickstart.yaml seed=N student.path=<student> \\
        "loss.cross_tokenizer={uld_weight: 0.5}"

(KD student and the hard-label baseline start from the same weights, see the same data in the same order;
both are scored on the student's own tokens, so their losses compare; the teacher's row is omitted: its loss is
over other tokens). Writes benchmarks/results/cross_tokenizer_seeds.md and .json (date, machine, load, command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quickstart_seeds as qs  # noqa: E402 - the per-seed runner of the quickstart benchmark

STUDENT = dict(vocab_size=1024, hidden_size=64, num_layers=2, num_heads=1, intermediate_size=344,
               corpus="shakespeare", corpus_chars=900_000, task_fraction=0.2, max_steps=1, max_minutes=1.0, seed=7)
OVERRIDES = ["loss.cross_tokenizer={uld_weight: 0.5}"]
LEVELS = qs.LEVELS


def student_dir(cache: Path) -> Path:
    from raykd.config import TinyTeacherConfig
    from raykd.teacher.build import ensure_tiny_teacher

    return ensure_tiny_teacher(TinyTeacherConfig(**STUDENT), cache)


def metrics(store: Path, seed: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("raykd-quickstart")
    run, = client.search_runs([exp.experiment_id], f"attributes.run_name = 'quickstart-s{seed}'")
    m = run.data.metrics
    out = {}
    for short, name in (("kd", "kd_student"), ("hard", "hard_label_student")):
        out[f"{short}_loss"] = m[f"eval_{name}_heldout_loss"]
        for lv in LEVELS:
            if f"eval_{name}_task_em_L{lv}" in m:
                out[f"{short}_em_L{lv}"] = m[f"eval_{name}_task_em_L{lv}"]
        if f"eval_{name}_task_em" in m:
            out[f"{short}_em"] = m[f"eval_{name}_task_em"]
    out["aligned_fraction"] = m.get("aligned_fraction", float("nan"))
    return out


def render(rows: list[dict], meta: dict) -> str:
    kd = [r["metrics"]["kd_loss"] for r in rows]
    hard = [r["metrics"]["hard_loss"] for r in rows]
    margins = [k - h for k, h in zip(kd, hard)]
    sd = (lambda xs: statistics.stdev(xs)) if len(rows) > 1 else (lambda xs: float("nan"))

    def em(m, short):
        return " / ".join(f"{m[f'{short}_em_L{lv}']:.2f}" for lv in LEVELS if f"{short}_em_L{lv}" in m) or "-"

    lines = ["# Cross-tokenizer distillation over seeds: KD student vs hard-label student", "",
             f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- load average (1/5/15 min): {meta['load_start']} at the start, {meta['load_end']} at the end",
             f"- command: `{meta['command']}`; per seed: `raykd distill --config {qs.CONFIG} seed=N "
             f"student.path=<student> \"{OVERRIDES[0]}\"`",
             f"- teacher: the quickstart's offline build (vocab 2048); student: {json.dumps(STUDENT)} (vocab 1024)",
             *[f"- failed: {f}" for f in meta.get("failed", [])],
             *([f"- seeds kept from an earlier run of the same command: {meta['earlier']['date']}, load "
                f"{meta['earlier']['load_start']} -> {meta['earlier']['load_end']}"] if "earlier" in meta else []), "",
             "Held-out loss: nats per STUDENT token on the quickstart's 128 held-out sequences (lower is better); "
             "task exact match per level L1..L4 (greedy).", "",
             "| seed | KD student | hard-label student | KD − hard | aligned rows | EM L1..L4 KD | EM L1..L4 hard | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['seed']} | {m['kd_loss']:.4f} | {m['hard_loss']:.4f} | {m['kd_loss'] - m['hard_loss']:+.4f} | "
                     f"{m['aligned_fraction']:.2f} | {em(m, 'kd')} | {em(m, 'hard')} | {r['wall_s'] / 60:.1f} min |")
    if rows:
        lines.append(f"| mean ± std | {statistics.mean(kd):.4f} ± {sd(kd):.4f} | {statistics.mean(hard):.4f} ± "
                     f"{sd(hard):.4f} | {statistics.mean(margins):+.4f} ± {sd(margins):.4f} | | | | |")
        lines += ["", f"KD better on held-out loss in {sum(x < 0 for x in margins)} of {len(rows)} seeds."]
        def level_mean(m, short):
            vals = [m[f"{short}_em_L{lv}"] for lv in LEVELS if f"{short}_em_L{lv}" in m]
            return statistics.mean(vals) if vals else None

        both = [(level_mean(r["metrics"], "kd"), level_mean(r["metrics"], "hard")) for r in rows]
        both = [(k, h) for k, h in both if k is not None and h is not None]
        if both:
            lines.append("Task exact match, mean of the levels' exact match, KD vs hard: "
                         + ", ".join(f"{k:.3f} vs {h:.3f}" for k, h in both)
                         + f"; KD higher in {sum(k > h for k, h in both)} of {len(both)} seeds.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", help="raykd cache (default: a fresh temporary one: the first seed builds the teacher)")
    p.add_argument("--name", default="cross_tokenizer_seeds", help="results file stem in benchmarks/results/")
    p.add_argument("--add", action="store_true", help="keep the seeds already in the results file (e.g. rerun one "
                   "that failed): these seeds replace theirs, the meta keeps both commands")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every seed (e.g. train.max_steps=600)")
    a = p.parse_args()

    def log(msg: str) -> None:
        print(f"[cross_tokenizer_seeds {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": qs.machine(),
            "load_start": qs.load(), "command": " ".join(["python", "benchmarks/cross_tokenizer_seeds.py", *sys.argv[1:]])}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="raykd-xtok-") as tmp:
        cache = Path(a.cache) if a.cache else Path(tmp) / "cache"
        store = Path(tmp)
        student = student_dir(cache)
        log(f"student with its own tokenizer: {student}")
        for seed in a.seeds:
            try:
                row = qs.run_seed(seed, cache, store, [f"student.path={student}", *OVERRIDES, *a.overrides], log)
            except SystemExit as e:
                meta.setdefault("failed", []).append(f"seed {seed}: {e}")
                continue
            row["metrics"] = metrics(store, seed)
            rows.append(row)
            m = row["metrics"]
            log(f"seed {seed}: KD {m['kd_loss']:.4f} hard {m['hard_loss']:.4f} ({m['kd_loss'] - m['hard_loss']:+.4f})")
    meta["load_end"] = qs.load()
    previous = Path(__file__).resolve().parent / "results" / f"{a.name}.json"
    if a.add and previous.is_file():
        old = json.loads(previous.read_text())
        done = {r["seed"] for r in rows}
        rows = sorted([r for r in old["seeds"] if r["seed"] not in done] + rows, key=lambda r: r["seed"])
        failed = [f for f in old["meta"].get("failed", []) if int(f.split()[1].rstrip(":")) not in done]
        meta = {**meta, "failed": failed + meta.get("failed", []),
                "earlier": {k: old["meta"][k] for k in ("date", "command", "load_start", "load_end") if k in old["meta"]}}
        if not meta["failed"]:
            del meta["failed"]
    from common import write_results

    write_results(a.name, None, {"meta": meta, "seeds": rows}, lambda d: render(d["seeds"], d["meta"]))


if __name__ == "__main__":
    main()
