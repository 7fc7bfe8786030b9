"""`raykd pipeline` without a cluster: config merging and overrides, every up-front error, evaluation math,
the generated math set, teacher adaptation and teacher answers, and the resume bookkeeping on MLflow.

The end-to-end run (Ray, Serve, Train, kill and resume) is tests/test_pipeline_e2e.py (slow).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _pipeline_tiny import tiny_pipeline, write_yaml

from raykd.cli import main
from raykd.config import ConfigError
from raykd.corpus_tasks import ensure_math_problems, generate_math_problems
from raykd.pipeline_config import (
    AdaptTeacherConfig,
    PipelineConfig,
    ResponsesConfig,
    check_pipeline,
    load_pipeline_config,
    validate_stage,
)
from raykd.pipeline_eval import ModelEval, answers_match, extract_answer, progress_table, retention, retention_table

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "pipeline_three_stage.yaml"


# --------------------------------------------------------------------------------------------- config
def test_shipped_configs_validate_every_stage():
    for path in (CONFIG, CONFIG.with_name("pipeline_gpu_7b.yaml")):
        cfg = load_pipeline_config(path)
        stages = [validate_stage(cfg, i) for i in range(len(cfg.stages))]
        assert [s.run_name for s in stages] == [f"{cfg.name}-{s.name}" for s in cfg.stages]
    cfg = load_pipeline_config(CONFIG)
    assert [s.kind for s in cfg.stages] == ["general", "instruction", "domain"]


def test_stage_inherits_defaults_dataset_then_own_keys(tmp_path):
    tree = tiny_pipeline(Path("/t"), tmp_path)
    cfg = PipelineConfig.model_validate(tree)
    domain = validate_stage(cfg, 2, {"math_train": "/data/m.jsonl"})
    assert domain.loss.alpha == 0.8 and domain.loss.temperature == 1.0  # its own keys
    assert domain.loss.top_k == 8 and domain.train.batch_size == 4  # pipeline defaults
    assert domain.data.source == "/data/m.jsonl" and domain.data.text_fields == ["question", "answer"]  # data set
    assert domain.data.seq_len == 64  # defaults.data merged *under* the data set
    assert domain.run_name == "tiny-domain" and domain.output_dir == str(tmp_path / "out" / "tiny")
    assert domain.eval.baseline is False  # the pipeline evaluates; no hard-label twin per stage
    general = validate_stage(cfg, 0)
    assert general.loss.alpha == 0.5 and general.data.source == "builtin"


def test_overrides_address_stages_by_name_and_index(tmp_path):
    path = write_yaml(tiny_pipeline(Path("/t"), tmp_path), tmp_path / "p.yaml")
    cfg = load_pipeline_config(path, ["stages.domain.loss.alpha=0.3", "stages.0.train.max_steps=3",
                                      "datasets.general.source=/x.txt", "name=other"])
    assert validate_stage(cfg, 2).loss.alpha == 0.3
    assert validate_stage(cfg, 0).train.max_steps == 3
    assert validate_stage(cfg, 0).data.source == "/x.txt" and cfg.name == "other"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.domain.loss.tmperature=1"], "stages[2] (domain): unknown config key 'loss.tmperature'"),
        (["stages.instruction.tacher.path=/x"], "stages[1] (instruction): unknown config key 'tacher'"),
        (["stages.domain.loss.alpha=2"], "stages[2] (domain): loss.alpha: Input should be less than or equal to 1"),
        (["stages.nope.loss.alpha=0.1"], "override stages.nope: no stage named 'nope' (stages: general, instruction, domain)"),
        (["stages.domain.dataset=mth"], "stages[2] (domain).dataset: no data set named 'mth'"),
        (["eval.domain=gsm"], "eval.domain: no data set named 'gsm'"),
        (["stages.domain.run_name=x"], "stages[2] (domain).run_name: set by the pipeline"),
        (["stages.domain.student.path=/s"], "stages[2] (domain).student.path: set by the pipeline"),
        (["defaults.loss.alpah=1"], "defaults: unknown config key 'loss.alpah'"),
        (["stages=[]"], "stages: the pipeline has no stages"),
        (["stages.general.name=domain"], "stages: stage name 'domain' is used twice"),
    ],
)
def test_config_errors_are_one_line_naming_stage_and_field(tmp_path, overrides, message):
    path = write_yaml(tiny_pipeline(Path("/t"), tmp_path), tmp_path / "p.yaml")
    with pytest.raises(ConfigError) as err:
        cfg = load_pipeline_config(path, overrides)
        for i in range(len(cfg.stages)):
            validate_stage(cfg, i)
    assert message in str(err.value) and "\n" not in str(err.value)


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
    from raykd.pipeline import plan_pipeline

    cfg = PipelineConfig.model_validate(tiny_pipeline(tiny_teacher, tmp_path))
    plan = plan_pipeline(cfg)
    assert [sp.cfg.run_name for sp in plan.stages] == ["tiny-general", "tiny-instruction", "tiny-domain"]
    assert plan.stages[1].records and "question" in plan.stages[1].records[0]
    assert plan.stages[2].adapt_prep is plan.stages[2].prep  # adapts on its own data set
    sets = plan.eval_sets
    assert sets.general.shape == (4, 64) and sets.domain.shape == (4, 64)
    assert len(sets.em_prompts) == 2 and all(g is not None for g in sets.em_gold)
    # The general set is trained on, so eval uses its held-out tail: no eval row occurs in training blocks.
    train_rows = {r.tobytes() for r in plan.stages[0].prep.train}
    assert not any(r.tobytes() in train_rows for r in sets.general)
    assert Path(plan.sources["math_test"]).name == "math-40-12.jsonl"
    check_pipeline(cfg)


# --------------------------------------------------------------------------------------------- eval math
@pytest.mark.parametrize(
    "text, expected",
    [("3 + 4 = <<3+4=7>>7\n#### 7", "7"), ("#### 1,234", "1234"), ("####  $18", "18"), ("x\n#### -3.5 apples", "-3.5"),
     ("no answer line", None), ("#### \n", None)],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_answers_match_numerically():
    assert answers_match("18", "18.0") and answers_match("1234", "1234")
    assert not answers_match(None, "1") and not answers_match("2", "3") and not answers_match("1", None)


def _row(model, role, g, d, em=0.0, params=100, speed=50.0, top1=0.5) -> ModelEval:
    return ModelEval(model, role, model, params, g, d, top1, top1, em, speed)


def test_progress_table_gain_and_forgetting():
    rows = [_row("start", "student", 4.0, 6.0), _row("t", "teacher", 3.0, 5.0, top1=1.0), _row("s1", "student", 3.5, 5.0),
            _row("s2", "student", 3.8, 4.2)]
    lines = progress_table(rows).splitlines()
    assert lines[4].endswith("| +1.000 | -0.500 |")  # s1: domain 6.0 → 5.0, general 4.0 → 3.5
    assert lines[5].endswith("| +0.800 | +0.300 |")  # s2 against s1, not against the teacher row


def test_retention_directions():
    teacher = _row("teacher", "teacher", 2.0, 3.0, em=0.5, params=1000, speed=100.0, top1=1.0)
    student = _row("student", "student", 2.5, 3.0, em=0.25, params=250, speed=300.0, top1=0.6)
    r = {name: ratio for name, _, _, ratio in retention(teacher, student)}
    assert r["general perplexity"] == pytest.approx(np.exp(2.0) / np.exp(2.5))  # lower is better: teacher / student
    assert r["domain loss"] == pytest.approx(1.0)
    assert r["exact match"] == pytest.approx(0.5) and r["parameters"] == pytest.approx(0.25)
    assert r["generation tok/s"] == pytest.approx(3.0) and r["top-1 agreement (domain)"] == pytest.approx(0.6)
    zero = _row("t0", "teacher", 2.0, 3.0, em=0.0)
    assert {n: x for n, _, _, x in retention(zero, student)}["exact match"] is None
    assert "| exact match | 0.000 | 0.250 | n/a |" in retention_table(zero, student)


# --------------------------------------------------------------------------------------------- data
def test_generated_math_problems_are_gsm8k_shaped_and_correct(tmp_path):
    recs = generate_math_problems(300, seed=3)
    assert recs == generate_math_problems(300, seed=3) and recs != generate_math_problems(300, seed=4)
    for r in recs:
        assert set(r) == {"question", "answer"} and r["question"].endswith("?")
        *steps, last = r["answer"].split("\n")
        assert last == f"#### {extract_answer(r['answer'])}"
        for expr, value in re.findall(r"<<([^=]+)=(-?\d+)>>", r["answer"]):
            assert eval(expr) == int(value)  # noqa: S307 - digits and + - * / only
        final = re.findall(r"<<[^=]+=(-?\d+)>>", r["answer"])[-1]
        assert extract_answer(r["answer"]) == final and int(final) >= 0
    path = ensure_math_problems(tmp_path, 20, 5)
    assert path.name == "math-20-5.jsonl" and [json.loads(x) for x in path.read_text().splitlines()] == generate_math_problems(20, 5)


# --------------------------------------------------------------------------------------------- teachers
def test_adapted_teacher_keeps_the_tokenizer_lowers_domain_loss_and_is_cached(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from raykd.data import split_blocks, tokenize_blocks
    from raykd.models import model_fingerprint
    from raykd.pipeline_teacher import adapt_teacher

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    texts = ["\n\n".join(r.values()) for r in generate_math_problems(200, 1)]
    train, val = split_blocks(tokenize_blocks(texts, tok, 64), 0.1)
    cfg = AdaptTeacherConfig(steps=12, batch_size=8, lr=3e-3)
    path, record = adapt_teacher(str(tiny_teacher), model_fingerprint(str(tiny_teacher)), train, val, cfg, cache_dir=tmp_path)
    assert AutoTokenizer.from_pretrained(path).get_vocab() == tok.get_vocab()
    assert record["heldout_loss_after"] < record["heldout_loss_before"]
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    again, record2 = adapt_teacher(str(tiny_teacher), model_fingerprint(str(tiny_teacher)), train, val, cfg, cache_dir=tmp_path)
    assert again == path and record2 == record and (path / "model.safetensors").stat().st_mtime_ns == mtime
    other, _ = adapt_teacher(str(tiny_teacher), model_fingerprint(str(tiny_teacher)), train, val,
                             AdaptTeacherConfig(steps=1, batch_size=2), cache_dir=tmp_path)
    assert other != path


class _LocalHandle:
    """The Serve handle's `generate.remote(...).result()` shape over the real transformers backend."""

    def __init__(self, backend):
        outer = self

        class _Call:
            def remote(self, prompts, max_new_tokens, temperature=0.0):
                outer.calls += 1
                result = backend.generate(prompts, max_new_tokens, temperature)
                return type("R", (), {"result": lambda self: result})()

        self.calls = 0
        self.generate = _Call()


