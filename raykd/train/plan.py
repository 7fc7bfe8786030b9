"""`raykd distill --dry-run`: the resource plan and a per-worker memory estimate, before a GPU is rented.

    plan = resource_plan(cfg, teacher_config, student_config)     # HF configs only: no weights are loaded
    print(plan.render())
    plan.check()           # ConfigError (one line) when a student worker or a teacher GPU cannot fit

The estimate (bytes per student worker; docs/training_at_scale.md derives it and compares it with
measurements, benchmarks/student_scale.py). P: the student's parameters (counted on the meta device),
P_root of them outside the decoder layers (embeddings, lm_head, final norm), P_layer one layer's; W workers;
c = 2 bytes per compute element with bf16, 4 with fp32; T = batch_size x seq_len tokens per micro-batch.

  parameters   ddp: 4P (+ 2P bf16 copies autocast keeps during the forward)
               fsdp: 4P/W (fp32 shards) + c (P_root + 2 P_layer) (the root and two layers all-gathered)
  gradients    ddp: 4P (DDP buckets are the gradients: gradient_as_bucket_view)
               fsdp: 4P/W + (c + 4)(P_root + P_layer) (unsharded, before the fp32 reduce-scatter)
  optimizer    AdamW: 8P, or 8P/W under fsdp
  activations  per layer and token A = (8h + 2h_kv + 4i) x c (saved for backward: norms, q/k/v, attention
               output, the SwiGLU's four intermediates; SDPA keeps no L x L map, eager attention adds
               heads x L x 4 bytes); without checkpointing n_layers x T x A; with it n_layers x T x h x c
               (the layer inputs) + T x A (one layer recomputed)
  logits/loss  T x V x (c + 20): the logits and about five float32 (T, V) tensors of the loss and its
               gradient; with signals.loss_chunk_size C: min(C, T) x V x 24 + T x h x 8
  runtime      GPU: 1.5 GiB (CUDA context, NCCL buffers, allocator slack); CPU: 0 (the process's own
               libraries are not counted)

A plan is refused when a worker's estimate exceeds train.gpu_memory_gib (with use_gpu), or when a teacher
replica's weights per GPU exceed its share of GPU memory (vLLM: gpu_memory_utilization x gpu_memory_gib,
the rest being its KV cache).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from raykd.config import ConfigError, DistillConfig
from raykd.config.distill import loss_chunk

GIB = 1024**3
GPU_RUNTIME_BYTES = 1.5 * GIB
LOSS_FP32_TENSORS = 5  # float32 (T, V) tensors alive at the loss's peak (upcast, log-softmaxes, gradient)


def human(n: float) -> str:
    """12.3K / 4.56M / 8.03B parameters."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def count_params(config: Any) -> tuple[int, int, int]:
    """(total, outside the decoder layers, one decoder layer) parameters of an HF causal-LM config, from a
    model built on the meta device (exact, no memory; a 70B config takes about a second, so it is cached)."""
    return _count_params(config.to_json_string())


