"""`raykd mlm-distill`'s config (raykd/mlm/): a BERT teacher on Serve, a shallower BERT student.

    cfg = load_config(MLMDistillConfig, "jobs/configs/mlm.yaml", ["student.num_layers=2"])
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raykd.config.base import StrictModel
from raykd.config.distill import DataConfig, MlflowConfig
from raykd.config.loss import LossConfig


class MLMTeacherBuild(StrictModel):
    """The tiny BERT teacher built offline when `teacher.path` is null."""

    vocab_size: int = Field(1024, ge=64, description="WordPiece vocabulary size.")
    hidden_size: int = Field(64, ge=16, description="Model width.")
    num_layers: int = Field(4, ge=1, description="Encoder layers.")
    num_heads: int = Field(2, ge=1, description="Attention heads.")
    intermediate_size: int = Field(128, ge=8, description="MLP width.")
    max_position_embeddings: int = Field(128, ge=16, description="Longest sequence.")
    corpus_chars: int = Field(300_000, ge=10_000, description="Characters of generated text to train on.")
    seq_len: int = Field(64, ge=8, description="Pre-training sequence length.")
    batch_size: int = Field(32, ge=1, description="Pre-training sequences per step.")
    steps: int = Field(300, ge=1, description="Pre-training steps.")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (linear decay).")
    seed: int = 0


class MLMTeacherConfig(StrictModel):
    path: str | None = Field(None, description="HF BertForMaskedLM directory; null: build the tiny one (cached).")
    build: MLMTeacherBuild = Field(default_factory=MLMTeacherBuild)
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved for the Serve replica.")
    app_name: str = Field("raykd-mlm-teacher", description="Serve application name.")


class MLMStudentConfig(StrictModel):
    num_layers: int = Field(2, ge=1, description="Encoder layers of the student (width is the teacher's).")
    layer_selection: Literal["uniform", "first", "last"] | list[int] = Field(
        "uniform", description="Teacher layers that initialise the student's (0-based list allowed).")
    init_from_teacher: bool = Field(True, description="Copy embeddings, the MLM head and the selected layers.")


class MaskingConfig(StrictModel):
    mask_prob: float = Field(0.15, gt=0, lt=1, description="Fraction of non-special tokens selected.")
    mask_token: float = Field(0.8, ge=0, le=1, description="Of the selected: fraction replaced by [MASK].")
    random_token: float = Field(0.1, ge=0, le=1, description="Of the selected: fraction replaced by a random token.")

    @model_validator(mode="after")
    def _sum(self) -> "MaskingConfig":
        if self.mask_token + self.random_token > 1:
            raise ValueError("mask_token + random_token must be <= 1 (the rest stay unchanged)")
        return self


class MLMTrainConfig(StrictModel):
    batch_size: int = Field(16, ge=1, description="Sequences per step.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, linear decay).")
    warmup_steps: int = Field(10, ge=0)
    log_every: int = Field(10, ge=1)
    torch_threads: int = Field(1, ge=1, description="torch threads of the driver's training.")


class MLMEvalConfig(StrictModel):
    baseline: bool = Field(True, description="Also train a hard-label-only student (same budget, seed, init).")
    max_sequences: int = Field(64, ge=1, description="Held-out sequences scored (fixed mask seed).")


class MLMDistillConfig(StrictModel):
    """`raykd mlm-distill`: BERT teacher (Serve, hf backend) -> shallower BERT student, one MLflow run."""

    run_name: str = Field("mlm", pattern=r"^[A-Za-z0-9_.-]+$", description="MLflow run and output folder name.")
    seed: int = 0
    output_dir: str = Field("outputs", description="The student goes to <output_dir>/<run_name>/student.")
    teacher: MLMTeacherConfig = Field(default_factory=MLMTeacherConfig)
    student: MLMStudentConfig = Field(default_factory=MLMStudentConfig)
    data: DataConfig = Field(default_factory=lambda: DataConfig(seq_len=64, builtin_chars=200_000))
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: MLMTrainConfig = Field(default_factory=MLMTrainConfig)
    eval: MLMEvalConfig = Field(default_factory=MLMEvalConfig)
    mlflow: MlflowConfig = Field(default_factory=lambda: MlflowConfig(experiment="raykd-mlm"))

    @model_validator(mode="after")
    def _supported(self) -> "MLMDistillConfig":
        lc = self.loss
        if lc.hidden.weight or lc.attention.weight or lc.adversarial.weight:
            raise ValueError("loss.hidden / loss.attention / loss.adversarial are not available for masked-LM "
                             "distillation (raykd distill only)")
        if self.data.weight_field is not None:
            raise ValueError("data.weight_field is not available for masked-LM distillation")
        if lc.cross_tokenizer is not None:
            raise ValueError("loss.cross_tokenizer is not available for masked-LM distillation (raykd distill only)")
        if isinstance(self.student.layer_selection, list) and len(self.student.layer_selection) != self.student.num_layers:
            raise ValueError(f"student.layer_selection lists {len(self.student.layer_selection)} layers but "
                             f"num_layers is {self.student.num_layers}")
        return self
