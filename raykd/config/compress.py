"""`raykd compress`'s config: one teacher, the KD students and compressed variants to build, how to measure them.

    cfg = load_config(CompressConfig, "jobs/configs/compress.yaml", ["recovery.steps=50"])

Pure pydantic. What needs the teacher's shapes (a rank above a layer's) or the installed torchao (a
quantization mode this machine cannot run) is checked by raykd/compress/plan.py, still before any model loads.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from raykd.config.base import StrictModel
from raykd.config.distill import DataConfig, MlflowConfig, StudentConfig, TaskEvalConfig, TrainConfig
from raykd.config.loss import LossConfig
from raykd.config.teacher import TeacherConfig

QuantMode = Literal["int8_weight_only", "int8_dynamic", "int4_weight_only"]


class QuantizeVariant(StrictModel):
    method: Literal["quantize"] = Field(description="Post-training quantization through torchao.")
    mode: QuantMode = Field(description="int8_weight_only | int8_dynamic (activations too, at run time) | "
                            "int4_weight_only (refused where torchao cannot run it: CPU-only torch).")


class MagnitudeVariant(StrictModel):
    method: Literal["magnitude_prune"] = Field(description="Unstructured magnitude pruning of the decoder linears.")
    sparsity: float = Field(gt=0, lt=1, description="Fraction of each decoder linear's weights set to zero.")
    recover: bool = Field(True, description="Also heal it by a short distillation from the teacher (zeros kept).")


class StructuredVariant(StrictModel):
    method: Literal["structured_prune"] = Field(description="Minitron-style pruning of heads, MLP channels, layers.")
    heads: float = Field(1.0, gt=0, le=1, description="Fraction of key/value head groups kept (with their queries).")
    mlp: float = Field(1.0, gt=0, le=1, description="Fraction of MLP channels kept in every layer.")
    drop_layers: int = Field(0, ge=0, description="Least important layers removed.")
    recover: bool = Field(True, description="Also heal it by a short distillation from the teacher.")


class LowRankVariant(StrictModel):
    method: Literal["low_rank"] = Field(description="Each decoder linear replaced by a rank-r product of its SVD.")
    ratio: float | None = Field(None, gt=1, description="Parameter cut per layer (2: half the weights); sets r.")
    rank: int | None = Field(None, ge=1, description="One explicit rank for every layer instead of ratio.")
    recover: bool = Field(True, description="Also heal it by a short distillation from the teacher.")

    @model_validator(mode="after")
    def _one(self) -> "LowRankVariant":
        if (self.ratio is None) == (self.rank is None):
            raise ValueError("give exactly one of ratio and rank")
        return self


Variant = Annotated[Union[QuantizeVariant, MagnitudeVariant, StructuredVariant, LowRankVariant],
                    Field(discriminator="method")]


class KDConfig(StrictModel):
    """The KD students (`raykd distill`'s path: teacher on Serve, student on Ray Train) and their training."""

    students: dict[str, StudentConfig] = Field(
        default_factory=lambda: {"kd-2x64": StudentConfig(num_layers=2, hidden_size=64),
                                 "kd-2x128": StudentConfig(num_layers=2, hidden_size=None)},
        description="Name -> how the student is derived from the teacher (depth / width); {}: no KD students.")
    quantize: list[QuantMode] = Field(default_factory=lambda: ["int8_weight_only"],
                                      description="Modes each KD student is also quantized with (stacking).")
    loss: LossConfig = Field(default_factory=LossConfig, description="The KD students' loss.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The KD students' Ray Train run.")


class RecoveryConfig(StrictModel):
    """Healing a pruned or factorised model by distillation from the in-process teacher; the same token
    budget (steps x batch_size x data.seq_len) for every variant."""

    steps: int = Field(60, ge=1, description="Optimizer steps per recovered variant.")
    batch_size: int = Field(16, ge=1, description="Blocks of data.seq_len tokens per step.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (constant after 10 % warm-up).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the KD term.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the KD term; the rest is cross-entropy.")


class SpeedConfig(StrictModel):
    """CPU inference speed, one model at a time, one harness (raykd/compress/measure.py)."""

    prompt_tokens: int = Field(64, ge=1, description="Prompt length of the prefill measure.")
    gen_tokens: int = Field(32, ge=1, description="New tokens per sequence (greedy) of the decode measure.")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 16], min_length=1, description="Batches measured.")
    repeats: int = Field(3, ge=1, description="Timed repeats after one warm-up; the median is reported.")
    threads: int = Field(1, ge=1, description="torch threads while timing (1: comparable on a shared machine).")


class CompressEvalConfig(StrictModel):
    max_sequences: int = Field(64, ge=1, description="Held-out blocks for loss, perplexity and top-1 agreement.")
    tasks: TaskEvalConfig = Field(default_factory=lambda: TaskEvalConfig(enabled=True, per_level=100),
                                  description="Task-suite exact match per level.")
    speed: SpeedConfig = Field(default_factory=SpeedConfig)


class CompressConfig(StrictModel):
    """`raykd compress`: one teacher -> KD students and compressed variants, all measured the same way."""

    run_name: str = Field("compress", pattern=r"^[A-Za-z0-9_.-]+$", description="Names the MLflow parent run.")
    seed: int = Field(0, description="Seed of students, calibration and recovery batches.")
    output_dir: str = Field("outputs", description="Variants go to <output_dir>/<run_name>/<variant>/.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The teacher (null path: the tiny one).")
    data: DataConfig = Field(default_factory=DataConfig, description="Text for KD, recovery, calibration, held-out.")
    kd: KDConfig = Field(default_factory=KDConfig)
    variants: list[Variant] = Field(default_factory=list, description="Compressed variants of the teacher.")
    calibration_blocks: int = Field(32, ge=1, description="Training blocks that rank structured-pruning importance.")
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    eval: CompressEvalConfig = Field(default_factory=CompressEvalConfig)
    num_cpus_per_variant: float = Field(1.0, gt=0, description="CPUs per Ray task building and scoring a variant.")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
