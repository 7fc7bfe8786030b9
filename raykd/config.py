"""Typed, strict configuration for every raykd job.

One pydantic model per job (`DistillConfig` for `raykd distill`), built from sub-configs that each
component receives on its own (teacher, student, data, loss, train, eval, mlflow). Unknown keys are
rejected and values are range-checked when the YAML is loaded, before any Ray cluster or model load.

    cfg = load_config(DistillConfig, "jobs/configs/quickstart.yaml", ["loss.alpha=0.7"])

Overrides are `dotted.key=value`; the value is parsed as YAML (`3`, `0.5`, `true`, `[1, 2]`, `null`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

# Re-exported: the base classes live apart so that sub-configs in other modules (raykd/loss_config.py)
# can subclass StrictModel without importing this module.
from raykd.config_base import ConfigError, StrictModel  # noqa: F401


def default_cache_dir() -> Path:
    """Where built teachers, captured signals and other reusable artifacts live (`RAYKD_CACHE`)."""
    return Path(os.environ.get("RAYKD_CACHE", Path.home() / ".cache" / "raykd")).expanduser()


# --------------------------------------------------------------------------------------------- teacher
class TinyMoeConfig(StrictModel):
    """Mixture-of-experts MLPs for the tiny teacher, in the Qwen2-MoE layout: top-k routed experts plus one
    gated shared expert (DeepSeek-MoE's recipe, small). Built by raykd/teacher_build_moe.py."""

    num_experts: int = Field(8, ge=2, le=64, description="Routed experts per layer.")
    num_experts_per_tok: int = Field(2, ge=1, description="Experts each token is routed to (top-k routing).")
    moe_intermediate_size: int = Field(128, ge=8, description="SwiGLU width of each routed expert.")
    shared_expert_intermediate_size: int = Field(256, ge=8, description="SwiGLU width of the always-on shared expert.")

    @model_validator(mode="after")
    def _routing(self) -> "TinyMoeConfig":
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(f"num_experts_per_tok {self.num_experts_per_tok} exceeds num_experts {self.num_experts}")
        return self


class TinyTeacherConfig(StrictModel):
    """The small Llama teacher that raykd builds offline when no real teacher is given."""

    vocab_size: int = Field(4096, ge=260, le=65536, description="Byte-level BPE vocabulary size.")
    hidden_size: int = Field(128, ge=32, description="Model width; num_heads * head_dim.")
    num_layers: int = Field(4, ge=1, le=64, description="Decoder layers.")
    num_heads: int = Field(2, ge=1, description="Attention heads; head_dim = hidden_size / num_heads.")
    intermediate_size: int = Field(344, ge=8, description="SwiGLU MLP width.")
    max_position_embeddings: int = Field(512, ge=16, description="Longest sequence the teacher supports.")
    corpus_chars: int = Field(3_000_000, ge=10_000, description="Characters of generated text to train on.")
    seq_len: int = Field(128, ge=8, description="Pre-training block length in tokens.")
    batch_size: int = Field(8, ge=1, description="Pre-training sequences per step (at this scale the number of updates matters most).")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (cosine decay, short warm-up).")
    max_steps: int = Field(2000, ge=1, description="Upper bound on pre-training steps.")
    max_minutes: float = Field(4.0, gt=0, description="Wall-clock budget; training stops at whichever comes first.")
    seed: int = 0
    moe: TinyMoeConfig | None = Field(
        None, description="null: dense Llama MLPs; set: a Qwen2-MoE teacher (routed + shared experts, same attention)."
    )

    @model_validator(mode="after")
    def _head_dim(self) -> "TinyTeacherConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        # vLLM's CPU attention backend supports only these head sizes.
        if head_dim not in (32, 64, 80, 96, 112, 128, 256):
            raise ValueError(f"head_dim {head_dim} is not one vLLM's CPU backend supports (32, 64, 80, 96, 112, 128, 256)")
        return self


class VllmConfig(StrictModel):
    """Engine settings for `teacher.backend: vllm` (see raykd/teacher/vllm_backend.py)."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("bfloat16", description="Engine dtype.")
    max_model_len: int | None = Field(None, ge=16, description="Longest sequence; default: the model's.")
    gpu_memory_utilization: float | None = Field(
        0.15, gt=0, le=1, description="Fraction of GPU memory (on CPU: of RAM) for weights + KV cache."
    )
    kv_cache_memory_bytes: int | None = Field(None, ge=1, description="KV cache size; overrides the fraction.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica for tensor parallelism.")
    enforce_eager: bool = Field(True, description="Skip CUDA-graph capture (required on CPU).")
    max_logprobs: int = Field(64, ge=1, description="Largest top-k the engine will return.")
    max_num_batched_tokens: int | None = Field(None, ge=16, description="Scheduler token budget per step.")
    cpu_threads_bind: str = Field(
        "auto", description="CPU only (VLLM_CPU_OMP_THREADS_BIND): 'auto' pins the engine to cores of its own and "
        "leaves one to the replica's front end; 'nobind' lets the OS place it (several replicas per node); or '0-3'.",
    )


class TeacherAutoscalingConfig(StrictModel):
    """Serve autoscaling of the teacher replicas; when set it replaces `teacher.num_replicas`."""

    min_replicas: int = Field(1, ge=1, description="Replicas kept warm (a vLLM replica takes ~30 s to start).")
    max_replicas: int = Field(2, ge=1, description="Upper bound; each takes num_cpus / num_gpus of the cluster.")
    target_ongoing_requests: float = Field(
        4.0, gt=0, description="Requests in flight per replica that Serve aims for: lower scales out sooner."
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="Load must stay high this long before a scale-up.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Load must stay low this long before a scale-down.")

    @model_validator(mode="after")
    def _bounds(self) -> "TeacherAutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self


class TeacherConfig(StrictModel):
    """The teacher model and the Ray Serve deployment that hosts it."""

    path: str | None = Field(
        None, description="HF model directory or hub id. null: build (once, cached) the tiny offline teacher."
    )
    build: TinyTeacherConfig = Field(default_factory=TinyTeacherConfig, description="Used when path is null.")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers in the replica; vllm: AsyncLLM.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="hf backend dtype.")
    num_replicas: int = Field(1, ge=1, description="Serve replicas of the teacher.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica (tensor_parallel_size for vLLM).")
    max_ongoing_requests: int = Field(8, ge=1, description="Requests a replica accepts at once.")
    app_name: str = Field("raykd-teacher", description="Serve application name; an existing one is reused.")
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    autoscaling: TeacherAutoscalingConfig | None = Field(
        None, description="null: a fixed num_replicas; set: Serve scales replicas with the request load."
    )

    @model_validator(mode="after")
    def _vllm_gpus(self) -> "TeacherConfig":
        tp = self.vllm.tensor_parallel_size
        if self.backend == "vllm" and self.num_gpus > 0 and self.num_gpus != tp:
            raise ValueError(f"num_gpus={self.num_gpus:g} must equal vllm.tensor_parallel_size={tp}: "
                             "a vLLM replica holds one whole GPU per tensor-parallel rank")
        return self


# --------------------------------------------------------------------------------------------- student
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


# --------------------------------------------------------------------------------------------- data
class DataConfig(StrictModel):
    """Text to distil on. `builtin` is generated in-process (no files needed)."""

    source: str = Field("builtin", description="'builtin', a .txt file, or a .jsonl file.")
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"], description="jsonl fields joined (blank line) into one document."
    )
    builtin_chars: int = Field(400_000, ge=1000, description="Characters of builtin text to generate.")
    builtin_seed: int = Field(1, description="Seed of the builtin text (the teacher is built on seed 0).")
    seq_len: int = Field(128, ge=8, description="Tokens per training sequence.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out fraction (the tail of the token stream).")
    max_sequences: int | None = Field(None, ge=1, description="Cap on training sequences.")
    weight_field: str | None = Field(
        None, description="jsonl field with a per-sample loss weight (e.g. a feedback score, finite and >= 0): "
        "every token of the record carries it and its loss terms are multiplied by it; null: all 1.",
    )

    @model_validator(mode="after")
    def _weights_need_jsonl(self) -> "DataConfig":
        if self.weight_field is not None and not self.source.endswith(".jsonl"):
            raise ValueError(f"weight_field needs a .jsonl source (records with a '{self.weight_field}' field)")
        return self


# --------------------------------------------------------------------------------------------- loss
from raykd.loss_config import (  # noqa: E402,F401 (re-exported; sub-configs of the distillation methods)
    AdversarialConfig,
    AttentionMatchConfig,
    DynamicTemperatureConfig,
    HiddenMatchConfig,
    LossConfig,
    ScheduleConfig,
    SeqKDConfig,
)


# --------------------------------------------------------------------------------------------- train
class TrainConfig(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP).")
    use_gpu: bool = Field(False, description="One GPU per worker and NCCL; else gloo on CPU.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    batch_size: int = Field(16, ge=1, description="Sequences per worker per step.")
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


class EvalConfig(StrictModel):
    baseline: bool = Field(True, description="Also train a hard-label-only student with the same budget and seed.")
    max_sequences: int = Field(64, ge=1, description="Held-out sequences to score.")
    gen_tokens: int = Field(64, ge=1, description="New tokens per prompt for the generation-speed measure.")
    gen_prompts: int = Field(4, ge=1)


class MlflowConfig(StrictModel):
    experiment: str = Field("raykd", description="MLflow experiment name.")
    tracking_uri: str | None = Field(None, description="Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.")


class SignalsConfig(StrictModel):
    """Where teacher signals come from (cache → offline shards → live teacher) and how the loss uses them.

    See raykd/signal_format.py (the packed format), raykd/signal_cache.py (cache and offline stores).
    """

    cache: bool = Field(
        True, description="Reuse signals of sequences scored before (key: teacher fingerprint, top_k, token hash) "
        "and store new ones; a second epoch, a resumed run or another trial then skips the teacher."
    )
    cache_dir: str | None = Field(
        None, description="Cache root; default <RAYKD_CACHE>/signals. Shards go to <root>/<fingerprint>/k<top_k>/."
    )
    offline_path: str | None = Field(
        None, description="Directory of Parquet shards from `raykd capture`: training reads them and never "
        "queries the teacher (a sequence they lack is an error)."
    )
    loss_chunk_size: int | None = Field(
        None, ge=1, description="Rows per chunk of the memory-lean loss (student hidden states × lm_head per "
        "chunk, so no (tokens × vocab) logits exist for the batch); null: full logits. Smaller: less memory."
    )


class DistillConfig(StrictModel):
    """`raykd distill`: one teacher → one student, tracked in one MLflow run."""

    run_name: str = Field("distill", pattern=r"^[A-Za-z0-9_.-]+$", description="Names the MLflow run and checkpoints.")
    seed: int = 0
    output_dir: str = Field("outputs", description="Where the final student directory is written.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
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
        """Cross-section checks of the distillation methods (raykd/objective.py checks what needs the models)."""
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
        if self.signals.loss_chunk_size and feature_terms:
            raise ValueError("signals.loss_chunk_size chunks the row-wise terms only; set it to null with "
                             "loss.hidden / loss.attention / loss.adversarial terms")
        return self


class CaptureConfig(StrictModel):
    """`raykd capture`: score a dataset once with the teacher deployment (Ray Data), write Parquet shards.

    Uses the same `teacher` and `data` sections as `raykd distill`, so the same YAML values yield the same
    token blocks and the shards are found by training (as cache hits, or via `signals.offline_path`).
    """

    run_name: str = Field("capture", pattern=r"^[A-Za-z0-9_.-]+$", description="Names the log lines.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    top_k: int = Field(20, ge=1, description="Teacher log-probs kept per position (loss.top_k of the training).")
    split: Literal["train", "val", "all"] = Field("train", description="Which blocks to score (the distill split).")
    output_dir: str | None = Field(
        None, description="Where shards go; default: the signal cache of this teacher and top_k (pre-warms it)."
    )
    cache_dir: str | None = Field(None, description="Cache root when output_dir is null (as signals.cache_dir).")
    sequences_per_shard: int = Field(256, ge=1, description="Sequences per Parquet shard (one Ray Data batch).")
    request_sequences: int = Field(32, ge=1, description="Sequences per teacher request within a shard.")
    concurrency: int = Field(2, ge=1, description="Ray Data actors calling the teacher at once: more keeps "
                             "more replicas busy, costs memory per in-flight shard.")
    num_cpus_per_actor: float = Field(0.25, gt=0, description="CPUs reserved per capture actor (it mostly waits).")
    overwrite: bool = Field(False, description="Re-score sequences already in output_dir (default: skip them).")


# --------------------------------------------------------------------------------------------- loading
M = TypeVar("M", bound=BaseModel)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def _first_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "<root>"
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{loc}'"
    msg = e["msg"].removeprefix("Value error, ")
    if loc == "<root>":  # whole-config checks name their fields in the message
        return f"{source}: {msg}"
    return f"{source}: {loc}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e.get("input"), dict) else "")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_tree(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The mapping in the YAML file at `path` ({} for None) and the source name errors should cite."""
    if path is None:
        return {}, "config"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return loaded or {}, str(p)


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read YAML at `path` (or start from defaults), apply `key=value` overrides, validate strictly."""
    tree, source = read_yaml_tree(path)
    tree = deep_merge(tree, parse_overrides(overrides or []))
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_first_error(e, source)) from None


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, str]:
    """Resolved config as flat `a.b.c -> str` pairs (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in cfg.model_dump().items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict[str, str], key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = str(value)
