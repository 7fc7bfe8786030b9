"""The worker side of cross-tokenizer KD without Ray: a student batch -> the teacher's tokens -> signals ->
the configured row loss. Same tokenizer: exactly the ordinary training loss; another: a finite, teaching loss."""

import numpy as np
import pytest
import torch

from raykd.config import LossConfig
from raykd.loss.row_loss import RowLoss
from raykd.signals import signals_from_logprobs
from raykd.train.cross_signals import cross_submit
from raykd.train.tokenizer_pair import TokenizerPair

TEXT = "The café's 12 apples — 日本語 🙂 cost  3.50\n\nEnd of the story. " * 6


@pytest.fixture(scope="module")
def toks():
    from raykd.data.corpus import generate_corpus
    from raykd.teacher.tiny_model import train_tokenizer

    text = generate_corpus(20_000, 2) + TEXT
    return (train_tokenizer(text, vocab_size=420, max_length=512),
            train_tokenizer(text, vocab_size=300, max_length=512, split_digits=True))


class _Teacher:
    """A deterministic stand-in scorer over the teacher vocabulary: logits are a fixed function of the
    prefix's last token, so the same teacher tokens always get the same signals (what the cache relies on)."""

    def __init__(self, vocab: int, k: int):
        g = torch.Generator().manual_seed(0)
        self.table = (torch.randn(vocab, vocab, generator=g, dtype=torch.float64) * 2).numpy()
        self.k, self.calls = k, []

    def submit(self, seqs):
        self.calls.append([np.asarray(s) for s in seqs])
        lp = [self.table[np.asarray(s[:-1])] for s in seqs]
        lp = np.concatenate(lp) - np.logaddexp.reduce(np.concatenate(lp), axis=1, keepdims=True)
        offsets = np.concatenate([[0], np.cumsum([len(s) - 1 for s in seqs])])
        targets = np.concatenate([np.asarray(s[1:]) for s in seqs])
        sig = signals_from_logprobs(lp, targets, offsets, self.k)

        class Done:
            def result(self):
                return sig

        return Done()


def _batch(tok, length=24, n=3):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    return np.stack([np.asarray(ids[i * 17: i * 17 + length]) for i in range(n)])


def test_same_tokenizer_training_loss_is_the_ordinary_one(toks):
    tok = toks[0]
    batch = _batch(tok)
    teacher = _Teacher(len(tok), k=8)
    pair = TokenizerPair(tok, tok)
    cross = cross_submit(pair, teacher.submit)(batch).result()
    plain = teacher.submit(list(batch)).result()
    assert cross.num_aligned == batch.shape[0] * (batch.shape[1] - 1)
    logits = torch.randn(batch.shape[0] * (batch.shape[1] - 1), len(tok), dtype=torch.float64)
    labels = torch.as_tensor(batch[:, 1:].reshape(-1))
    ordinary = RowLoss(LossConfig(alpha=0.6, temperature=2.0), total_steps=10)(3, logits, labels, plain)
    crossed = RowLoss(LossConfig(alpha=0.6, temperature=2.0, cross_tokenizer={}), total_steps=10)(3, logits, labels, cross)
    assert crossed.loss.item() == pytest.approx(ordinary.loss.item(), abs=1e-6)
    assert crossed.metrics["loss_soft"] == pytest.approx(ordinary.metrics["loss_soft"], abs=1e-6)


def test_other_tokenizer_signals_align_and_teach(toks):
    teacher_tok, student_tok = toks
    batch = _batch(student_tok, length=20, n=4)
    teacher = _Teacher(len(teacher_tok), k=6)
    pair = TokenizerPair(teacher_tok, student_tok)
    sig = cross_submit(pair, teacher.submit, max_len=64)(batch).result()
    sent = teacher.calls[-1]
    assert [len(s) for s in sent] != [batch.shape[1]] * len(batch)  # the teacher scored its own tokens
    t_rows, s_rows = sig.aligned_rows()
    assert 0 < len(s_rows) <= batch.size - len(batch) and (np.diff(s_rows) > 0).all()
    assert t_rows.max() < sig.signals.num_rows
    n = batch.shape[0] * (batch.shape[1] - 1)
    logits = torch.randn(n, len(student_tok), dtype=torch.float64, requires_grad=True)
    labels = torch.as_tensor(batch[:, 1:].reshape(-1))
    lc = LossConfig(alpha=1.0, temperature=1.0, cross_tokenizer={"uld_weight": 0.5})
    out = RowLoss(lc, total_steps=10)(0, logits, labels, sig)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.metrics["loss_soft"] > 0
    assert 0 < out.metrics["aligned_fraction"] <= 1
    # only aligned student rows receive a soft gradient
    touched = logits.grad.abs().sum(-1) > 0
    assert set(np.flatnonzero(touched.numpy())) == set(s_rows.tolist())
    # micro-batches: the two halves, each over the whole batch's rows, add up to the whole
    half = [sig.take_sequences([0, 1]), sig.take_sequences([2, 3])]
    parts = [RowLoss(lc, total_steps=10)(0, logits.detach()[i * n // 2:(i + 1) * n // 2], labels[i * n // 2:(i + 1) * n // 2],
                                         h, denominator=float(n)).loss.item() for i, h in enumerate(half)]
    whole = RowLoss(lc, total_steps=10)(0, logits.detach(), labels, sig, denominator=float(n)).loss.item()
    assert sum(parts) == pytest.approx(whole, rel=1e-9)


def test_cross_tokenizer_config_limits():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="cannot be combined with loss.dynamic_temperature"):
        LossConfig(cross_tokenizer={}, dynamic_temperature={"rule": "entropy"})
    with pytest.raises(ValidationError, match="uld_weight 0 would teach nothing"):
        LossConfig(cross_tokenizer={"mapping": "none", "uld_weight": 0})
