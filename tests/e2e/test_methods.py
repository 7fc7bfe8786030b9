"""The distillation methods, composed, through the real `raykd distill` (Serve teacher, 2 Train workers, MLflow), on
the session cluster and its teacher (tests/e2e/conftest.py). Sequence-level KD runs in test_distill.py's
end-to-end run.

    pytest -m slow tests/e2e/test_methods.py
"""

import json

import pytest

from .conftest import TINY_DISTILL

pytestmark = pytest.mark.slow


def _run(distill_cli, tmp_path, teacher, run_name, extra):
    proc = distill_cli(tmp_path, f"run_name={run_name}", f"teacher.path={teacher}", *TINY_DISTILL, "train.max_steps=8",
                       "train.log_every=4", "train.checkpoint_every=8", "eval.baseline=false",
                       "mlflow.experiment=methods", *extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("methods")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == run_name)
    return client, run, proc


def test_composed_methods_end_to_end(tmp_path, tiny_teacher, teacher_app, distill_cli):
    from raykd.data.corpus import generate_corpus

    text = generate_corpus(60_000, seed=3)
    rows = [{"text": text[i : i + 400], "score": float(i // 400 % 4) / 2} for i in range(0, len(text) - 400, 400)]
    data = tmp_path / "feedback.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    client, run, _ = _run(distill_cli, tmp_path, tiny_teacher, "composed", [
        f"data.source={data}", "data.weight_field=score", "loss.alpha=0.5", "loss.divergence=jsd", "loss.beta=0.3",
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
