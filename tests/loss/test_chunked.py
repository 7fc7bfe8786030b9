"""Chunked (fused linear) KD losses == raykd.loss.kd on the full logits: values and gradients."""

from __future__ import annotations

import pytest
import torch

from raykd.loss import kd
from raykd.loss.chunked import (
    chunked_linear_loss,
    distill_loss_chunked,
    kl_full_chunked,
    kl_topk_chunked,
)

N, H, V, K = 37, 16, 211, 7


def _inputs(dtype=torch.float64, seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, H, generator=g, dtype=dtype)).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=dtype) * 0.7).requires_grad_()
    t_hidden = torch.randn(n, H + 3, generator=g, dtype=dtype)
    t_weight = torch.randn(V, H + 3, generator=g, dtype=dtype) * 0.7
    t_lp = torch.log_softmax(t_hidden @ t_weight.T, -1)
    top_lp, top_ids = t_lp.topk(K, -1)
    rest = t_lp.scatter(-1, top_ids, float("-inf"))
    tail = torch.logsumexp(rest, -1)
    labels = torch.randint(0, V, (n,), generator=g)
    mask = (torch.rand(n, generator=g) > 0.3).to(dtype)
    return hidden, weight, t_hidden, t_weight, top_ids, top_lp.float(), tail.float(), labels, mask


def _grads(loss, *params):
    return torch.autograd.grad(loss, params)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    scale = b.abs().max().clamp_min(1e-30)
    assert ((a - b).abs().max() / scale).item() <= rel, ((a - b).abs().max().item(), scale.item())