@functools.lru_cache(maxsize=16)
def _count_params(config_json: str) -> tuple[int, int, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from raykd.train.parallel import decoder_layers

    data = json.loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    layers = decoder_layers(model)
    in_layers = sum(p.numel() for layer in layers for p in layer.parameters())
    return total, total - in_layers, in_layers // max(1, len(layers))


@dataclass
class MemoryEstimate:
    parameters: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    runtime: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.logits + self.runtime

    def parts(self) -> dict[str, float]:
        return {"parameters": self.parameters, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "logits/loss": self.logits, "runtime": self.runtime}


def student_memory(cfg: DistillConfig, config: Any, counts: tuple[int, int, int] | None = None) -> MemoryEstimate:
    """Bytes per student worker at cfg.train's strategy, precision, checkpointing and micro-batch (module doc)."""
    tc = cfg.train
    p, p_root, p_layer = counts or count_params(config)
    w = tc.num_workers if tc.strategy == "fsdp" else 1
    c = 2 if tc.precision == "bf16" else 4
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h, i, n_layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    heads = text.num_attention_heads
    h_kv = (getattr(text, "num_key_value_heads", None) or heads) * (getattr(text, "head_dim", None) or h // heads)
    tokens = tc.batch_size * cfg.data.seq_len
    if tc.strategy == "fsdp":
        params = 4 * p / w + c * (p_root + 2 * p_layer)
        grads = 4 * p / w + (c + 4) * (p_root + p_layer)
    else:
        params = 4 * p + (2 * p if c == 2 else 0)
        grads = 4 * p
    per_token_layer = (8 * h + 2 * h_kv + 4 * i) * c
    if cfg.loss.attention.weight > 0:  # eager attention keeps the (heads, L, L) maps
        per_token_layer += heads * cfg.data.seq_len * 4
    if tc.activation_checkpointing:
        acts = n_layers * tokens * h * c + tokens * per_token_layer
    else:
        acts = n_layers * tokens * per_token_layer
    vocab = text.vocab_size
    chunk = loss_chunk(cfg)
    if chunk:
        logits = min(chunk, tokens) * vocab * (4 * (LOSS_FP32_TENSORS + 1)) + tokens * h * 8
    else:
        logits = tokens * vocab * (c + 4 * LOSS_FP32_TENSORS)
    runtime = GPU_RUNTIME_BYTES if tc.use_gpu else 0.0
    return MemoryEstimate(params, grads, 8 * p / w, acts, logits, runtime)


@dataclass
class TeacherPlan:
    replicas: str  # "2" or "1-4" (autoscaling)
    gpus_per_replica: float
    max_replicas: int
    params: int
    weight_bytes_per_gpu: float
    budget_per_gpu: float | None  # what the weights may use of one GPU (None: CPU replicas)


@dataclass
class Plan:
    cfg: DistillConfig
    student_params: int
    memory: MemoryEstimate
    teacher: TeacherPlan
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        cfg, tc, t = self.cfg, self.cfg.train, self.teacher
        gpu_t = t.max_replicas * t.gpus_per_replica
        gpu_s = tc.num_workers if tc.use_gpu else 0
        cpus = t.max_replicas * cfg.teacher.num_cpus + tc.num_workers * tc.cpus_per_worker
        kind = f"{cfg.teacher.backend}" + (f", tensor_parallel_size {cfg.teacher.vllm.tensor_parallel_size}"
                                            if cfg.teacher.backend == "vllm" else "")
        how = f"{tc.strategy}, {tc.precision}" + (", activation checkpointing" if tc.activation_checkpointing else "")
        seqs = tc.batch_size * tc.grad_accum_steps * tc.num_workers
        lines = [
            "resource plan",
            f"  teacher  {t.replicas} replica(s) x {t.gpus_per_replica:g} GPU(s) ({kind}; {human(t.params)} params)"
            f"  = {gpu_t:g} GPU(s)",
            f"  student  {tc.num_workers} worker(s) x {1 if tc.use_gpu else 0} GPU ({how}; "
            f"{human(self.student_params)} params)  = {gpu_s} GPU(s)",
            f"  total    {gpu_t + gpu_s:g} GPU(s), {cpus:g} CPU(s)",
            f"  global batch {seqs} sequences = {tc.batch_size} per micro-batch x {tc.grad_accum_steps} accumulation "
            f"x {tc.num_workers} worker(s); {seqs * cfg.data.seq_len:,} tokens per step",
            f"memory per student worker (estimate, GiB; micro-batch {tc.batch_size} x {cfg.data.seq_len} tokens)",
        ]
        for name, value in self.memory.parts().items():
            lines.append(f"  {name:<12} {value / GIB:8.3f}")
        limit = f" of {tc.gpu_memory_gib:g} GiB per GPU" if tc.use_gpu else " (CPU workers: not checked)"
        lines.append(f"  {'total':<12} {self.memory.total / GIB:8.3f}{limit}")
        if t.budget_per_gpu is not None:
            lines.append(f"teacher weights per GPU {t.weight_bytes_per_gpu / GIB:.2f} GiB of {t.budget_per_gpu / GIB:.2f} "
                         "GiB the replica may use (the rest of that share is its KV cache)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def check(self) -> None:
        """ConfigError when the plan cannot fit the configured GPU memory (one line, naming the fields)."""
        tc, t = self.cfg.train, self.teacher
        if tc.use_gpu and self.memory.total > tc.gpu_memory_gib * GIB:
            biggest = max(self.memory.parts().items(), key=lambda kv: kv[1])[0]
            hint = {"optimizer": "train.strategy=fsdp", "parameters": "train.strategy=fsdp",
                    "gradients": "train.strategy=fsdp", "activations": "train.activation_checkpointing=true or a "
                    "smaller train.batch_size (with grad_accum_steps)", "logits/loss": "signals.loss_chunk_size",
                    "runtime": "a GPU with more memory"}[biggest]
            raise ConfigError(f"train: the student needs about {self.memory.total / GIB:.1f} GiB per worker "
                              f"(most for {biggest}), more than train.gpu_memory_gib={tc.gpu_memory_gib:g}; try {hint}")
        if t.budget_per_gpu is not None and t.weight_bytes_per_gpu > t.budget_per_gpu:
            raise ConfigError(f"teacher: {t.weight_bytes_per_gpu / GIB:.1f} GiB of weights per GPU exceed the "
                              f"{t.budget_per_gpu / GIB:.1f} GiB a replica may use of train.gpu_memory_gib="
                              f"{tc.gpu_memory_gib:g}; raise teacher.vllm.tensor_parallel_size (and teacher.num_gpus)")


def teacher_plan(cfg: DistillConfig, teacher_config: Any) -> TeacherPlan:
    t = cfg.teacher
    params = count_params(teacher_config)[0]
    if t.autoscaling is not None:
        replicas, top = f"{t.autoscaling.min_replicas}-{t.autoscaling.max_replicas}", t.autoscaling.max_replicas
    else:
        replicas, top = str(t.num_replicas), t.num_replicas
    if t.backend == "vllm":
        dtype_bytes = 4 if t.vllm.dtype == "float32" else 2
        per_gpu = params * dtype_bytes / t.vllm.tensor_parallel_size
        share = t.vllm.gpu_memory_utilization or 0.9
    else:
        per_gpu = params * (4 if t.dtype == "float32" else 2) / max(1.0, t.num_gpus)
        share = 1.0
    budget = share * cfg.train.gpu_memory_gib * GIB if t.num_gpus > 0 else None
    return TeacherPlan(replicas, t.num_gpus, top, params, per_gpu, budget)


def resource_plan(cfg: DistillConfig, teacher_config: Any, student_config: Any) -> Plan:
    counts = count_params(student_config)
    plan = Plan(cfg, counts[0], student_memory(cfg, student_config, counts), teacher_plan(cfg, teacher_config))
    tc = cfg.train
    if tc.strategy == "fsdp" and tc.num_workers == 1:
        plan.notes.append("fsdp on one worker shards nothing (it still saves DDP's gradient buckets)")
    if not tc.use_gpu and tc.precision == "bf16":
        plan.notes.append("bf16 on CPU needs AVX-512-bf16/AMX to be faster than fp32")
    return plan
