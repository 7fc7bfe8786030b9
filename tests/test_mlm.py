"""Masked-LM distillation: DistilBERT masking, a tiny BERT teacher built offline, MLM rows through the
transformers backend, layer-selected student init, and the training loop with the same losses."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.config import ConfigError, load_config
from raykd.mlm import (
    MLMDistillConfig,
    MLMStudentConfig,
    MLMTeacherBuild,
    build_tiny_bert,
    derive_bert_student,
    distilbert_mask,
    mlm_blocks,
    special_ids,
)

torch.set_num_threads(1)  # tiny models: more threads only contend on the shared cores
ROOT = Path(__file__).resolve().parents[1]


def test_distilbert_masking_proportions_and_specials():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, (400, 64))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    inputs, selected = distilbert_mask(ids, rng, mask_id=4, vocab_size=1000, special_ids=[0, 1, 2, 3, 4])
    assert not selected[:, 0].any() and not selected[:, -1].any()  # specials are never selected
    assert selected.mean() == pytest.approx(0.15 * 62 / 64, abs=0.01)
    chosen = inputs[selected]
    original = ids[selected]
    masked = (chosen == 4).mean()
    unchanged = (chosen == original).mean()
    assert masked == pytest.approx(0.8, abs=0.02)
    assert unchanged == pytest.approx(0.1 + 0.1 / 1000, abs=0.02)  # 10 % kept (+ random draws of the same id)
    assert (inputs[~selected] == ids[~selected]).all()  # nothing else changes
    # every sequence gets at least one selected position, even at a tiny rate
    _, few = distilbert_mask(ids[:50], rng, mask_id=4, vocab_size=1000, special_ids=[2, 3], mask_prob=1e-6)
    assert (few.sum(1) >= 1).all()


@pytest.fixture(scope="module")
def bert_teacher(tmp_path_factory):
    cfg = MLMTeacherBuild(vocab_size=300, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                          max_position_embeddings=64, corpus_chars=20_000, seq_len=32, batch_size=16, steps=40)
    return build_tiny_bert(cfg, tmp_path_factory.mktemp("bert") / "teacher", progress=False)


def test_tiny_bert_is_a_masked_lm_directory(bert_teacher):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(bert_teacher).architectures == ["BertForMaskedLM"]
    tok = AutoTokenizer.from_pretrained(bert_teacher)
    assert tok.mask_token_id == 4 and special_ids(tok) == [0, 1, 2, 3, 4]
    blocks = mlm_blocks(["the king is dead. long live the king. " * 20], tok, 16)
    assert blocks.shape[1] == 16 and (blocks[:, 0] == tok.cls_token_id).all() and (blocks[:, -1] == tok.sep_token_id).all()


def test_hf_backend_scores_masked_positions(bert_teacher):
    from transformers import AutoTokenizer, BertForMaskedLM

    from raykd.teacher.hf_backend import HFTeacherBackend

    backend = HFTeacherBackend(str(bert_teacher), max_batch_tokens=40)
    assert backend.is_mlm
    tok = AutoTokenizer.from_pretrained(bert_teacher)
    seqs = list(mlm_blocks(["a man and a woman went to the market to buy bread. " * 10], tok, 16)[:3])
    positions = [np.array([1, 5]), np.array([3]), np.array([2, 7, 9])]
    labels = [s[p] for s, p in zip(seqs, positions)]
    masked = [s.copy() for s in seqs]
    for s, p in zip(masked, positions):
        s[p] = tok.mask_token_id
    sig = backend.score(masked, 10, positions=positions, labels=labels)
    assert sig.num_rows == 6 and sig.offsets.tolist() == [0, 2, 3, 6]
    model = BertForMaskedLM.from_pretrained(bert_teacher).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.as_tensor(np.stack(masked), dtype=torch.long)).logits, -1)
    expected = torch.cat([logp[b, p] for b, p in enumerate(positions)])
    target = torch.cat([logp[b, p, torch.as_tensor(t, dtype=torch.long)] for b, (p, t) in enumerate(zip(positions, labels))])
    np.testing.assert_allclose(sig.topk_logprobs[:, 0], expected.max(-1).values.numpy(), atol=1e-4)
    np.testing.assert_allclose(sig.target_logprob, target.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="masked-LM teacher scores given positions"):
        backend.score(masked, 10)


def test_student_copies_the_selected_teacher_layers(bert_teacher):
    from transformers import BertForMaskedLM

    teacher = BertForMaskedLM.from_pretrained(bert_teacher).state_dict()
    student = derive_bert_student(str(bert_teacher), MLMStudentConfig(num_layers=2, layer_selection="uniform"))
    s = student.state_dict()
    assert student.config.num_hidden_layers == 2
    key = "bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(s[key.format(0)], teacher[key.format(0)]) and torch.equal(s[key.format(1)], teacher[key.format(2)])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], teacher["bert.embeddings.word_embeddings.weight"])
    last = derive_bert_student(str(bert_teacher), MLMStudentConfig(num_layers=1, layer_selection=[1]))
    assert torch.equal(last.state_dict()[key.format(0)], teacher[key.format(1)])


class _Done:
    def __init__(self, v):
        self.v = v

    def result(self):
        return self.v


def test_training_with_the_same_losses_moves_the_student_towards_the_teacher(bert_teacher):
    from transformers import AutoTokenizer

    from raykd.corpus import generate_corpus
    from raykd.mlm_train import evaluate_mlm, train_mlm_student, _eval_batch, _request
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
    teacher_sig = _request(score, *_eval_batch(blocks, tok, cfg)).result()
    row = evaluate_mlm(student, blocks, tok, cfg, teacher_sig)
    assert np.isfinite(row["heldout_loss"]) and 0 <= row["top1_agreement"] <= 1


def test_config_errors():
    for overrides, msg in ((["loss.hidden.weight=1", "loss.hidden.layer_map={1: 1}"], "not available for masked-LM"),
                           (["masking.mask_token=0.95"], "mask_token \\+ random_token"),
                           (["student.layer_selection=[0, 1, 2]"], "lists 3 layers"),
                           (["loss.beta=2"], "loss.beta")):
        with pytest.raises(ConfigError, match=msg):
            load_config(MLMDistillConfig, None, overrides)
    assert load_config(MLMDistillConfig, ROOT / "jobs" / "configs" / "mlm.yaml").student.num_layers == 2


@pytest.mark.slow
def test_mlm_distill_command_end_to_end(tmp_path):
    """The real job: tiny BERT built offline, served by Ray Serve, student + baseline, MLflow run."""
    env = {**os.environ, "RAYKD_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    cmd = [sys.executable, "-m", "raykd.cli", "mlm-distill", "--config", str(ROOT / "jobs" / "configs" / "mlm.yaml"),
           "teacher.build.steps=30", "teacher.build.corpus_chars=30000", "teacher.build.vocab_size=400",
           "data.builtin_chars=30000", "train.max_steps=6", "train.log_every=3", "eval.max_sequences=8"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kd student" in proc.stdout and "hard-label student" in proc.stdout and "teacher" in proc.stdout
    assert (tmp_path / "outputs" / "mlm" / "student" / "model.safetensors").is_file()
