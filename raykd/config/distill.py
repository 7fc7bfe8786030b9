"""`raykd distill`'s config: `DistillConfig` and the sections each component receives on its own.

    cfg = load_config(DistillConfig, "jobs/configs/quickstart.yaml", ["loss.alpha=0.7"])

One strict pydantic model per job, built from sub-configs (teacher, student, data, loss, train, eval, mlflow,
signals, seqkd). Unknown keys are rejected and values are range-checked when the YAML is loaded, before any
Ray cluster or model load; what needs the model configs is checked by raykd/train/prepare.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from raykd.config.base import StrictModel
from raykd.config.loss import LossConfig, SeqKDConfig
from raykd.config.on_policy import check_on_policy
from raykd.config.teacher import TeacherConfig
from raykd.config.teachers import TeachersConfig, check_teachers

# Rows per loss chunk when signals.loss_chunk_size is auto. Measured (benchmarks/results/loss_chunk.md): on
# this CPU a (512, 4096) chunk's float32 work stays in cache, and a step of the peer_trl shape ran 1.5x faster
# than with the batch's whole (4096, 4096) logits; on a GPU it is the memory-lean path at any vocabulary.
AUTO_LOSS_CHUNK = 512


class StudentConfig(StrictModel):
    """How the student is derived from the teacher (fewer layers and/or narrower width)."""

    num_layers: int | None = Field(2, ge=1, description="Decoder layers; null: same as the teacher.")
    hidden_size: int | None = Field(None, ge=8, description="Width; null: same as the teacher.")
    num_heads: int | None = Field(None, ge=1, description="Heads; null: keep the teacher's head_dim.")
    intermediate_size: int | None = Field(None, ge=8, description="MLP width; null: scaled with hidden_size.")
    layer_selection: Literal["uniform", "first", "last"] | list[int] = Field(
        "uniform", description="Which teacher layers initialise the student's: 'uniform' (spread, first and last "
        "included), 'first' / 'last' (the first / last num_layers), or an explicit list of 0-based teacher layers.",
    )
    init_from_teacher: bool = Field(True, description="Copy (and slice) teacher weights where shapes allow.")
    path: str | None = Field(
        None, description="Start from this existing student model directory instead of deriving one."
    )

    @model_validator(mode="after")
    def _explicit_layers(self) -> "StudentConfig":
        if isinstance(self.layer_selection, list):
            if not self.layer_selection or min(self.layer_selection) < 0:
                raise ValueError(f"layer_selection must list 0-based teacher layers, got {self.layer_selection}")
            if self.num_layers is not None and len(self.layer_selection) != self.num_layers:
                raise ValueError(
                    f"layer_selection lists {len(self.layer_selection)} layers but num_layers is {self.num_layers}"
                )
        return self


class DataConfig(StrictModel):
    """Data to distil on, read, tokenized and packed by Ray Data (raykd/data/ingest.py; docs/data.md)."""

    source: str = Field(
        "builtin", description="'builtin' (generated text, no files), 'shakespeare' (the packaged public-domain text "
        "after the offline teacher's part), a .txt, .jsonl or .parquet file, a directory or glob of such files, or "
        "a directory written by `datasets` save_to_disk.",
    )
    format: Literal["text", "chat", "prompt_completion"] = Field(
        "text", description="text: documents, every token trained; chat: conversations rendered with the chat "
        "template, loss on assistant tokens only; prompt_completion: prompt + completion, loss on the completion.",
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"], description="format text: record fields joined (blank line) into one document."
    )
    messages_field: str = Field("messages", description="format chat: the field holding [{role, content}, ...].")
    chat_fields: dict[str, str] | None = Field(
        None, description="format chat: build each conversation from plain fields instead, in this order, "
        "role -> field (e.g. {user: question, assistant: answer} for GSM8K).",
    )
    prompt_field: str = Field("prompt", description="format prompt_completion: the prompt field (no loss).")
    completion_field: str = Field("completion", description="format prompt_completion: the completion field (trained).")
    chat_template: str | None = Field(
        None, description="format chat: a Jinja chat template (or the path of a .jinja file) used instead of the "
        "tokenizer's; needed when the tokenizer has none.",
    )
    split: str = Field("train", description="Split to read when source is a save_to_disk DatasetDict directory.")
    builtin_chars: int = Field(400_000, ge=1000, description="Characters of builtin text to generate.")
    builtin_seed: int = Field(1, description="Seed of the builtin text (the teacher is built on seed 0).")
    seq_len: int = Field(128, ge=8, description="Tokens per packed training block.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out fraction (the last blocks of the packed stream).")
    max_sequences: int | None = Field(None, ge=1, description="Cap on training blocks.")
    weight_field: str | None = Field(
        None, description="Record field with a per-sample loss weight (e.g. a feedback score, finite and >= 0): "
        "every token of the record carries it and its loss terms are multiplied by it; null: all 1.",
    )
    chunk_mb: float = Field(
        4.0, gt=0, description="Source megabytes per Ray Data task (read + tokenize + pack); blocks never span "
        "two chunks, so changing it changes the blocks (and their order).",
    )
    validate_mb: float = Field(
        1024.0, ge=0, description="Source megabytes checked record by record in the driver before the cluster "
        "starts; records past it are checked by the Ray Data tasks, with the same one-line error.",
    )
    driver_ingest_mb: float = Field(
        8.0, ge=0, description="Sources up to this many megabytes are read, tokenized and packed in the driver "
        "(no Ray Data actor pool to start: ~10 s saved on a small run); larger ones by Ray Data tasks. The "
        "blocks, their order and the counts are the same either way; 0: always Ray Data.",
    )

    task_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of the text that is task-suite problems (train split, seeded by "
        "builtin_seed) mixed into a builtin or shakespeare source; 0: none.",
    )

    @model_validator(mode="after")
    def _format_needs_records(self) -> "DataConfig":
        plain = self.source in ("builtin", "shakespeare") or self.source.endswith(".txt")
        if self.weight_field is not None and plain:
            raise ValueError(f"weight_field needs a source of records (.jsonl, .parquet, save_to_disk), not "
                             f"{self.source!r}")
        if self.format != "text" and plain:
            raise ValueError(f"format {self.format} needs a source of records (.jsonl, .parquet, save_to_disk), "
                             f"not {self.source!r}")
        if self.chat_fields is not None and not self.chat_fields:
            raise ValueError("chat_fields must map at least one role to a field")
        if self.task_fraction > 0 and self.source not in ("builtin", "shakespeare"):
            raise ValueError(f"task_fraction mixes task problems into the builtin or shakespeare text only; set "
                             f"data.task_fraction=0 for source {self.source!r}")
        return self


class TrainConfig(StrictModel):
    """The student side: Ray Train workers, how the student is spread over them, and the optimizer.

    Global batch = batch_size (micro-batch) x grad_accum_steps x num_workers sequences per optimizer step
    (raykd/train/student.py); docs/training_at_scale.md explains strategy, precision and the memory model.
    """

    num_workers: int = Field(2, ge=1, description="Ray Train workers (one GPU each with use_gpu).")
    use_gpu: bool = Field(False, description="One GPU per worker and NCCL; else gloo on CPU.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    batch_size: int = Field(16, ge=1, description="Sequences per worker per micro-batch (one forward/backward).")
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step on each worker: more spends less memory per step for "
        "the same global batch (the loss is normalised by the global batch's tokens, so results do not change).",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every worker holds the whole student (PyTorch DDP); fsdp: parameters, gradients and "
        "optimizer state sharded over the workers (PyTorch FSDP2, fully_shard per decoder layer and the root).",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: bfloat16 compute with float32 gradient reduction and optimizer state (FSDP "
        "MixedPrecisionPolicy; autocast under DDP); losses are always computed in float32.",
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in backward instead of keeping them: less "
        "memory, about a third more compute.",
    )
    gpu_memory_gib: float = Field(
        80.0, gt=0, description="Memory of one GPU; `raykd distill --dry-run` refuses a plan whose per-worker estimate "
        "(or the teacher's weights per GPU) does not fit it (with use_gpu; on CPU the estimate is only printed).",
    )
    export_shard_size: str = Field(
        "5GB", pattern=r"^[0-9]+(\.[0-9]+)?\s*[KMG]i?B$",
        description="Largest safetensors file of checkpoints and the exported student; bigger models are split "
        "into shards with a model.safetensors.index.json (Hugging Face layout).",
    )
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps, then cosine decay.")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    max_inflight: int = Field(4, ge=1, description="Teacher requests in flight per worker (prefetch window).")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints.")
    log_every: int = Field(10, ge=1, description="Steps between MLflow metric logs.")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per worker; default cpus_per_worker.")
    storage_path: str | None = Field(None, description="Checkpoints root; default <cache>/runs.")
    max_failures: int = Field(
        3, ge=-1, description="Times Ray Train restarts the workers from the last checkpoint after a failure (a "
        "killed worker, a lost node; also an error in the training code, which then fails again), with the same "
        "data order; -1: without limit, 0: fail at once.",
    )


class TaskEvalConfig(StrictModel):
    """Exact match on the task suite (raykd/data/task_suite.py) in the evaluation table."""

    enabled: bool = Field(False, description="Score teacher and students by greedy exact match per level; useful "
                          "when the teacher learnt the tasks (teacher.build.task_fraction > 0).")
    levels: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1,
                              description="Difficulty levels (1..4: digits that must all be right = 2 x level).")
    per_level: int = Field(200, ge=1, description="Test prompts per level (level 1 has only 34).")
    format: Literal["auto", "text", "chat"] = Field(
        "auto", description="How problems are asked: text (the prompt line, stop at the line break) or chat (a user "
        "turn through the chat template, stop at EOS); auto: chat when data.format is chat or records are given.")
    records: str | None = Field(
        None, description="A .jsonl of chat records to score instead of the generated suite: `messages` ending with "
        "the assistant's answer, an optional `level` (python -m raykd.data.task_chat writes the suite this way).")

    @model_validator(mode="after")
    def _levels(self) -> "TaskEvalConfig":
        bad = [lv for lv in self.levels if lv not in (1, 2, 3, 4)]
        if bad:
            raise ValueError(f"levels must be among 1..4, got {bad}")
        if self.records is not None and self.format == "text":
            raise ValueError("records are chat records: they are asked in chat form (format auto or chat)")
        return self


class EvalConfig(StrictModel):
    baseline: bool = Field(True, description="Also train a hard-label-only student with the same budget and seed.")
    max_sequences: int = Field(64, ge=1, description="Held-out sequences to score.")
    gen_tokens: int = Field(64, ge=1, description="New tokens per prompt for the generation-speed measure.")
    gen_prompts: int = Field(4, ge=1)
    tasks: TaskEvalConfig = Field(default_factory=TaskEvalConfig, description="Task-suite exact match columns.")


class MlflowConfig(StrictModel):
    experiment: str = Field("raykd", description="MLflow experiment name.")
    tracking_uri: str | None = Field(None, description="Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.")


class SignalsConfig(StrictModel):
    """Where teacher signals come from (cache → offline shards → live teacher) and how the loss uses them.

    See raykd/signals/format.py (the packed format), raykd/signals/store.py (cache and offline stores).
    """

    cache: bool = Field(
        True, description="Reuse signals of sequences scored before (key: teacher fingerprint, top_k, token hash) "
        "and store new ones; a second epoch, a resumed run or another trial then skips the teacher."
    )
    cache_dir: str | None = Field(
        None, description="Cache root; default <RAYKD_CACHE>/signals. Shards go to <root>/<fingerprint>/<backend>-<dtype>/k<top_k>/."
    )
    offline_path: str | None = Field(
        None, description="Directory of Parquet shards from `raykd capture`: training reads them and never "
        "queries the teacher (a sequence they lack is an error)."
    )
    loss_chunk_size: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="Rows per chunk of the memory-lean loss (student hidden states × lm_head per chunk, so "
        "no (tokens × vocab) logits exist for the batch; whole sequences per chunk); null: full logits. auto: "
        f"{AUTO_LOSS_CHUNK} where the loss is row-wise (no hidden / attention / adversarial term, no on-policy, no "
        "cross-tokenizer), else full logits. Smaller: less memory.",
    )


def loss_chunk(cfg: "DistillConfig") -> int | None:
    """The rows per loss chunk a run uses: `signals.loss_chunk_size`, with auto resolved (field doc)."""
    chunk = cfg.signals.loss_chunk_size
    if chunk != "auto":
        return chunk
    loss = cfg.loss
    row_wise = not (loss.hidden.weight > 0 or loss.attention.weight > 0 or loss.adversarial.weight > 0
                    or loss.on_policy.enabled or loss.cross_tokenizer is not None)
    return AUTO_LOSS_CHUNK if row_wise else None


class DistillConfig(StrictModel):
    """`raykd distill`: one teacher → one student, tracked in one MLflow run."""

    run_name: str = Field("distill", pattern=r"^[A-Za-z0-9_.-]+$", description="Names the MLflow run and checkpoints.")
    seed: int = 0
    output_dir: str = Field("outputs", description="Where the final student directory is written.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    teachers: TeachersConfig | None = Field(
        None, description="Several teacher apps, routed per record or ensembled (docs/multi_teacher.md); the first "
        "is `teacher`. null: the one `teacher`.",
    )
    student: StudentConfig = Field(default_factory=StudentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    seqkd: SeqKDConfig = Field(default_factory=SeqKDConfig)

    @model_validator(mode="after")
    def _methods(self) -> "DistillConfig":
        """Cross-section checks of the distillation methods (raykd/train/prepare.py checks what needs the models)."""
        check_teachers(self)  # with `teachers`, `teacher` becomes their primary app
        loss = self.loss
        if self.teacher.backend == "vllm":
            if loss.attention.weight > 0:
                raise ValueError("loss.attention needs teacher.backend: hf (the vllm backend returns log-probs only, "
                                 "no attention maps)")
            if loss.hidden.weight > 0 or (loss.adversarial.weight > 0 and loss.adversarial.input == "hidden"):
                raise ValueError("loss.hidden needs teacher.backend: hf (the vllm backend returns log-probs only, "
                                 "no hidden states)")
        depth = self.student.num_layers if self.student.path is None else None
        if depth is not None:
            for name, first in (("hidden", 0), ("attention", 1)):
                bad = [k for k in getattr(loss, name).layer_map if not first <= k <= depth]
                if bad:
                    raise ValueError(f"loss.{name}.layer_map: student layer(s) {bad} outside the student's "
                                     f"{first}..{depth} (student.num_layers={depth})")
        if self.seqkd.enabled and self.seqkd.prompt_tokens >= self.data.seq_len:
            raise ValueError(f"seqkd.prompt_tokens={self.seqkd.prompt_tokens} must be < data.seq_len={self.data.seq_len}")
        feature_terms = loss.hidden.weight > 0 or loss.attention.weight > 0 or loss.adversarial.weight > 0
        if isinstance(self.signals.loss_chunk_size, int) and feature_terms:
            raise ValueError("signals.loss_chunk_size chunks the row-wise terms only; set it to null with "
                             "loss.hidden / loss.attention / loss.adversarial terms")
        if loss.cross_tokenizer is not None:
            if self.student.path is None:
                raise ValueError("loss.cross_tokenizer: needs student.path (a student derived from the teacher has "
                                 "the teacher's tokenizer)")
            other = {"signals.offline_path": self.signals.offline_path, "signals.loss_chunk_size":
                     isinstance(self.signals.loss_chunk_size, int), "seqkd": self.seqkd.enabled,
                     "teachers (several teachers share the student's tokenizer)": self.teachers is not None}
            bad = [name for name, on in other.items() if on]
            if bad:
                raise ValueError(f"loss.cross_tokenizer: cannot be combined with {', '.join(bad)}")
        check_on_policy(self)
        return self
