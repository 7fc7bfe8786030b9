"""Driver side, before any cluster starts: everything about a `raykd distill` config that can be checked.

    prep = prepare(cfg)          # data checked and planned, teacher resolved (the tiny one built), checks run
    data = ingest_data(cfg, prep)  # Ray up: the data read, tokenized and packed by Ray Data (raykd/data/ingest.py)

Order matters for the user: data errors first (the cheapest to fix: the source is streamed once, its
records checked up to `data.validate_mb`, and cut into chunks), then the teacher and student directories,
vocabularies, the chat template, lengths, the method layer maps against the real models, and captured
signals. Each problem is one `ConfigError` line. `check_teacher_info` repeats the teacher checks against
the deployed teacher (`TeacherInfo`), whose limits (vLLM's max_logprobs, max_model_len) only it knows.
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
    chunks: list  # raykd.data.sources.Chunk: the source cut into Ray Data tasks
    chat_template: str | None = None  # data.chat_template's text (None: the tokenizer's, or not chat)
    field: str = "data"
    tokenizer_path: str | None = None  # whose tokenizer the data uses: student.path with loss.cross_tokenizer
    teachers: tuple = ()  # teachers: every app resolved (raykd/train/teachers.py ResolvedTeacher), primary first

    @property
    def data_tokenizer_path(self) -> str:
        return self.tokenizer_path or self.teacher_path


def prepare(cfg: DistillConfig, field: str = "data") -> Prepared:
    """All checks that need no cluster; builds the tiny teacher if none is given (cached)."""
    from raykd.data.sources import plan_chunks
    from raykd.models import check_model_dir, model_fingerprint

    chunks = plan_chunks(cfg.data, field)  # data errors first: they are the cheapest to fix
    if cfg.eval.tasks.enabled:  # the task records too: scored at the end, they must not fail there
        from raykd.eval.tasks import task_items

        task_items(cfg)
    if cfg.teacher.path is not None:
        check_model_dir(cfg.teacher.path, "teacher.path")
        teacher_path = cfg.teacher.path
    else:
        from raykd.teacher.build import ensure_tiny_teacher

        teacher_path = str(ensure_tiny_teacher(cfg.teacher.build))
    if cfg.student.path is not None:
        check_model_dir(cfg.student.path, "student.path")

    from transformers import AutoConfig, AutoTokenizer

    # The data is the student's tokens: the teacher's, or with loss.cross_tokenizer the student's own.
    tokenizer_path = cfg.student.path if cfg.loss.cross_tokenizer is not None else teacher_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    t_config = AutoConfig.from_pretrained(teacher_path)
    if cfg.student.path is not None and cfg.loss.cross_tokenizer is not None:
        from raykd.train.tokenizer_pair import TokenizerPair  # another tokenizer: every token must be alignable

        TokenizerPair.load(teacher_path, cfg.student.path).check("student.path", chat=cfg.data.format != "text")
    elif cfg.student.path is not None:
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
    template = check_data(cfg, tokenizer, tokenizer_path, chunks, field)
    if cfg.eval.tasks.enabled:
        from raykd.eval.tasks import check_task_eval

        check_task_eval(cfg, tokenizer, template, tokenizer_path)
    fingerprint = model_fingerprint(teacher_path)
    if cfg.signals.offline_path:  # captured signals of this teacher (coverage is checked while training)
        from raykd.signals.store import check_offline

        check_offline(cfg.signals.offline_path, fingerprint, cfg.loss.top_k, t_config.vocab_size)
    prep = Prepared(teacher_path, fingerprint, tokenizer, chunks, template, field,
                    tokenizer_path if tokenizer_path != teacher_path else None)
    if cfg.teachers is not None:  # the other teacher apps: resolved, built if tiny, same tokenizer as the primary
        from raykd.train.teachers import prepare_teachers

        prep.teachers = tuple(prepare_teachers(cfg, teacher_path, fingerprint, check_same_vocab))
    return prep


def check_data(cfg: DistillConfig, tokenizer, teacher_path: str, chunks: list, field: str = "data") -> str | None:
    """The chat template (one line naming data.chat_template when there is none), tried on the first record;
    a source of one chunk (at most data.chunk_mb) is packed here whole, so that too little data fails now.
    Returns the template text (None: the tokenizer's own, or not chat)."""
    from raykd.data.blocks import encode_chunk
    from raykd.data.ingest import BlockData, pad_id
    from raykd.data.records import RecordEncoder, example_of, load_chat_template
    from raykd.data.sources import read_chunk

    template = load_chat_template(cfg.data, tokenizer, teacher_path)
    encoder = RecordEncoder(tokenizer, cfg.data, template)
    if len(chunks) == 1:
        packed = encode_chunk(chunks[0], cfg.data, encoder, pad_id(tokenizer))
        BlockData(None, np.array([len(packed.ids)]), cfg.data.seq_len, packed.stats).split(
            cfg.data.val_fraction, cfg.data.max_sequences, field)
    elif cfg.data.format != "text":
        for where, raw in read_chunk(chunks[0], cfg.data):
            encoder.encode(example_of(raw, cfg.data, where))
            break
    return template


def ingest_data(cfg: DistillConfig, prep: Prepared):
    """The training data in the object store (raykd/data/ingest.py BlockData); Ray must be up. Prints a summary."""
    from raykd.console import say
    from raykd.data.ingest import ingest
    from raykd.data.routing import Router

    router = Router.of(cfg)  # teachers.routing: blocks packed per teacher, each block's teacher in data.routes
    data = ingest(cfg.data, prep.data_tokenizer_path, prep.chat_template, prep.chunks, prep.field,
                  routing=router.to_dict() if router else None)
    say(f"data: {data.describe()} ({data.made_by}, {data.seconds:.1f}s)")
    return data


def check_offline_coverage(cfg: DistillConfig, prep: Prepared, data) -> None:
    """signals.offline_path covers every training block (their hashes computed by Ray Data). Ray must be up."""
    from raykd.signals.store import check_offline

    def hashes():
        rows = data.blocks(0, data.n_train).map_batches(_block_hashes, batch_format="numpy")
        for batch in rows.iter_batches(batch_size=4096, batch_format="numpy"):
            yield from (bytes(h) for h in batch["hash"])

    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(prep.teacher_path).vocab_size
    check_offline(cfg.signals.offline_path, prep.fingerprint, cfg.loss.top_k, vocab, hashes())


def _block_hashes(batch: dict) -> dict:
    from raykd.signals.format import sequence_hash

    return {"hash": np.array([sequence_hash(s) for s in batch["ids"]], dtype=object)}


def check_same_vocab(teacher_path: str, other_path: str, field: str) -> None:
    """Teacher signals are token ids: student and teacher must share the tokenizer exactly (unless
    loss.cross_tokenizer is set: raykd/train/tokenizer_pair.py checks that pair instead)."""
    from transformers import AutoConfig, AutoTokenizer

    t_cfg, o_cfg = AutoConfig.from_pretrained(teacher_path), AutoConfig.from_pretrained(other_path)
    if t_cfg.vocab_size != o_cfg.vocab_size:
        raise ConfigError(f"{field}: vocab_size {o_cfg.vocab_size} differs from the teacher's {t_cfg.vocab_size}; "
                          "set loss.cross_tokenizer to distil across tokenizers")
    if AutoTokenizer.from_pretrained(teacher_path).get_vocab() != AutoTokenizer.from_pretrained(other_path).get_vocab():
        raise ConfigError(f"{field}: tokenizer differs from the teacher's (same size, different tokens); set "
                          "loss.cross_tokenizer to distil across tokenizers")


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
    if info.vocab_size != student_vocab and cfg.loss.cross_tokenizer is None:
        raise ConfigError(f"teacher vocab_size {info.vocab_size} differs from the student's {student_vocab}")
    if cfg.loss.top_k > info.max_top_k:
        raise ConfigError(f"loss.top_k={cfg.loss.top_k} exceeds the teacher's max_top_k={info.max_top_k}")
    if cfg.data.seq_len > info.max_model_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the teacher's max_model_len={info.max_model_len}")
