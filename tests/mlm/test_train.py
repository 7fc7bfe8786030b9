"""The masked-LM training loop: the same row-level loss as `raykd distill` moves the student towards the teacher."""

import numpy as np
import torch

from raykd.config import load_config
from raykd.config.mlm import MLMDistillConfig, MLMStudentConfig
from raykd.mlm.masking import mlm_blocks
from raykd.mlm.models import derive_bert_student

torch.set_num_threads(1)  # tiny models: more threads only contend on the shared cores


class _Done:
    def __init__(self, v):
        self.v = v

    def result(self):
        return self.v


def test_training_with_the_same_losses_moves_the_student_towards_the_teacher(bert_teacher):
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus
    from raykd.mlm.train import eval_batch, evaluate_mlm, request_signals, train_mlm_student
    from raykd.teacher.hf_backend import HFTeacherBackend

    backend = HFTeacherBackend(str(bert_teacher))
    tok = AutoTokenizer.from_pretrained(bert_teacher)
    blocks = mlm_blocks([generate_corpus(20_000, 5)], tok, 32)
    cfg = load_config(MLMDistillConfig, None, [
        "train.max_steps=12", "train.batch_size=8", "train.log_every=4", "loss.top_k=8", "loss.alpha=1.0",
        "loss.divergence=reverse_kl", "loss.dynamic_temperature.rule=entropy", "eval.max_sequences=16"])
    score = lambda x, p, y: _Done(backend.score(list(x), cfg.loss.top_k, positions=p, labels=y))  # noqa: E731
    student = derive_bert_student(str(bert_teacher), MLMStudentConfig(num_layers=1), seed=0)
    history = train_mlm_student(student, blocks, tok, cfg, score)
    assert len(history) == 12 and all(np.isfinite(m["loss"]) for m in history)
    assert np.mean([m["loss_soft"] for m in history[-4:]]) < np.mean([m["loss_soft"] for m in history[:4]])
    assert all(1.0 <= m["temperature"] <= 4.0 for m in history)
    teacher_sig = request_signals(score, *eval_batch(blocks, tok, cfg)).result()
    row = evaluate_mlm(student, blocks, tok, cfg, teacher_sig)
    assert np.isfinite(row["heldout_loss"]) and 0 <= row["top1_agreement"] <= 1
