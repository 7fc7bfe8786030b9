"""Real Ray Train + Serve + MLflow: `raykd distill` of the quickstart with loss.on_policy.fraction=0.5 (engine hf).

In-process on the session cluster and its teacher (tests/e2e/conftest.py): `pytest -m slow tests/e2e/test_on_policy.py`.
The math and the rollout logic are fast tests (tests/loss/test_on_policy.py, tests/train/test_rollouts.py); this
checks the worker wiring on 2 DDP workers: on-policy steps happen, the teacher grades the rollouts outside the
signal cache, and the metrics reach MLflow.
"""

from __future__ import annotations

import math

import pytest

from .conftest import QUICKSTART, TINY_DISTILL

pytestmark = pytest.mark.slow

STEPS, ROWS, WORKERS, PROMPT, NEW = 6, 8, 2, 16, 16


def test_quickstart_with_half_the_steps_on_policy(teacher_app, tiny_teacher, tmp_path):
    from mlflow.tracking import MlflowClient

    from raykd.config import DistillConfig, load_config
    from raykd.distill import run_distill

    cfg = load_config(DistillConfig, QUICKSTART, [
        *TINY_DISTILL, f"teacher.path={tiny_teacher}", f"output_dir={tmp_path / 'out'}", "run_name=on-policy",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"train.storage_path={tmp_path / 'runs'}",
        f"signals.cache_dir={tmp_path / 'signals'}", f"train.max_steps={STEPS}", "train.log_every=2",
        f"train.checkpoint_every={STEPS}", "eval.baseline=false", "loss.top_k=8", "loss.divergence=jsd",
        "loss.on_policy.fraction=0.5", f"loss.on_policy.prompt_tokens={PROMPT}",
        f"loss.on_policy.max_new_tokens={NEW}",
    ])
    assert cfg.train.num_workers == WORKERS and cfg.train.batch_size == ROWS
    result = run_distill(cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(result["run_id"], key)}

    # Odd steps are on-policy (floor((s+1)/2) > floor(s/2)): one in every 2-step window.
    assert history("on_policy_fraction") == {2: 0.5, 4: 0.5, 6: 0.5}
    assert history("rollout_staleness") == {2: 1.0, 4: 1.0, 6: 1.0}  # max_staleness 1: written a step ahead
    assert all(v > 0 for v in history("rollout_tokens_per_s").values())
    assert all(v >= 0 for v in history("rollout_teacher_wait_s").values())
    # 3 on-policy steps x 8 rows x (16 + 16) tokens x 2 workers graded by the teacher...
    assert history("rollout_teacher_tokens")[STEPS] == 3 * ROWS * (PROMPT + NEW) * WORKERS
    # ...outside the signal cache: only the 3 off-policy data batches per worker went through it.
    seen = history("signal_cache_misses")[STEPS] + history("signal_cache_hits")[STEPS]
    assert seen == 3 * ROWS * WORKERS
    assert all(math.isfinite(v) for v in history("loss_on_policy").values())
    assert (tmp_path / "out" / "on-policy" / "student" / "config.json").exists()
