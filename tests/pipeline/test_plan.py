"""`raykd pipeline` before any stage runs: every up-front error (data, tokenizers, exact-match set) is one
line, and the plan checks every stage and builds the evaluation sets. The end-to-end run (Ray, Serve, Train,
kill and resume) is tests/e2e/test_pipeline.py (slow).
"""

from __future__ import annotations

import json
from pathlib import Path

from raykd.cli import main
from raykd.config.pipeline import PipelineConfig, check_pipeline
from tests.pipeline.tiny_pipeline import tiny_pipeline, write_yaml


CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "pipeline_three_stage.yaml"


def _cli_error(tree: dict, tmp_path: Path, capsys, *overrides: str) -> str:
    """Run `raykd pipeline` in-process; assert it stopped with exit 2 before any stage (no MLflow store)."""
    path = write_yaml(tree, tmp_path / "p.yaml")
    assert main(["pipeline", "--config", str(path), *overrides]) == 2
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("raykd: error: ")
    return lines[-1]


def test_missing_dataset_file_fails_before_any_stage(tiny_teacher, tmp_path, capsys, raykd_cache):
    tree = tiny_pipeline(tiny_teacher, tmp_path)
    line = _cli_error(tree, tmp_path, capsys, f"datasets.math_train.source={tmp_path}/nope.jsonl")
    assert line == f"raykd: error: datasets.math_train.source: file not found: {tmp_path}/nope.jsonl"


def test_domain_teacher_with_another_tokenizer_fails_before_any_stage(tiny_teacher, other_vocab_teacher, tmp_path,
                                                                       capsys, raykd_cache):
    tree = tiny_pipeline(tiny_teacher, tmp_path)
    line = _cli_error(tree, tmp_path, capsys, f"stages.domain.teacher.path={other_vocab_teacher}")
    assert line.startswith("raykd: error: stages[2] (domain).teacher.path: the teacher's tokenizer differs from the "
                           f"student's ({tiny_teacher})")


def test_empty_stage_list_and_bad_exact_match_set(tiny_teacher, tmp_path, capsys, raykd_cache):
    tree = tiny_pipeline(tiny_teacher, tmp_path)
    assert _cli_error({**tree, "stages": []}, tmp_path, capsys).endswith("stages: the pipeline has no stages (give at least one)")
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"question": "2+2?", "answer": "four"}) + "\n")
    tree["datasets"]["qa"] = {"source": str(bad), "text_fields": ["question", "answer"]}
    line = _cli_error(tree, tmp_path, capsys, "eval.exact_match=qa")
    assert line == f"raykd: error: eval.exact_match: no 'answer' in {bad} ends in '#### <number>'"


def test_plan_checks_every_stage_and_builds_eval_sets(tiny_teacher, tmp_path, raykd_cache):
    from raykd.pipeline.plan import plan_pipeline

    cfg = PipelineConfig.model_validate(tiny_pipeline(tiny_teacher, tmp_path))
    plan = plan_pipeline(cfg)
    assert [sp.cfg.run_name for sp in plan.stages] == ["tiny-general", "tiny-instruction", "tiny-domain"]
    assert plan.stages[1].records and "question" in plan.stages[1].records[0]
    assert plan.stages[2].adapt_prep is plan.stages[2].prep  # adapts on its own data set
    sets = plan.eval_sets
    assert sets.general.shape == (4, 64) and sets.domain.shape == (4, 64)
    assert len(sets.em_prompts) == 2 and all(g is not None for g in sets.em_gold)
    # The general set is trained on, so eval uses its held-out tail: no eval row occurs in training blocks.
    from raykd.data.blocks import held_out_count, pack_in_process
    from raykd.data.ingest import pad_id
    from raykd.data.records import RecordEncoder

    stage0 = plan.stages[0]  # its training blocks, packed as the Ray Data ingest packs them
    blocks = pack_in_process(stage0.cfg.data, RecordEncoder(plan.tokenizer, stage0.cfg.data), pad_id(plan.tokenizer),
                             stage0.prep.chunks)[0].ids
    train = blocks[: len(blocks) - held_out_count(len(blocks), stage0.cfg.data.val_fraction, 64)]
    train_rows = {r.tobytes() for r in train}
    assert not any(r.tobytes() in train_rows for r in sets.general)
    assert (sets.general == blocks[len(train) : len(train) + 4]).all()  # the first held-out blocks
    assert Path(plan.sources["math_test"]).name == "math-40-12.jsonl"
    check_pipeline(cfg)
