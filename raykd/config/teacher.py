"""The `teacher:` section of every job config: the model, its backend (hf / vLLM), its Serve deployment,
and the tiny offline teacher raykd builds when no model is given (raykd/teacher/build.py).

Pure pydantic, like every module of raykd/config/.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raykd.config.base import StrictModel

# vLLM 0.32's CPU attention (`CPUAttentionBackend.get_supported_head_sizes`): a tiny teacher with another
# head size could not be served by `teacher.backend: vllm` on CPU. The replica re-reads vLLM's own list
# (raykd/teacher/vllm_backend.py) in case a newer vLLM accepts more.
# The offline teacher trains on at most this prefix of raykd/data/corpora/tinyshakespeare.txt; students'
# data (data.source: shakespeare) is what follows it (raykd/data/sources.py), so the two never overlap.
SHAKESPEARE_TEACHER_CHARS = 900_000

CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class TinyMoeConfig(StrictModel):
    """Mixture-of-experts MLPs for the tiny teacher, in the Qwen2-MoE layout: top-k routed experts plus one
    gated shared expert (DeepSeek-MoE's recipe, small). Built by raykd/teacher/tiny_model.py."""

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
    num_kv_heads: int | None = Field(
        None, ge=1, description="Key/value heads (grouped-query attention); null: num_heads (multi-head attention)."
    )
    intermediate_size: int = Field(344, ge=8, description="SwiGLU MLP width.")
    max_position_embeddings: int = Field(512, ge=16, description="Longest sequence the teacher supports.")
    corpus: Literal["builtin", "shakespeare"] = Field(
        "builtin", description="General text: 'builtin' (raykd's generated stories) or 'shakespeare' (the public-domain "
        "text shipped in raykd/data/corpora/; the teacher takes its first part, data.source 'shakespeare' the rest).",
    )
    corpus_chars: int = Field(3_000_000, ge=10_000, description="Characters of general text to train on.")
    task_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of the training text that is task-suite problems (raykd/data/task_suite.py), "
        "so one teacher has a general loss and a task score; > 0 also splits digits into single tokens.",
    )
    seq_len: int = Field(128, ge=8, description="Pre-training block length in tokens.")
    batch_size: int = Field(8, ge=1, description="Pre-training sequences per step (at this scale the number of updates matters most).")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (cosine decay, short warm-up).")
    max_steps: int = Field(2000, ge=1, description="Upper bound on pre-training steps.")
    max_minutes: float = Field(4.0, gt=0, description="Wall-clock budget; training stops at whichever comes first.")
    seed: int = 0
    moe: TinyMoeConfig | None = Field(
        None, description="null: dense Llama MLPs; set: a Qwen2-MoE teacher (routed + shared experts, same attention)."
    )
    chat_template: bool = Field(
        False, description="Give the tokenizer raykd's chat template (plain-text role tags, EOS ends each assistant "
        "turn: raykd/data/chat.py), so data.format: chat works with this teacher.",
    )
    chat_data: str | None = Field(
        None, description="A .jsonl of conversations (a `messages` list, or the fields of chat_fields) rendered with "
        "that template and mixed into the pre-training text, so the teacher knows the format (needs chat_template).",
    )
    chat_fields: dict[str, str] | None = Field(
        None, description="chat_data records as plain fields, role -> field in order (e.g. {user: question, "
        "assistant: answer}); null: a `messages` field.",
    )

    @model_validator(mode="after")
    def _chat(self) -> "TinyTeacherConfig":
        if self.chat_data is not None and not self.chat_template:
            raise ValueError("chat_data needs chat_template: true (the conversations are rendered with it)")
        return self

    @model_validator(mode="after")
    def _head_dim(self) -> "TinyTeacherConfig":
        if self.corpus == "shakespeare" and self.corpus_chars > SHAKESPEARE_TEACHER_CHARS:
            raise ValueError(f"corpus_chars {self.corpus_chars} exceeds the {SHAKESPEARE_TEACHER_CHARS:,} characters of "
                             "the shakespeare text kept for teachers (the rest is the students' data)")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        head_dim = self.hidden_size // self.num_heads
        if head_dim not in CPU_HEAD_SIZES:
            raise ValueError(f"head_dim {head_dim} is not one vLLM's CPU backend supports {CPU_HEAD_SIZES}")
        return self


class VllmConfig(StrictModel):
    """Engine settings for `teacher.backend: vllm` (raykd/teacher/vllm_backend.py)."""

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
    scoring: Literal["auto", "engine-topk", "prompt_logprobs"] = Field(
        "auto", description="How the replica scores: 'engine-topk' computes top-k, tail and target log-probs inside "
        "vLLM's worker and returns arrays (raykd/teacher/vllm_topk.py); 'prompt_logprobs' uses vLLM's per-position "
        "lists (slower); 'auto' takes engine-topk where it can run and logs why not otherwise.",
    )
    cpu_threads_bind: str = Field(
        "auto", description="CPU only (VLLM_CPU_OMP_THREADS_BIND): 'auto' pins the engine to cores of its own and "
        "leaves one to the replica's front end; 'nobind' lets the OS place it (several replicas per node); or '0-3'.",
    )
    busy_wait: bool = Field(
        False, description="CPU only: true keeps vLLM's engine core spinning while its worker computes (vLLM's "
        "default; most of a core); false waits in 1 ms polls (raykd/teacher/vllm_executor.py). GPUs keep vLLM's.",
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

    @property
    def signal_variant(self) -> str:
        """What besides the weights changes the teacher's log-probs: its backend and compute dtype (keys the
        signal cache with the weights' fingerprint, raykd/signals/store.py `cache_directory`)."""
        return f"{self.backend}-{self.vllm.dtype if self.backend == 'vllm' else self.dtype}"

    @model_validator(mode="after")
    def _vllm_gpus(self) -> "TeacherConfig":
        tp = self.vllm.tensor_parallel_size
        if self.backend == "vllm" and self.num_gpus > 0 and self.num_gpus != tp:
            raise ValueError(f"num_gpus={self.num_gpus:g} must equal vllm.tensor_parallel_size={tp}: "
                             "a vLLM replica holds one whole GPU per tensor-parallel rank")
        return self
