"""The masked-LM models: the tiny BERT teacher raykd builds offline, and the student derived from a teacher.

    path = ensure_tiny_bert(cfg.teacher.build)            # <cache>/teachers/bert-<key>, built once
    student = derive_bert_student(path, cfg.student)      # fewer layers, initialised from the teacher's

The teacher: a WordPiece tokenizer and a BertForMaskedLM trained on raykd's generated corpus with
`distilbert_mask` (raykd/mlm/masking.py). The student: the teacher's architecture with fewer layers,
initialised from the layers `student.layer_selection` picks (embeddings and MLM head copied), as DistilBERT.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import numpy as np

from raykd import console
from raykd.config import default_cache_dir
from raykd.config.mlm import MLMStudentConfig, MLMTeacherBuild
from raykd.console import Progress
from raykd.files import atomic_dir, build_once
from raykd.mlm.masking import SPECIAL, distilbert_mask, mlm_blocks, special_ids

_say = partial(console.say, scope="raykd.mlm")


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


def build_tiny_bert(cfg: MLMTeacherBuild, out_dir: Path, progress: bool = True) -> Path:
    """WordPiece tokenizer + BertForMaskedLM pre-trained with `distilbert_mask` on generated text -> HF dir."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from raykd.data.corpus import generate_corpus
    from raykd.loss.schedules import lr_factor

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
    progress_line = Progress(cfg.steps)
    for step in range(cfg.steps):
        for group in opt.param_groups:  # 10 warm-up steps, then linear decay to 0
            group["lr"] = lr_factor(step, 10, step / cfg.steps, floor=0.0, decay="linear", base=cfg.lr)
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
        if progress and progress_line.due(step + 1):
            _say(f"teacher step {step + 1}/{cfg.steps} mlm loss {loss.item():.3f} "
                 f"({progress_line.rate_eta(step + 1, 'steps')})")
    model.eval()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "raykd_mlm_teacher.json").write_text(json.dumps({"config": cfg.model_dump(), "final_loss": loss.item()}))
    return out_dir


def ensure_tiny_bert(cfg: MLMTeacherBuild) -> Path:
    key = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode()).hexdigest()[:16]
    path = default_cache_dir() / "teachers" / f"bert-{key}"
    def build() -> None:
        _say(f"building the tiny BERT teacher -> {path}")
        build_tiny_bert(cfg, path)

    build_once(path, lambda p: (p / "model.safetensors").is_file(), build)
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
