"""The distillation methods through the real `raykd distill` (Serve teacher, 2 Train workers, MLflow).

Slow (a few minutes on 2 cores): `pytest -m slow tests/e2e/test_methods.py`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "jobs" / "configs" / "quickstart.yaml"
pytestmark = pytest.mark.slow


def _run(tmp_path, teacher, run_name, extra):
    overrides = [
        f"run_name={run_name}", f"teacher.path={teacher}", "student.num_layers=1", "student.hidden_size=64",
        "data.builtin_chars=60000", "data.seq_len=64", "train.max_steps=8", "train.batch_size=8", "train.log_every=4",
        "train.checkpoint_every=4", "train.warmup_steps=2", "eval.max_sequences=8", "eval.gen_tokens=8",
        "eval.gen_prompts=2", "eval.baseline=false", "mlflow.experiment=methods", *extra,
    ]
    env = {**os.environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "raykd.cli", "distill", "--config", str(QUICKSTART), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("methods")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == run_name)
    return client, run, proc


def test_composed_methods_end_to_end(tmp_path, tiny_teacher):
    from raykd.data.corpus import generate_corpus

    text = generate_corpus(60_000, seed=3)
    rows = [{"text": text[i : i + 400], "score": float(i // 400 % 4) / 2} for i in range(0, len(text) - 400, 400)]
    data = tmp_path / "feedback.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    client, run, _ = _run(tmp_path, tiny_teacher, "composed", [
        f"data.source={data}", "data.weight_field=score", "loss.divergence=jsd", "loss.beta=0.3",
        "loss.alpha_schedule.warmup_steps=4", "loss.alpha_schedule.warmup_from=0.0",
        "loss.dynamic_temperature.rule=entropy", "loss.hidden.weight=0.5", "loss.hidden.layer_map={1: 2}",
        "loss.attention.weight=1.0", "loss.attention.layer_map={1: 2}", "loss.adversarial.weight=0.1",
        "loss.adversarial.warmup_steps=2",
    ])
    metrics = run.data.metrics
    for key in ("loss", "loss_soft", "loss_hard", "loss_hidden", "loss_attention", "loss_adv", "adv_disc_loss",
                "adv_disc_accuracy", "dyn_temperature_p50", "alpha", "temperature"):
        assert key in metrics, key
    alphas = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "alpha"))
    assert [s for s, _ in alphas] == list(range(1, 9))  # one value per step
    assert [round(v, 4) for _, v in alphas[:5]] == [0.0, 0.125, 0.25, 0.375, 0.5]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"dynamic_temperature_hist.png", "adversarial_curves.png"} <= artifacts
    assert run.data.params["loss.divergence"] == "jsd" and run.data.params["data.weight_field"] == "score"


def test_sequence_level_kd_end_to_end(tmp_path, tiny_teacher):
    client, run, proc = _run(tmp_path, tiny_teacher, "seqkd", [
        "seqkd.enabled=true", "seqkd.prompt_tokens=8", "seqkd.max_new_tokens=24", "seqkd.max_prompts=24",
        "loss.alpha=0.5",
    ])
    assert "seqkd: 24/24 prompts" in proc.stderr
    assert run.data.params["seqkd.enabled"] == "True" and "loss_soft" in run.data.metrics
