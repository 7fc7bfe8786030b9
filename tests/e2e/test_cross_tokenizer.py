"""Real Ray Train + Serve + MLflow: `raykd distill` into a student whose tokenizer is not the teacher's.

In-process on the session cluster and its teacher (tests/e2e/conftest.py): `pytest -m slow tests/e2e/test_cross_tokenizer.py`.
The math, the alignment and the worker-side wiring are fast tests (tests/loss/test_cross_tokenizer.py,
tests/data/test_token_alignment.py, tests/train/test_cross_signals.py); this checks that the pieces meet: the
data is the student's tokens, the teacher scores its own tokens of the same text through the signal cache,
the soft term is trained on the aligned rows, and the exported student keeps its own tokenizer.
"""

from __future__ import annotations

import math

import pytest

from .conftest import QUICKSTART, TINY_DISTILL

pytestmark = pytest.mark.slow

STEPS, ROWS = 4, 8


def test_distil_into_a_student_of_another_tokenizer(teacher_app, tiny_teacher, other_vocab_teacher, tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer

    from raykd.config import DistillConfig, load_config
    from raykd.distill import run_distill

    cfg = load_config(DistillConfig, QUICKSTART, [
        *TINY_DISTILL, f"teacher.path={tiny_teacher}", f"student.path={other_vocab_teacher}",
        "loss.cross_tokenizer={uld_weight: 0.5}", f"output_dir={tmp_path / 'out'}", "run_name=xtok",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"train.storage_path={tmp_path / 'runs'}",
        f"signals.cache_dir={tmp_path / 'signals'}", f"train.max_steps={STEPS}", "train.log_every=2",
        f"train.checkpoint_every={STEPS}", "eval.baseline=false", "loss.top_k=8", "train.num_workers=1",
    ])
    result = run_distill(cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(result["run_id"], key)}

    aligned = history("aligned_fraction")
    assert set(aligned) == {2, 4} and all(0.3 < v <= 1.0 for v in aligned.values())
    assert all(math.isfinite(v) and v > 0 for v in history("loss_soft").values())
    # every data sequence went to the teacher once (its own tokens: a cache miss the first time)
    assert history("signal_cache_misses")[STEPS] == STEPS * ROWS
    student = tmp_path / "out" / "xtok" / "student"
    assert len(AutoTokenizer.from_pretrained(student)) == len(AutoTokenizer.from_pretrained(other_vocab_teacher))
    assert "teacher" not in result["table"].split("\n", 2)[-1]  # no teacher row across tokenizers
