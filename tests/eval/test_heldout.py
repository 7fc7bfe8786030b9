"""The held-out loss every table and sweep reports, against an independent cross-entropy."""

import numpy as np
import pytest
import torch

from raykd.eval.heldout import heldout_loss


def test_heldout_loss_matches_an_independent_cross_entropy() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    val = np.random.default_rng(0).integers(0, 50, size=(21, 12)).astype(np.int32)  # not a multiple of the batch
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.as_tensor(val, dtype=torch.long)).logits.double(), -1)
    ids = torch.as_tensor(val, dtype=torch.long)
    expected = -logp[:, :-1].gather(-1, ids[:, 1:, None]).mean().item()
    model.train()
    loss, agree = heldout_loss(model, val, batch_size=4)
    assert loss == pytest.approx(expected, rel=1e-5) and agree is None
    assert model.training  # left as it was
    own_top1 = logp[:, :-1].argmax(-1).reshape(-1).numpy()  # rows as in TeacherSignals
    _, agree = heldout_loss(model, val, own_top1, batch_size=4)
    assert agree == 1.0
    _, agree = heldout_loss(model, val, (own_top1 + 1) % 50, batch_size=4)
    assert agree == 0.0


def test_chat_heldout_loss_counts_only_the_trained_tokens() -> None:
    """With the data's loss mask (chat: assistant tokens) only the predictions of trained tokens count, and the
    teacher agreement is taken over those same positions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    rng = np.random.default_rng(1)
    val = rng.integers(0, 50, size=(9, 12)).astype(np.int32)
    mask = (rng.random((9, 12)) < 0.4).astype(np.uint8)
    mask[:, 0] = 0
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.as_tensor(val, dtype=torch.long)).logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, torch.as_tensor(val, dtype=torch.long)[:, 1:, None])[..., 0]  # (M, L-1)
    keep = torch.as_tensor(mask[:, 1:] > 0)
    loss, _ = heldout_loss(model, val, batch_size=4, mask=mask)
    assert loss == pytest.approx(nll[keep].mean().item(), rel=1e-5)
    assert loss != pytest.approx(nll.mean().item(), rel=1e-3)  # the untrained (prompt) positions are left out
    top1 = logp[:, :-1].argmax(-1).numpy()
    wrong = (top1 + 1) % 50
    # the teacher's top-1 agrees exactly on the untrained positions, never on the trained ones: agreement 0
    teacher = np.where(mask[:, 1:] > 0, wrong, top1).reshape(-1)
    _, agree = heldout_loss(model, val, teacher, batch_size=4, mask=mask)
    assert agree == 0.0
