"""Driver side, before any cluster starts: everything about a `raykd distill` config that can be checked.

    prep = prepare(cfg)          # data read and tokenized, teacher resolved (the tiny one built), checks run
    prep.train, prep.val         # (N, L) / (M, L) int32 blocks; prep.train_weights (N, L) float32 or None

Order matters for the user: data errors first (the cheapest to fix), then the teacher and student
directories, vocabularies, lengths, the method layer maps against the real models, and captured signals.
Each problem is one `ConfigError` line. `check_teacher_info` repeats the teacher checks against the
deployed teacher (`TeacherInfo`), whose limits (vLLM's max_logprobs, max_model_len) only it knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raykd.config import ConfigError, DistillConfig


@dataclass
class Prepared:
    teacher_path: str
    fingerprint: str
    tokenizer: Any
    train: np.ndarray  # (N, L) int32
    val: np.ndarray  # (M, L) int32
    train_weights: np.ndarray | None = None  # (N, L) float32 per-token sample weights (data.weight_field)


def prepare(cfg: DistillConfig, field: str = "data") -> Prepared:
    """All checks that need no cluster; builds the tiny teacher if none is given (cached)."""
    from raykd.data.blocks import split_blocks, tokenize_weighted_blocks
    from raykd.data.sources import load_weighted_texts
    from raykd.models import check_model_dir, model_fingerprint

    texts, weights = load_weighted_texts(cfg.data, field)  # data errors first: they are the cheapest to fix
    if cfg.teacher.path is not None:
        check_model_dir(cfg.teacher.path, "teacher.path")
        teacher_path = cfg.teacher.path
    else:
        from raykd.teacher.build import ensure_tiny_teacher

        teacher_path = str(ensure_tiny_teacher(cfg.teacher.build))
    if cfg.student.path is not None:
        check_model_dir(cfg.student.path, "student.path")

    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    t_config = AutoConfig.from_pretrained(teacher_path)
    if cfg.student.path is not None:
        check_same_vocab(teacher_path, cfg.student.path, "student.path")
    max_len = getattr(t_config, "max_position_embeddings", None)
    if max_len and cfg.data.seq_len > max_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the teacher's max_position_embeddings={max_len}")
    if cfg.loss.top_k > t_config.vocab_size:
        raise ConfigError(f"loss.top_k={cfg.loss.top_k} exceeds the teacher's vocab_size={t_config.vocab_size}")
    if cfg.teacher.backend == "vllm":  # what the engine would refuse (architecture, head size, k, length)
        from raykd.teacher.vllm_backend import check_vllm_teacher

        check_vllm_teacher(teacher_path, cfg.teacher, top_k=cfg.loss.top_k, seq_len=cfg.data.seq_len)
    check_methods(cfg, t_config)  # layer maps, head counts, layer selection against the real models
    blocks, block_weights = tokenize_weighted_blocks(texts, weights, tokenizer, cfg.data.seq_len)
    if len(blocks) == 0:
        raise ConfigError(f"{field}.source: {cfg.data.source} yields no sequence of {cfg.data.seq_len} tokens")
    train, val = split_blocks(blocks, cfg.data.val_fraction, field)
    if cfg.data.max_sequences:
        train = train[: cfg.data.max_sequences]
    train_weights = None if block_weights is None else block_weights[: len(train)]
    fingerprint = model_fingerprint(teacher_path)
    if cfg.signals.offline_path:  # captured signals: this teacher's, covering every training sequence
        from raykd.signals.store import check_offline

        check_offline(cfg.signals.offline_path, fingerprint, cfg.loss.top_k, t_config.vocab_size, train)
    return Prepared(teacher_path, fingerprint, tokenizer, train, val, train_weights)


def check_same_vocab(teacher_path: str, other_path: str, field: str) -> None:
    """Teacher signals are token ids: student and teacher must share the tokenizer exactly."""
    from transformers import AutoConfig, AutoTokenizer

    t_cfg, o_cfg = AutoConfig.from_pretrained(teacher_path), AutoConfig.from_pretrained(other_path)
    if t_cfg.vocab_size != o_cfg.vocab_size:
        raise ConfigError(f"{field}: vocab_size {o_cfg.vocab_size} differs from the teacher's {t_cfg.vocab_size}")
    if AutoTokenizer.from_pretrained(teacher_path).get_vocab() != AutoTokenizer.from_pretrained(other_path).get_vocab():
        raise ConfigError(f"{field}: tokenizer differs from the teacher's (same size, different tokens)")


def check_methods(cfg: DistillConfig, teacher_config: Any, student_config: Any | None = None) -> None:
    """Checks that need the model configs (teacher depth and heads, the actual student): one clear line each.

    Called by `prepare` before any cluster starts (and by sweeps for every extreme of the space). The
    student's config is derived from the teacher's as the job will (or read from student.path) when not given.
    """
    from raykd.loss.objective import uses_hidden
    from raykd.models import derive_student_config, select_layers

    if student_config is None:
        if cfg.student.path is not None:
            from transformers import AutoConfig

            student_config = AutoConfig.from_pretrained(cfg.student.path)
        else:
            student_config = derive_student_config(teacher_config, cfg.student)
            select_layers(cfg.student.layer_selection, teacher_config.num_hidden_layers,
                          student_config.num_hidden_layers)  # explicit lists against the teacher's depth
    lc = cfg.loss
    t_layers, s_layers = teacher_config.num_hidden_layers, student_config.num_hidden_layers
    for name, first, used in (("hidden", 0, uses_hidden(lc)), ("attention", 1, lc.attention.weight > 0)):
        if not used:
            continue
        for s, t in getattr(lc, name).layer_map.items():
            if not first <= s <= s_layers:
                raise ConfigError(f"loss.{name}.layer_map: student layer {s} outside the student's {first}..{s_layers}")
            if not first <= t <= t_layers:
                raise ConfigError(f"loss.{name}.layer_map: teacher layer {t} outside the teacher's {first}..{t_layers}")
    seq = cfg.seqkd
    max_len = getattr(teacher_config, "max_position_embeddings", None)
    if seq.enabled and max_len and seq.prompt_tokens + seq.max_new_tokens > max_len:
        raise ConfigError(f"seqkd: prompt_tokens + max_new_tokens = {seq.prompt_tokens + seq.max_new_tokens} exceeds "
                          f"the teacher's max_position_embeddings={max_len}")
    if lc.attention.weight > 0 and lc.attention.heads == "group":
        th, sh = teacher_config.num_attention_heads, student_config.num_attention_heads
        if th % sh:
            raise ConfigError(f"loss.attention.heads: 'group' needs teacher heads ({th}) to be a multiple of "
                              f"student heads ({sh}); use 'mean'")


def check_teacher_info(cfg: DistillConfig, info, student_vocab: int) -> None:
    if info.vocab_size != student_vocab:
        raise ConfigError(f"teacher vocab_size {info.vocab_size} differs from the student's {student_vocab}")
    if cfg.loss.top_k > info.max_top_k:
        raise ConfigError(f"loss.top_k={cfg.loss.top_k} exceeds the teacher's max_top_k={info.max_top_k}")
    if cfg.data.seq_len > info.max_model_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the teacher's max_model_len={info.max_model_len}")