def _rel(dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 16, 1000])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_matches_unchunked(dtype, chunk, tail, T):
    h, w, _, _, ids, lp, tl, _, mask = _inputs(dtype)
    ref = kd.kl_topk(h @ w.T, ids, lp, tl, T, mask, tail)
    got = kl_topk_chunked(h, w, ids, lp, tl, T, mask, tail, chunk_size=chunk)
    _close(got.detach(), ref.detach(), _rel(dtype))
    for a, b in zip(_grads(got, h, w), _grads(ref, h, w)):
        _close(a, b, _rel(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [3, 37])
@pytest.mark.parametrize("T", [0.5, 2.0])
def test_full_vocab_fused_teacher_matches_kl_full_and_f_kl_div(dtype, chunk, T):
    h, w, th, tw, *_ = _inputs(dtype)
    ref = kd.kl_full(h @ w.T, th @ tw.T, T)
    # The "naive" of the benchmark: torch's own kl_div on full logits.
    naive = torch.nn.functional.kl_div(
        torch.log_softmax(h @ w.T / T, -1), torch.log_softmax(th @ tw.T / T, -1), reduction="batchmean", log_target=True
    ) * T**2
    got = kl_full_chunked(h, w, th, tw, T, chunk_size=chunk)
    _close(got.detach(), ref.detach(), _rel(dtype))
    _close(naive.detach(), ref.detach(), _rel(dtype))
    for a, b in zip(_grads(got, h, w), _grads(naive, h, w)):
        _close(a, b, _rel(dtype))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("masked", [False, True])
def test_distill_loss_matches_with_aux_terms(alpha, masked):
    h, w, _, _, ids, lp, tl, labels, mask = _inputs(torch.float32, seed=3)
    m = mask if masked else None
    kw = dict(alpha=alpha, temperature=2.0, topk_ids=ids, topk_logprobs=lp, tail_logprob=tl, tail="bucket")
    ref = kd.distill_loss(h @ w.T, labels, mask=m, **kw)
    got = distill_loss_chunked(h, w, labels, mask=m, chunk_size=8, **kw)
    for a, b in zip(got, ref):
        _close(a.detach(), b.detach(), 1e-5)
    assert not got[1].requires_grad and not got[2].requires_grad
    for a, b in zip(_grads(got[0], h, w), _grads(ref[0], h, w)):
        _close(a, b, 1e-5)


def test_all_masked_gives_zero_loss_and_zero_grad():
    h, w, _, _, ids, lp, tl, labels, _ = _inputs(torch.float32)
    mask = torch.zeros(N)
    loss, soft, hard = distill_loss_chunked(h, w, labels, mask=mask, chunk_size=8, alpha=0.5, temperature=1.0,
                                            topk_ids=ids, topk_logprobs=lp, tail_logprob=tl)
    assert loss.item() == soft.item() == hard.item() == 0.0
    gh, gw = _grads(loss, h, w)
    assert gh.abs().max() == 0 and gw.abs().max() == 0


def test_gradient_reaches_the_model_through_hidden_states():
    """The chunked loss sits on top of a module: upstream parameters get the same gradient."""
    torch.manual_seed(0)
    body = torch.nn.Linear(H, H).double()
    head = torch.nn.Linear(H, V, bias=False).double()
    x = torch.randn(N, H, dtype=torch.float64)
    _, _, _, _, ids, lp, tl, labels, mask = _inputs()
    ref = kd.distill_loss(head(body(x)), labels, alpha=0.5, temperature=2.0, mask=mask,
                              topk_ids=ids, topk_logprobs=lp, tail_logprob=tl)[0]
    ref_grads = torch.autograd.grad(ref, [body.weight, body.bias, head.weight])
    got = distill_loss_chunked(body(x), head.weight, labels, alpha=0.5, temperature=2.0, mask=mask,
                               topk_ids=ids, topk_logprobs=lp, tail_logprob=tl, chunk_size=10)[0]
    got.backward()
    for a, b in zip([body.weight.grad, body.bias.grad, head.weight.grad], ref_grads):
        _close(a, b, 1e-10)


def test_custom_row_loss_and_argument_checks():
    h, w, *_ = _inputs(torch.float64)
    target = torch.randint(0, V, (N,))

    def ce(logits, m, target):
        return kd.hard_ce(logits, target, m)

    got = chunked_linear_loss(ce, h, w, None, 6, target=target)[0]
    _close(got.detach(), kd.hard_ce(h @ w.T, target).detach(), 1e-12)
    with pytest.raises(ValueError, match="rows"):
        chunked_linear_loss(ce, h, w, None, 6, target=target[:-1])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_linear_loss(ce, h, w, None, 0, target=target)


@pytest.mark.parametrize("chunk_size,dynamic,masked", [(1, False, False), (20, False, False), (20, True, False),
                                                      (1, False, True), (9, False, True), (20, True, True)])
def test_objective_chunked_over_sequences_matches_full_logits(chunk_size, dynamic, masked):
    """The training loop's chunked path (raykd/train/chunked_objective.py) == Objective.compute_loss, also with
    loss masks that keep a different number of rows in every sequence (each chunk divides by the whole's count)."""
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    from raykd.config import DistillConfig
    from raykd.loss.objective import Objective
    from raykd.signals import signals_from_logprobs
    from raykd.train.chunked_objective import CHUNKED_FORWARD_KWARGS, chunked_objective_loss

    torch.manual_seed(0)
    b, width, vocab = 5, 9, 97
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                                         intermediate_size=64, tie_word_embeddings=False)).double()
    loss_cfg = {"divergence": "jsd", "alpha": 0.6}
    if dynamic:
        loss_cfg["dynamic_temperature"] = {"rule": "entropy"}
    cfg = DistillConfig.model_validate({"loss": loss_cfg, "train": {"max_steps": 10}})
    ids = torch.randint(0, vocab, (b, width))
    t_lp = torch.log_softmax(torch.randn(b * (width - 1), vocab, dtype=torch.float64) * 3, -1).numpy()
    offsets = np.arange(0, b * (width - 1) + 1, width - 1)
    signals = signals_from_logprobs(t_lp, ids[:, 1:].reshape(-1).numpy(), offsets, 20)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, (b, width)).astype(np.float32)
    mask = None
    if masked:  # the data's loss mask: prompts of different lengths, one sequence with nothing trained
        mask = (np.arange(width)[None, :] >= np.array([[2], [5], [width], [1], [7]])).astype(np.uint8)

    def run(chunked: bool):
        model.zero_grad()
        objective = Objective(cfg, model.config, use_teacher=True)
        if chunked:
            out = model(input_ids=ids, **CHUNKED_FORWARD_KWARGS)
            assert out.logits.numel() == 0
            loss, metrics = chunked_objective_loss(objective, model.lm_head.weight, 3, out, ids, signals, weights,
                                                   chunk_size, mask)
        else:
            loss, metrics = objective.compute_loss(3, model(input_ids=ids), ids, signals, weights, mask)
        loss.backward()
        assert len(objective.step_values) == 1
        return loss.item(), metrics, [p.grad.clone() for p in model.parameters()]

    ref_loss, ref_metrics, ref_grads = run(False)
    got_loss, got_metrics, got_grads = run(True)
    # The objective computes in float32 (CE upcasts with .float()): agreement to float32 precision.
    assert got_loss == pytest.approx(ref_loss, rel=1e-6)
    for k in ("loss", "loss_soft", "loss_hard"):
        assert got_metrics[k] == pytest.approx(ref_metrics[k], rel=1e-6)
    for a, g in zip(got_grads, ref_grads):
        _close(a, g, 1e-5)