def test_teacher_responses_are_cut_cached_and_empty_ones_dropped(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from raykd.pipeline_teacher import _cut, teacher_responses
    from raykd.teacher.hf_backend import Generation, HFTeacherBackend

    assert _cut("a = 3\n#### 3\nmore text", "####") == "a = 3\n#### 3" and _cut("abc", "####") == "abc"
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    handle = _LocalHandle(HFTeacherBackend(str(tiny_teacher), device="cpu"))
    recs = generate_math_problems(10, 2)
    cfg = ResponsesConfig(max_prompts=4, max_new_tokens=12, temperature=1.0, stop_after=None)
    path = teacher_responses(handle, tok, recs, cfg, "fp1", max_model_len=512, cache_dir=tmp_path)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert 1 <= len(rows) <= 4 and all(r["answer"] and r["question"] in {q["question"] for q in recs[:4]} for r in rows)
    calls = handle.calls
    assert teacher_responses(handle, tok, recs, cfg, "fp1", 512, cache_dir=tmp_path) == path and handle.calls == calls
    # A teacher that writes only newlines (what an undertrained one does greedily) is an error, not an empty set.
    newlines = Generation([np.array(tok.encode("\n\n\n\n"), np.int32)] * 2, 0.1)
    blank = type("H", (), {"generate": type("G", (), {"remote": lambda self, *a: type("R", (), {"result": lambda s: newlines})()})()})()
    with pytest.raises(RuntimeError, match="answered none of 2 prompts"):
        teacher_responses(blank, tok, recs, ResponsesConfig(max_prompts=2, max_new_tokens=4), "fp2", 512, cache_dir=tmp_path)


# --------------------------------------------------------------------------------------------- resume state
def test_completed_stages_recorded_on_the_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from raykd.pipeline import latest_checkpoint_step
    from raykd.pipeline_tracking import completed_stages, forget_stages_from, mark_stage_complete
    from raykd.tracking import tracked_run

    uri = f"sqlite:///{tmp_path}/m.db"
    with tracked_run(uri, "e", "p") as parent:
        client = MlflowClient(uri)
        assert completed_stages(client, parent) == {}
        mark_stage_complete(client, parent, "general", "r1", "/s1", "h1")
        mark_stage_complete(client, parent, "instruction", "r2", "/s2", "h2", teacher="/t", teacher_fingerprint="f")
        assert completed_stages(client, parent) == {
            "general": {"run_id": "r1", "student_dir": "/s1", "config_hash": "h1"},
            "instruction": {"run_id": "r2", "student_dir": "/s2", "config_hash": "h2", "teacher": "/t",
                            "teacher_fingerprint": "f"},
        }
        forget_stages_from(client, parent, ["instruction", "domain"])
        assert list(completed_stages(client, parent)) == ["general"]

    # What Ray Train V2 restores: the latest checkpoint in its snapshot, not the newest directory on disk
    # (one written just before a kill but never registered is skipped on restore).
    assert latest_checkpoint_step(str(tmp_path), "run") is None
    for i, step in enumerate((5, 10, 15)):
        d = tmp_path / "run" / f"checkpoint_{i}"
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step}))
    snapshot = {"ray_version": "2.60.0", "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_1", "metrics": {}}}
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert latest_checkpoint_step(str(tmp_path), "run") == 10
