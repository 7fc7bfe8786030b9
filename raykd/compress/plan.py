"""Every check of a `raykd compress` config that needs no model: one `ConfigError` line each, in seconds.

    plan = plan_compress(cfg)        # variant specs with names, one DistillConfig per KD student
    plan.variants[0].name            # 'int8-wo', 'prune-50', 'structured-h0.5-m0.5-d1', 'lowrank-2x', ...

Checked before any weights load (the teacher's config.json is read, or the tiny teacher's build config when
teacher.path is null): each quantization mode against what the installed torchao runs on this machine
(raykd/compress/quantize.py `unsupported_reason`), each low-rank rank against the teacher's layers, a layer
count structured pruning would empty, a teacher too big to run in-process, and each KD student's whole
`raykd distill` config (raykd/config/distill.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raykd.config import ConfigError, DistillConfig, validate
from raykd.config.compress import CompressConfig

QUANT_NAMES = {"int8_weight_only": "int8-wo", "int8_dynamic": "int8-dyn", "int4_weight_only": "int4-wo"}
IN_PROCESS_MAX_PARAMS = 100_000_000  # the teacher is loaded in each variant's task (recovery, agreement)


@dataclass
class VariantPlan:
    name: str
    spec: Any  # one of raykd.config.compress's *Variant models
    field: str  # where it sits in the config, for messages


@dataclass
class CompressPlan:
    variants: list[VariantPlan]
    students: dict[str, DistillConfig]  # KD student name -> its `raykd distill` config
    linear_shapes: dict[str, tuple[int, int]]  # the teacher's decoder linears, (out, in)
    num_layers: int


def variant_name(spec) -> str:
    if spec.method == "quantize":
        return QUANT_NAMES[spec.mode]
    if spec.method == "magnitude_prune":
        return f"prune-{spec.sparsity * 100:g}"
    if spec.method == "structured_prune":
        return f"structured-h{spec.heads:g}-m{spec.mlp:g}-d{spec.drop_layers}"
    return f"lowrank-{spec.ratio:g}x" if spec.ratio is not None else f"lowrank-r{spec.rank}"


def teacher_shapes(cfg: CompressConfig) -> tuple[dict[str, tuple[int, int]], int, str]:
    """({q_proj, k_proj, ..., down_proj: (out, in)}, layers, model_type) of the teacher, from its config only."""
    if cfg.teacher.path is not None:
        from transformers import AutoConfig

        from raykd.models import check_model_dir, safetensors_param_count

        check_model_dir(cfg.teacher.path, "teacher.path")
        from pathlib import Path

        if Path(cfg.teacher.path).is_dir() and safetensors_param_count(cfg.teacher.path) > IN_PROCESS_MAX_PARAMS:
            raise ConfigError(f"teacher.path: raykd compress runs the teacher in-process (recovery, agreement); "
                              f"it takes at most {IN_PROCESS_MAX_PARAMS:,} parameters")
        c = AutoConfig.from_pretrained(cfg.teacher.path)
        hidden, heads, inter, layers = c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers
        kv = getattr(c, "num_key_value_heads", None) or heads
        hd = getattr(c, "head_dim", None) or hidden // heads
        kind = c.model_type
    else:
        b = cfg.teacher.build
        hidden, heads, inter, layers = b.hidden_size, b.num_heads, b.intermediate_size, b.num_layers
        kv, hd = b.num_kv_heads or heads, b.hidden_size // b.num_heads
        kind = "qwen2_moe" if b.moe is not None else "llama"
    shapes = {"q_proj": (heads * hd, hidden), "k_proj": (kv * hd, hidden), "v_proj": (kv * hd, hidden),
              "o_proj": (hidden, heads * hd), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
              "down_proj": (hidden, inter)}
    return shapes, layers, kind


def distill_config(cfg: CompressConfig, name: str, student) -> DistillConfig:
    """The `raykd distill` config of KD student `name`: the study's teacher, data and KD section; evaluation
    is the study's own (no baseline, no task columns)."""
    tree = {"run_name": f"{cfg.run_name}-{name}", "seed": cfg.seed, "output_dir": cfg.output_dir,
            "teacher": cfg.teacher.model_dump(), "student": student.model_dump(), "data": cfg.data.model_dump(),
            "loss": cfg.kd.loss.model_dump(), "train": cfg.kd.train.model_dump(),
            "eval": {"baseline": False, "tasks": {"enabled": False}}, "mlflow": cfg.mlflow.model_dump()}
    return validate(DistillConfig, tree, f"kd.students.{name}")


def plan_compress(cfg: CompressConfig) -> CompressPlan:
    from raykd.compress.quantize import muted_logs, unsupported_reason

    modes = [(f"variants[{i}].mode", v.mode) for i, v in enumerate(cfg.variants) if v.method == "quantize"]
    modes += [(f"kd.quantize[{j}]", m) for j, m in enumerate(cfg.kd.quantize)]
    for field, mode in modes:
        reason = unsupported_reason(mode)
        if reason:
            raise ConfigError(f"{field}: {reason}")
    with muted_logs():  # transformers' torchao integration, imported with it, warns on CPU
        from raykd.compress.lowrank import rank_for_ratio

    shapes, layers, kind = teacher_shapes(cfg)
    plans, seen = [], set()
    for i, v in enumerate(cfg.variants):
        field = f"variants[{i}]"
        if v.method in ("structured_prune", "low_rank") and kind not in ("llama", "mistral", "qwen2"):
            raise ConfigError(f"{field}: {v.method} needs a dense Llama-style teacher, not {kind}")
        if v.method == "low_rank":
            for proj, (out_f, in_f) in shapes.items():
                r = v.rank if v.rank is not None else rank_for_ratio(out_f, in_f, v.ratio)
                if r > min(out_f, in_f):
                    raise ConfigError(f"{field}.rank: {r} exceeds the rank of the teacher's {proj} "
                                      f"({out_f}x{in_f}: at most {min(out_f, in_f)})")
        if v.method == "structured_prune" and v.drop_layers >= layers:
            raise ConfigError(f"{field}.drop_layers: {v.drop_layers} would remove all {layers} teacher layers")
        name = variant_name(v)
        if name in seen:
            raise ConfigError(f"{field}: a second {name} variant")
        seen.add(name)
        plans.append(VariantPlan(name, v, field))
    students = {name: distill_config(cfg, name, s) for name, s in cfg.kd.students.items()}
    clash = seen & set(students)
    if clash:
        raise ConfigError(f"kd.students: {sorted(clash)[0]} is also a variant's name")
    return CompressPlan(plans, students, shapes, layers)
