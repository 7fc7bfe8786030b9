"""Shared fixtures: a very small offline teacher (seconds to build), an isolated raykd cache, ../shared/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Small models: one thread each keeps parallel tests and Ray workers from oversubscribing 2 cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# The project's shared files (real text, KubeRay CRDs, specs) beside the checkout: ../shared/.
SHARED = Path(__file__).resolve().parents[2] / "shared"

TINY_TEACHER = dict(
    vocab_size=384, hidden_size=64, num_heads=1, num_layers=2, intermediate_size=128,
    corpus_chars=30_000, max_steps=25, seq_len=64, batch_size=16, max_minutes=1.0,
)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Llama teacher with its own BPE tokenizer (HF directory)."""
    from raykd.config import TinyTeacherConfig
    from raykd.teacher.build import build_tiny_teacher

    return build_tiny_teacher(TinyTeacherConfig(**TINY_TEACHER), tmp_path_factory.mktemp("teacher") / "tiny",
                              progress=False, num_threads=1)


@pytest.fixture(scope="session")
def other_vocab_teacher(tmp_path_factory) -> Path:
    """Same architecture, a different tokenizer (vocab 320): for vocabulary-mismatch errors."""
    from raykd.config import TinyTeacherConfig
    from raykd.teacher.build import build_tiny_teacher

    cfg = TinyTeacherConfig(**{**TINY_TEACHER, "vocab_size": 320, "max_steps": 2})
    return build_tiny_teacher(cfg, tmp_path_factory.mktemp("teacher") / "other", progress=False, num_threads=1)


@pytest.fixture(scope="session")
def uncased_teacher(tmp_path_factory, tiny_teacher) -> Path:
    """The tiny teacher with a lower-casing tokenizer: a student's "A" can never be aligned with it."""
    import shutil

    from tokenizers import normalizers
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("teacher") / "uncased"
    shutil.copytree(tiny_teacher, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bert_teacher(tmp_path_factory):
    """A tiny BERT teacher (WordPiece + BertForMaskedLM, seconds to build) for the masked-LM tests."""
    from raykd.config.mlm import MLMTeacherBuild
    from raykd.mlm.models import build_tiny_bert

    cfg = MLMTeacherBuild(vocab_size=300, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                          max_position_embeddings=64, corpus_chars=20_000, seq_len=32, batch_size=16, steps=40)
    return build_tiny_bert(cfg, tmp_path_factory.mktemp("bert") / "teacher", progress=False)


@pytest.fixture
def raykd_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAYKD_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/ (real text in data/, KubeRay CRDs in k8s/). A clone outside the project's layout has none:
    the tests that need it skip there, with this reason; CI has it and runs them."""
    if not SHARED.is_dir():
        pytest.skip(f"no {SHARED} (a clone outside the project's layout); these tests read ../shared/")
    return SHARED
