"""Masked-LM distillation (DistilBERT from BERT): a BERT teacher on Ray Serve, a shallower BERT student.

    raykd mlm-distill --config jobs/configs/mlm.yaml [key=value ...]

The seed's pre-training distillation for encoders: the student imitates the teacher's masked-LM outputs.
  * Teacher: `teacher.path` (an HF BertForMaskedLM directory) or, when null, a tiny one built offline
    and cached: a WordPiece tokenizer and a BertForMaskedLM trained on raykd's generated corpus with the
    masking below (`build_tiny_bert`).
  * Masking as DistilBERT/BERT (`distilbert_mask`): 15 % of the non-special tokens of every sequence are
    selected (at least one); of those 80 % become [MASK], 10 % a random token, 10 % stay unchanged.
  * Rows are the selected positions: the teacher deployment (hf backend, the same `Teacher.score` as for
    causal teachers) returns top-k log-probs at those positions, `positions`/`labels` given per sequence.
  * Same losses as `raykd distill`: alpha * T^2 D(p_t, p_s) + (1 - alpha) CE(labels) with the
    configured divergence, top-k tail handling, temperature/alpha schedules and dynamic temperature
    (raykd/divergences.py, raykd/schedules.py, raykd/dynamic_temperature.py); hidden/attention/adversarial
    terms are not wired for MLM and are rejected by the config.
  * The student is the teacher's architecture with fewer layers, initialised from the teacher's layers
    picked by `student.layer_selection` (embeddings and MLM head copied), as DistilBERT did.

Training runs in the driver (a BERT student this small does not need data parallelism), with the teacher
request for the next batch in flight while the current step runs. Everything is logged to one MLflow run,
and the evaluation compares teacher, distilled student and (optionally) a hard-label-only student with the
same budget on held-out masked-LM loss and top-1 agreement with the teacher.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from raykd.config import DataConfig, LossConfig, MlflowConfig, StrictModel, default_cache_dir

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# --------------------------------------------------------------------------------------------- config
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
        if isinstance(self.student.layer_selection, list) and len(self.student.layer_selection) != self.student.num_layers:
            raise ValueError(f"student.layer_selection lists {len(self.student.layer_selection)} layers but "
                             f"num_layers is {self.student.num_layers}")
        return self


# --------------------------------------------------------------------------------------------- masking (pure)
def distilbert_mask(
    ids: np.ndarray,  # (B, L) int token ids
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...] = (),
    mask_prob: float = 0.15,
    mask_token: float = 0.8,
    random_token: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT/DistilBERT masking. Returns `(inputs (B, L), selected (B, L) bool)`; labels are `ids[selected]`.

    Each non-special position is selected with probability `mask_prob` (at least one per sequence);
    a selected position becomes [MASK] with probability `mask_token`, a uniformly random token with
    `random_token`, and keeps its token otherwise.
    """
    ids = np.asarray(ids)
    candidates = ~np.isin(ids, np.asarray(special_ids, ids.dtype))
    selected = (rng.random(ids.shape) < mask_prob) & candidates
    for b in np.flatnonzero(~selected.any(1) & candidates.any(1)):  # every sequence teaches something
        selected[b, rng.choice(np.flatnonzero(candidates[b]))] = True
    action = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[selected & (action < mask_token)] = mask_id
    swap = selected & (action >= mask_token) & (action < mask_token + random_token)
    inputs[swap] = rng.integers(0, vocab_size, int(swap.sum()))
    return inputs, selected


def mlm_blocks(texts: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """`(N, seq_len)` int32: [CLS] + seq_len - 2 tokens of the concatenated texts + [SEP]."""
    body = seq_len - 2
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)
    n = len(ids) // body
    core = np.asarray(ids[: n * body], np.int32).reshape(n, body)
    cls = np.full((n, 1), tokenizer.cls_token_id, np.int32)
    sep = np.full((n, 1), tokenizer.sep_token_id, np.int32)
    return np.concatenate([cls, core, sep], 1)


def _say(msg: str) -> None:
    print(f"[raykd.mlm] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- teacher
def _train_wordpiece(text: str, vocab_size: int, max_length: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator((text[i : i + 65536] for i in range(0, len(text), 65536)), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def special_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL]


def build_tiny_bert(cfg: MLMTeacherBuild, out_dir: Path, progress: bool = True) -> Path:
    """WordPiece tokenizer + BertForMaskedLM pre-trained with `distilbert_mask` on generated text -> HF dir."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from raykd.corpus import generate_corpus

    t0 = time.monotonic()
    out_dir = Path(out_dir)
    text = generate_corpus(cfg.corpus_chars, cfg.seed)
    tok = _train_wordpiece(text, cfg.vocab_size, cfg.max_position_embeddings)
    blocks = mlm_blocks([text], tok, cfg.seq_len)
    torch.manual_seed(cfg.seed)
    model = BertForMaskedLM(BertConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, pad_token_id=tok.pad_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    last = t0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / 10) * (1 - step / cfg.steps)
        batch = blocks[rng.integers(0, len(blocks), cfg.batch_size)]
        inputs, selected = distilbert_mask(batch, rng, mask_id=tok.mask_token_id, vocab_size=len(tok),
                                           special_ids=special_ids(tok))
        logits = model(input_ids=torch.as_tensor(inputs, dtype=torch.long)).logits
        sel = torch.as_tensor(selected)
        loss = torch.nn.functional.cross_entropy(logits[sel], torch.as_tensor(batch, dtype=torch.long)[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        now = time.monotonic()
        if progress and (now - last > 10 or step + 1 == cfg.steps):
            rate = (step + 1) / (now - t0)
            _say(f"teacher step {step + 1}/{cfg.steps} mlm loss {loss.item():.3f} ({rate:.1f} steps/s, "
                 f"eta {(cfg.steps - step - 1) / rate:.0f}s)")
            last = now
    model.eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "raykd_mlm_teacher.json").write_text(json.dumps({"config": cfg.model_dump(), "final_loss": loss.item()}))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def ensure_tiny_bert(cfg: MLMTeacherBuild) -> Path:
    key = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode()).hexdigest()[:16]
    path = default_cache_dir() / "teachers" / f"bert-{key}"
    if not (path / "model.safetensors").is_file():
        _say(f"building the tiny BERT teacher -> {path}")
        build_tiny_bert(cfg, path)
    return path


# --------------------------------------------------------------------------------------------- student
def derive_bert_student(teacher_path: str, cfg: MLMStudentConfig, seed: int = 0):
    """The teacher's BERT with `cfg.num_layers` layers, initialised from the selected teacher layers."""
    import re

    import torch
    from transformers import AutoConfig, BertForMaskedLM

    from raykd.models import select_layers

    t_config = AutoConfig.from_pretrained(teacher_path)
    layer_map = select_layers(cfg.layer_selection, t_config.num_hidden_layers, cfg.num_layers)
    s_config = t_config.__class__.from_dict({**t_config.to_dict(), "num_hidden_layers": cfg.num_layers})
    torch.manual_seed(seed)
    student = BertForMaskedLM(s_config)
    if cfg.init_from_teacher:
        teacher = BertForMaskedLM.from_pretrained(teacher_path).state_dict()
        layer = re.compile(r"^(.*\.layer\.)(\d+)(\..*)$")
        with torch.no_grad():
            for name, param in student.state_dict().items():
                m = layer.match(name)
                src = f"{m.group(1)}{layer_map[int(m.group(2))]}{m.group(3)}" if m else name
                if src in teacher and teacher[src].shape == param.shape:
                    param.copy_(teacher[src])
    return student
