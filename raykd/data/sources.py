"""Where training text comes from: `data.source` read and checked, documents out.

    texts = load_texts(cfg.data)                       # list[str], validated (raykd/data/blocks.py tokenizes)
    texts, weights = load_weighted_texts(cfg.data)     # + each jsonl record's loss weight

Sources: `builtin` (generated text, no files needed), `shakespeare` (the public-domain text shipped in
raykd/data/corpora/, the part after the offline teacher's), a `.txt` file, or a `.jsonl` file whose
`text_fields` are joined with a blank line (e.g. GSM8K's `question` + `answer`). With `data.task_fraction`
task-suite problems (raykd/data/task_suite.py) are mixed into the one text of the first three.

Feedback-weighted samples: with `data.weight_field: score`, each jsonl record carries a loss weight,
e.g. `{"text": "...", "score": 0.25}` (finite, >= 0; 0 drops the record from the loss, 2 counts it
double). `load_weighted_texts` + `tokenize_weighted_blocks` (raykd/data/blocks.py) give every token its record's weight.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from raykd.config import ConfigError, DataConfig
from raykd.config.teacher import SHAKESPEARE_TEACHER_CHARS

CORPORA_DIR = Path(__file__).resolve().parent / "corpora"
SHAKESPEARE_HELDOUT_CHARS = 40_000  # the text's end: used by nothing (kept for probes of the teacher itself)


def shakespeare_text(part: str) -> str:
    """The packaged tinyshakespeare: 'teacher' (the first 900k characters), 'student' (the rest, less the
    last 40k) or 'all'."""
    text = (CORPORA_DIR / "tinyshakespeare.txt").read_text(encoding="utf-8")
    if part == "teacher":
        return text[:SHAKESPEARE_TEACHER_CHARS]
    if part == "student":
        return text[SHAKESPEARE_TEACHER_CHARS:-SHAKESPEARE_HELDOUT_CHARS]
    if part == "all":
        return text
    raise ValueError(f"part must be 'teacher', 'student' or 'all', got {part!r}")


def load_texts(cfg: DataConfig, field: str = "data") -> list[str]:
    return load_weighted_texts(cfg, field)[0]


def load_weighted_texts(cfg: DataConfig, field: str = "data") -> tuple[list[str], list[float] | None]:
    """Documents, and with `weight_field` each jsonl record's loss weight (finite, >= 0), else None."""
    if cfg.source == "builtin":
        from raykd.data.corpus import generate_corpus

        return [_with_tasks(generate_corpus(cfg.builtin_chars, cfg.builtin_seed), cfg)], None
    if cfg.source == "shakespeare":
        return [_with_tasks(shakespeare_text("student"), cfg)], None
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise ConfigError(f"{field}.source: file not found: {path}")
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise ConfigError(f"{field}.source: {path} is empty")
        return [_with_tasks(text, cfg)], None
    if path.suffix != ".jsonl":
        raise ConfigError(f"{field}.source: {path} must be 'builtin', 'shakespeare', a .txt or a .jsonl file")
    texts, weights = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{field}.source: {path}:{lineno} is not valid JSON") from None
            missing = [f for f in cfg.text_fields if f not in row]
            if missing:
                raise ConfigError(f"{field}.text_fields: {path}:{lineno} has no field {missing[0]!r}")
            texts.append("\n\n".join(str(row[f]) for f in cfg.text_fields))
            if cfg.weight_field is not None:
                weights.append(_record_weight(row, cfg.weight_field, f"{field}.weight_field: {path}:{lineno}"))
    if not texts:
        raise ConfigError(f"{field}.source: {path} has no records")
    return texts, (weights if cfg.weight_field is not None else None)


def _with_tasks(text: str, cfg: DataConfig) -> str:
    if cfg.task_fraction <= 0:
        return text
    from raykd.data.task_suite import TaskSuite, mix_with_tasks

    return mix_with_tasks(text, TaskSuite(), cfg.task_fraction, cfg.builtin_seed)


def _record_weight(row: dict, name: str, where: str) -> float:
    if name not in row:
        raise ConfigError(f"{where} has no field {name!r}")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)
