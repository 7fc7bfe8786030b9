"""Building, caching and loading the tiny offline teacher (a very small one, a few seconds on CPU)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import raykd.teacher.build as tb  # noqa: E402
from raykd.config import TinyTeacherConfig  # noqa: E402

TINY = dict(
    vocab_size=300,
    hidden_size=64,
    num_layers=2,
    num_heads=1,
    intermediate_size=128,
    max_position_embeddings=128,
    corpus_chars=20_000,
    seq_len=64,
    batch_size=8,
    max_steps=20,
    max_minutes=2.0,
)


def tiny_cfg(**overrides) -> TinyTeacherConfig:
    return TinyTeacherConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "tiny"
    return tb.build_tiny_teacher(tiny_cfg(), out, progress=False, num_threads=1)


def test_directory_layout_and_metadata(teacher_dir: Path) -> None:
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (teacher_dir / name).is_file(), name
    meta = json.loads((teacher_dir / tb.META_FILE).read_text())
    cfg = tiny_cfg()
    assert meta["fingerprint"] == tb.teacher_fingerprint(cfg)
    assert meta["config"] == cfg.model_dump(mode="json")
    assert meta["steps"] == 20 and meta["stopped_by"] == "max_steps"
    assert meta["tokens_seen"] == 20 * 8 * 64
    # Training made progress from the first logged step, and the held-out loss is finite and sane.
    first = meta["loss_log"][0]
    assert first[0] == 1
    assert meta["train_loss"] < first[1] - 0.5
    assert math.isfinite(meta["val_loss"]) and meta["val_loss"] < math.log(meta["vocab_size"])
    assert {"corpus", "tokenizer", "train", "total"} <= set(meta["seconds"])
    # No temp or backup directories left beside it.
    assert [p.name for p in teacher_dir.parent.iterdir()] == [teacher_dir.name]


def test_loads_with_auto_classes_and_generates(teacher_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert model.config.model_type == "llama"
    assert model.config.tie_word_embeddings is False
    assert model.config.vocab_size == len(tok) <= 300
    assert tok.eos_token == tok.bos_token == tok.pad_token == tb.EOT
    assert model.config.eos_token_id == tok.eos_token_id

    text = "One morning, Tom went to the park."
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == text  # byte-level BPE round-trips exactly
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8
    assert isinstance(tok.decode(out[0]), str)


def test_fingerprint() -> None:
    a = tb.teacher_fingerprint(tiny_cfg())
    assert len(a) == 16 and int(a, 16) >= 0
    assert a == tb.teacher_fingerprint(tiny_cfg())
    assert a != tb.teacher_fingerprint(tiny_cfg(seed=1))
    assert a != tb.teacher_fingerprint(tiny_cfg(lr=1e-3))
    assert len({a, tb.teacher_fingerprint(tiny_cfg(corpus="shakespeare")),
                tb.teacher_fingerprint(tiny_cfg(task_fraction=0.2))}) == 3


def test_shakespeare_teacher_text_mixes_tasks_and_stays_out_of_the_students_part() -> None:
    from raykd.data.sources import shakespeare_text

    cfg = tiny_cfg(corpus="shakespeare", corpus_chars=50_000, task_fraction=0.2)
    text = tb.teacher_text(cfg)
    assert 62_000 <= len(text) <= 63_000  # 50k of prose is 80 %
    assert "99999999-" in text and text.count("99999999-") > 100
    prose = "".join(ln for ln in text.splitlines(keepends=True) if "99999999-" not in ln)
    assert shakespeare_text("teacher")[:50_000].replace("\n", "") == prose.replace("\n", "")
    assert tb.teacher_text(tiny_cfg(corpus="shakespeare", corpus_chars=50_000)) == shakespeare_text("teacher")[:50_000]
    with pytest.raises(ValueError, match="900,000"):
        tiny_cfg(corpus="shakespeare", corpus_chars=900_001)


def test_split_digits_tokenizer_gives_one_token_per_digit() -> None:
    from raykd.teacher.tiny_model import train_tokenizer

    text = "12345 678 is 12345. " * 200 + "words and more words. " * 200
    plain = train_tokenizer(text, 300, 64)
    split = train_tokenizer(text, 300, 64, split_digits=True)
    assert len(plain.tokenize("12345")) < 5
    assert split.tokenize("12345") == list("12345") and split.decode(split.encode("a 12345=9")) == "a 12345=9"


def _counting_build(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = tb.build_tiny_teacher

    def build(cfg, out_dir, **kw):
        calls.append(Path(out_dir))
        return real(cfg, out_dir, progress=False, num_threads=1)

    monkeypatch.setattr(tb, "build_tiny_teacher", build)
    return calls


def test_ensure_builds_once_then_reuses(tmp_path: Path, monkeypatch) -> None:
    calls = _counting_build(monkeypatch)
    cfg = tiny_cfg(max_steps=5)
    path = tb.ensure_tiny_teacher(cfg, tmp_path)
    assert path == tmp_path / "teachers" / f"tiny-{tb.teacher_fingerprint(cfg)}"
    assert (path / "model.safetensors").is_file()
    mtime = (path / tb.META_FILE).stat().st_mtime_ns
    assert tb.ensure_tiny_teacher(cfg, tmp_path) == path
    assert len(calls) == 1
    assert (path / tb.META_FILE).stat().st_mtime_ns == mtime


def test_ensure_default_cache_dir(tmp_path: Path, monkeypatch) -> None:
    calls = _counting_build(monkeypatch)
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(max_steps=2)
    path = tb.ensure_tiny_teacher(cfg)
    assert path.parent == tmp_path / "cache" / "teachers" and len(calls) == 1


def test_concurrent_ensure_builds_once(tmp_path: Path, monkeypatch) -> None:
    calls = _counting_build(monkeypatch)
    cfg = tiny_cfg(max_steps=3)
    results: list[Path] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            results.append(tb.ensure_tiny_teacher(cfg, tmp_path))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 1 and len(set(results)) == 1


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during pre-training")

    monkeypatch.setattr(tb, "_pretrain", boom)
    cfg = tiny_cfg()
    out = tmp_path / "t"
    with pytest.raises(RuntimeError, match="simulated"):
        tb.build_tiny_teacher(cfg, out, progress=False, num_threads=1)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(RuntimeError, match="simulated"):
        tb.ensure_tiny_teacher(cfg, tmp_path / "cache")
    teachers = tmp_path / "cache" / "teachers"
    assert [p.name for p in teachers.iterdir()] == [f"tiny-{tb.teacher_fingerprint(cfg)}.lock"]


def test_failed_rebuild_keeps_existing_teacher(teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    out = tmp_path / "t"
    shutil.copytree(teacher_dir, out)
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(tb, "_pretrain", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        tb.build_tiny_teacher(tiny_cfg(), out, progress=False, num_threads=1)
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


def test_corpus_too_small_for_seq_len(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        tb.build_tiny_teacher(tiny_cfg(corpus_chars=10_000, seq_len=20_000), tmp_path / "t", progress=False, num_threads=1)
    assert not (tmp_path / "t").exists()


def test_cli_rejects_bad_override(capsys) -> None:
    from raykd.cli import main

    assert main(["build-teacher", "num_heads=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raykd: error: ") and "num_heads" in err


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, raykd.teacher.build; print(any(m in sys.modules for m in ('torch', 'transformers', 'tokenizers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "False"
