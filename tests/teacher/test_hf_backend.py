"""The transformers teacher backend against a direct forward pass."""

import numpy as np
import pytest
import torch

from raykd.mlm.masking import mlm_blocks


@pytest.fixture(scope="module")
def backend(tiny_teacher):
    from raykd.teacher.hf_backend import HFTeacherBackend

    return HFTeacherBackend(str(tiny_teacher), max_batch_tokens=64)


def test_score_matches_direct_forward(backend, tiny_teacher):
    from transformers import AutoModelForCausalLM

    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, backend.vocab_size, n).astype(np.int32) for n in (10, 7, 30)]
    sig = backend.score(seqs, top_k=5)
    np.testing.assert_array_equal(sig.offsets, [0, 9, 15, 44])
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()
    for b, s in enumerate(seqs):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.as_tensor(s[None], dtype=torch.long)).logits[0, :-1].double(), -1)
        rows = slice(sig.offsets[b], sig.offsets[b + 1])
        top = lp.topk(5, -1)
        np.testing.assert_array_equal(sig.topk_ids[rows], top.indices.numpy())
        np.testing.assert_allclose(sig.topk_logprobs[rows], top.values.numpy(), atol=1e-4)
        tail = torch.log1p(-top.values.exp().sum(-1))
        np.testing.assert_allclose(sig.tail_logprob[rows], tail.numpy(), atol=1e-4)
        np.testing.assert_allclose(sig.target_logprob[rows], lp[torch.arange(len(s) - 1), s[1:]].numpy(), atol=1e-4)


def test_fused_cpu_rows_equal_the_torch_rows(backend):
    """On a CPU the rows come from the fused top-k kernel (one pass per row, the vLLM path's); torch's ops (the
    GPU path, exact tail by a second log-sum-exp) give the same signals."""
    assert backend._fused  # numba is installed with vLLM: this machine takes the fused path
    rng = np.random.default_rng(2)
    seqs = [rng.integers(0, backend.vocab_size, n).astype(np.int32) for n in (33, 9, 20)]
    fused = backend.score(seqs, 20)
    backend._fused = False
    try:
        ref = backend.score(seqs, 20)
    finally:
        backend._fused = True
    np.testing.assert_array_equal(fused.offsets, ref.offsets)
    same = (fused.topk_ids == ref.topk_ids).all(1)  # rows whose order differs only by (near) ties
    assert same.mean() > 0.95
    np.testing.assert_allclose(fused.topk_logprobs, ref.topk_logprobs, atol=1e-5)
    np.testing.assert_allclose(fused.target_logprob, ref.target_logprob, atol=1e-5)
    np.testing.assert_allclose(np.exp(fused.tail_logprob), np.exp(ref.tail_logprob), atol=1e-5)


def test_padding_and_batching_do_not_change_scores(backend):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, backend.vocab_size, n).astype(np.int32) for n in (5, 40, 12)]
    together = backend.score(seqs, 4)
    alone = [backend.score([s], 4) for s in seqs]
    for b, part in enumerate(alone):
        rows = slice(together.offsets[b], together.offsets[b + 1])
        np.testing.assert_array_equal(together.topk_ids[rows], part.topk_ids)
        np.testing.assert_allclose(together.topk_logprobs[rows], part.topk_logprobs, atol=1e-4)


def test_full_vocab_has_empty_tail_and_errors(backend):
    sig = backend.score([np.arange(6, dtype=np.int32)], backend.vocab_size)
    assert np.isneginf(sig.tail_logprob).all()
    with pytest.raises(ValueError, match="top_k"):
        backend.score([np.arange(6)], backend.vocab_size + 1)
    with pytest.raises(ValueError, match="at least 2"):
        backend.score([np.arange(1)], 3)
    with pytest.raises(ValueError, match="max_model_len"):
        backend.score([np.zeros(backend.max_model_len + 1, np.int32)], 3)


def test_generate_produces_requested_tokens(backend):
    gen = backend.generate([np.arange(3, dtype=np.int32), np.arange(5, dtype=np.int32)], max_new_tokens=6)
    assert [len(t) for t in gen.tokens] == [6, 6] and gen.tokens_per_second > 0


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
