"""On-policy vs off-policy distillation on skill: the quickstart's teacher and student, the same student-token
budget, several seeds; task-suite exact match per level, held-out loss, wall time, teacher tokens scored.

    nice -n 10 python benchmarks/onpolicy_compare.py                                  # 6 methods x 3 seeds
    nice -n 10 python benchmarks/onpolicy_compare.py --steps 40 --per-level 50 --seeds 0 1 2
    python benchmarks/onpolicy_compare.py --methods offpolicy_kd onpolicy_1.0_jsd --seeds 0   # a quick look

Every run is `raykd distill --config jobs/configs/quickstart.yaml <method overrides> seed=N train.max_steps=S
eval.tasks.per_level=P eval.baseline=false`, in this process on one Ray cluster and one teacher deployment
(run_distill, as the e2e tests do), each run with its own cold signal cache so that "teacher tokens" counts what
that method made the teacher score. On-policy rollouts are 32-token prompts + 96 student tokens = 128 tokens, the
block length, so every method passes the same student tokens per step (students see batch x 128 x steps tokens).

  hard           loss.alpha=0 (labels only, no teacher)
  offpolicy_kd   the quickstart (alpha 0.9, forward KL, T 1, top-20)
  seqkd          seqkd.enabled, alpha 0: the teacher's greedy continuations (32-token prompts, 96 new tokens)
  onpolicy_0.5   loss.on_policy.fraction=0.5, jsd beta 0.5 (GKD) on the on-policy steps (and the off-policy ones)
  onpolicy_1.0   loss.on_policy.fraction=1, jsd beta 0.5 (GKD, fully on-policy)
  sampled_rkl    loss.on_policy.fraction=1, objective sampled_reverse_kl (k = 1 teacher log-probs)

Teacher tokens scored = (signal_cache_misses: data sequences scored) x seq_len + rollout_teacher_tokens; for seqkd
the tokens the teacher generated (prompts x 96) are counted as well. Writes benchmarks/results/onpolicy_compare.json
(after every run: a partial run leaves its finished rows), .md (table, mean +- std over seeds, machine, load
average, command) and .png (exact match by level, held-out loss), and logs every run to MLflow (experiment
raykd-onpolicy-compare; `--tracking-uri sqlite:///mlflow.db` keeps them, the default store is temporary).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "jobs" / "configs" / "quickstart.yaml"
LEVELS = (1, 2, 3, 4)
ON_POLICY = ["loss.on_policy.prompt_tokens=32", "loss.on_policy.max_new_tokens=96"]
METHODS: dict[str, list[str]] = {
    "hard": ["loss.alpha=0"],
    "offpolicy_kd": [],
    "seqkd": ["seqkd.enabled=true", "loss.alpha=0", "seqkd.prompt_tokens=32", "seqkd.max_new_tokens=96"],
    "onpolicy_0.5": ["loss.on_policy.fraction=0.5", "loss.divergence=jsd", "loss.beta=0.5", *ON_POLICY],
    "onpolicy_1.0": ["loss.on_policy.fraction=1.0", "loss.divergence=jsd", "loss.beta=0.5", *ON_POLICY],
    "sampled_rkl": ["loss.on_policy.fraction=1.0", "loss.on_policy.objective=sampled_reverse_kl", *ON_POLICY],
}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one_run(method: str, seed: int, args, tmp: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from raykd.config import DistillConfig, load_config
    from raykd.distill import run_distill

    name = f"{method}-s{seed}"
    cfg = load_config(DistillConfig, CONFIG, [
        *METHODS[method], f"seed={seed}", f"run_name={name}", f"train.max_steps={args.steps}",
        f"train.warmup_steps={max(1, args.steps // 10)}", f"train.checkpoint_every={args.steps}",
        f"train.log_every={max(1, args.steps // 5)}", "eval.baseline=false", f"eval.tasks.per_level={args.per_level}",
        f"output_dir={tmp / 'out'}", f"train.storage_path={tmp / 'runs'}", f"signals.cache_dir={tmp / 'signals' / name}",
        f"mlflow.tracking_uri={args.tracking_uri}", "mlflow.experiment=raykd-onpolicy-compare",
        *args.override,
    ])
    start = time.perf_counter()
    out = run_distill(cfg)
    wall = time.perf_counter() - start
    client = MlflowClient(args.tracking_uri)

    def last(key: str) -> float:
        hist = client.get_metric_history(out["run_id"], key)
        return max(hist, key=lambda m: m.step).value if hist else 0.0

    scored = last("signal_cache_misses") * cfg.data.seq_len + last("rollout_teacher_tokens")
    if cfg.seqkd.enabled:  # the teacher wrote the training text (prompts x new tokens)
        scored += last("data_train_blocks") * cfg.seqkd.max_new_tokens
    student = out["task_scores"]["kd student"]
    teacher = out["task_scores"]["teacher"]
    row = next(r for r in out["rows"] if r.model == "kd student")
    return {
        "method": method, "seed": seed, "run_id": out["run_id"], "wall_s": round(wall, 1),
        "heldout_loss": row.heldout_loss, "teacher_tokens": int(scored),
        "em": {str(lv): student.exact_match(lv) for lv in LEVELS}, "em_all": student.exact_match(),
        "teacher_em": {str(lv): teacher.exact_match(lv) for lv in LEVELS},
        "n_per_level": args.per_level, "load_after": load(),
    }


def summarize(runs: list[dict]) -> str:
    def ms(values: list[float], fmt: str) -> str:
        if len(values) < 2:
            return format(values[0], fmt) if values else "-"
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    lines = ["| method | seeds | EM L1 | EM L2 | EM L3 | EM L4 | EM all | held-out loss | wall s | teacher tokens |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        em = [ms([r["em"][str(lv)] for r in rs], ".3f") for lv in LEVELS]
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(em) + f" | {ms([r['em_all'] for r in rs], '.3f')} | "
                     f"{ms([r['heldout_loss'] for r in rs], '.3f')} | {ms([r['wall_s'] for r in rs], '.0f')} | "
                     f"{ms([float(r['teacher_tokens']) for r in rs], '.0f')} |")
    return "\n".join(lines)


def write(runs: list[dict], args, started: str, machine: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/onpolicy_compare.py " + " ".join(sys.argv[1:])
    meta = {"date": started, "machine": machine, "load_at_start": args.load_at_start, "load_now": load(),
            "command": command, "steps": args.steps, "per_level": args.per_level, "seeds": args.seeds,
            "overrides": args.override}
    (RESULTS / "onpolicy_compare.json").write_text(json.dumps({**meta, "runs": runs}, indent=1) + "\n")
    teacher = runs[0]["teacher_em"] if runs else {}
    md = ["# On-policy vs off-policy distillation (benchmarks/onpolicy_compare.py)", "",
          f"- date: {started}", f"- machine: {machine}", f"- load average at start / now: {args.load_at_start} / "
          f"{load()}", f"- command: `{command}`",
          f"- budget: {args.steps} steps x 2 workers x 16 sequences x 128 tokens per method and seed; task suite "
          f"{args.per_level} test prompts per level (greedy exact match); held-out loss on 128 held-out blocks",
          f"- teacher exact match per level: {teacher}", "",
          "Mean ± std (ddof 1) over seeds, as measured; exact match is a share of the level's prompts.", "",
          summarize(runs), ""]
    (RESULTS / "onpolicy_compare.md").write_text("\n".join(md))


def plot(runs: list[dict], path: Path) -> None:
    """Exact match by level (mean ± std over seeds) and held-out loss, one mark per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (em_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    for i, method in enumerate(methods):
        rs = [r for r in runs if r["method"] == method]
        em = [[r["em"][str(lv)] for r in rs] for lv in LEVELS]
        em_ax.errorbar([lv + (i - len(methods) / 2) * 0.04 for lv in LEVELS], [statistics.mean(v) for v in em],
                       yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in em], marker="o", capsize=3,
                       label=f"{method} ({len(rs)} seeds)")
        losses = [r["heldout_loss"] for r in rs]
        loss_ax.bar(i, statistics.mean(losses), yerr=statistics.stdev(losses) if len(losses) > 1 else 0, capsize=3)
    em_ax.set(xlabel="difficulty level", ylabel="task exact match", xticks=list(LEVELS), ylim=(-0.05, 1.05),
              title="task suite (greedy, exact match)")
    em_ax.legend(fontsize=8)
    loss_ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    loss_ax.set(ylabel="held-out loss (nats/token)", title="held-out loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--per-level", type=int, default=50)
    p.add_argument("--override", nargs="*", default=[], help="more key=value overrides for every run")
    p.add_argument("--tracking-uri", default=None, help="MLflow store of the runs (default: a temporary one)")
    p.add_argument("--plot-only", action="store_true", help="redraw the plot from benchmarks/results/onpolicy_compare.json")
    args = p.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "onpolicy_compare.json").read_text())["runs"], RESULTS / "onpolicy_compare.png")
        return
    args.load_at_start = load()
    from common import describe, describe_line

    from raykd.cluster import init_ray, shutdown_ray

    machine = describe_line(describe())
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="raykd-onpolicy-") as tmp:
        args.tracking_uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        ray_started = init_ray(8)  # one cluster (and one teacher deployment) for every run
        try:
            for seed in args.seeds:
                for method in args.methods:
                    print(f"=== {method} seed {seed} (load {load()})", flush=True)
                    runs.append(one_run(method, seed, args, Path(tmp)))
                    print(json.dumps(runs[-1]), flush=True)
                    write(runs, args, started, machine)
                    plot(runs, RESULTS / "onpolicy_compare.png")
        finally:
            shutdown_ray(ray_started)
    print(summarize(runs))


if __name__ == "__main__":
    main()
