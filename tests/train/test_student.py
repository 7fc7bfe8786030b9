"""The student at scale (raykd/train/student.py, parallel.py, checkpoint.py): normalisation by the global
batch's tokens, DDP == FSDP, accumulation == a bigger batch, resume == an uninterrupted run, HF export.

    pytest tests/train/test_student.py                 # fast: the math, checkpoints and export in-process
    pytest -m slow tests/train/test_student.py         # the 20-step equivalences (2 gloo processes), ~2-3 min

Tolerances: 1e-5 on the weights after 20 fp32 AdamW steps at lr 1e-3. Sums of the same gradients in another
order differ by float32 rounding; Adam divides by sqrt(v), so on elements whose gradient is a near-cancelling
sum that rounding moves the update by a fraction of lr: a few 1e-6 here (1.2e-5 at lr 3e-3).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from .student_runs import run_spmd, train_case, train_cases


def _tiny_objective_setup(b=8, width=9, vocab=97):
    from transformers import LlamaConfig, LlamaForCausalLM

    from raykd.config import DistillConfig
    from raykd.loss.objective import Objective
    from raykd.signals import signals_from_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                                         intermediate_size=64, tie_word_embeddings=False)).double()
    cfg = DistillConfig.model_validate({"loss": {"alpha": 0.6, "divergence": "jsd"}, "train": {"max_steps": 10}})
    ids = torch.randint(0, vocab, (b, width))
    t_lp = torch.log_softmax(torch.randn(b * (width - 1), vocab, dtype=torch.float64) * 3, -1).numpy()
    offsets = np.arange(0, b * (width - 1) + 1, width - 1)
    signals = signals_from_logprobs(t_lp, ids[:, 1:].reshape(-1).numpy(), offsets, 20)
    loss_mask = (np.arange(width)[None, :] > np.arange(b)[:, None] % (width - 1)).astype(np.float32)  # differs per row
    return model, Objective(cfg, model.config, use_teacher=True), ids, signals, loss_mask


def test_micro_batch_losses_add_up_to_the_global_token_mean():
    """sum over micro-batches of (masked sum / N) == the whole batch's masked mean, values and gradients; the
    mean of micro-batch means (what dividing by each micro-batch's own tokens gives) is another number."""
    model, objective, ids, signals, loss_mask = _tiny_objective_setup()
    b = ids.shape[0]

    def grads(parts: int, denominator: bool):
        model.zero_grad()
        total = objective.count_rows(tuple(ids.shape), loss_mask)
        value = 0.0
        for rows in np.split(np.arange(b), parts):
            sig = signals.take_sequences(rows.tolist())
            loss, metrics = objective.compute_loss(0, model(input_ids=ids[rows]), ids[rows], sig,
                                                   loss_mask=loss_mask[rows], denominator=total if denominator else None)
            (loss if denominator else loss / parts).backward()
            value += metrics["loss"] if denominator else metrics["loss"] / parts
        return value, [p.grad.clone() for p in model.parameters()]

    ref_value, ref = grads(1, denominator=False)  # one batch, its own masked mean
    value, got = grads(4, denominator=True)
    assert value == pytest.approx(ref_value, rel=1e-9)
    for a, g in zip(got, ref):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-12)
    naive_value, naive = grads(4, denominator=False)  # mean of the micro-batches' means
    assert abs(naive_value - ref_value) > 1e-3 * abs(ref_value)
    assert max(float((a - g).abs().max()) for a, g in zip(naive, ref)) > 1e-4


def test_count_rows_and_merge_metrics():
    from raykd.train.student import merge_metrics

    _, objective, ids, _, loss_mask = _tiny_objective_setup()
    assert objective.count_rows((8, 9)) == 64
    assert objective.count_rows((8, 9), loss_mask) == float(loss_mask[:, 1:].sum())
    merged = merge_metrics([{"loss": 1.0, "loss_hard": 0.5, "dyn_temperature_mean": 2.0},
                            {"loss": 3.0, "loss_hard": 1.5, "dyn_temperature_mean": 4.0}])
    assert merged == {"loss": 4.0, "loss_hard": 2.0, "dyn_temperature_mean": 3.0}  # shares add, the rest averages


def test_micro_batches_split_each_step_of_the_bigger_batch():
    from raykd.train.loop import global_batch_indices, micro_batch_indices

    big = global_batch_indices(40, 8, 2, 1, seed=3, start_step=2)
    small = micro_batch_indices(40, 2, 4, 2, 1, seed=3, start_step=2)
    for _ in range(3):
        np.testing.assert_array_equal(next(big), np.concatenate([next(small) for _ in range(4)]))


def _placed_tiny(tmp_path, strategy="ddp"):
    from types import SimpleNamespace

    from transformers import LlamaConfig

    from raykd.train.parallel import place_student

    config = LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=1,
                         intermediate_size=64, tie_word_embeddings=False)
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in LlamaForCausalLM(config).state_dict().items()}
    tc = SimpleNamespace(strategy=strategy, precision="fp32", activation_checkpointing=False)
    placed = place_student(config, state, tc, torch.device("cpu"), 0, 1, lambda *a, **k: None)
    optimizer = torch.optim.AdamW(placed.student.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return placed, optimizer, scheduler, state


def test_checkpoint_refuses_another_global_batch_or_strategy(tmp_path):
    from raykd.train.checkpoint import load_checkpoint, save_checkpoint

    placed, opt, sched, _ = _placed_tiny(tmp_path)
    save_checkpoint(tmp_path, placed, opt, sched, 7, global_batch=32)
    assert json.loads((tmp_path / "state.json").read_text()) == {"step": 7, "strategy": "ddp", "global_batch": 32}
    assert load_checkpoint(tmp_path, placed, opt, sched, global_batch=32) == 7
    with pytest.raises(ValueError, match="global batch of 32 sequences per step, this run has 64"):
        load_checkpoint(tmp_path, placed, opt, sched, global_batch=64)
    placed.strategy = "fsdp"
    with pytest.raises(ValueError, match="written with train.strategy=ddp"):
        load_checkpoint(tmp_path, placed, opt, sched, global_batch=32)


def test_hf_export_is_split_into_shards_with_an_index(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raykd.train.checkpoint import WEIGHTS_INDEX, write_hf_weights
    from raykd.train.fit import export_student

    placed, *_ = _placed_tiny(tmp_path)
    state = placed.full_state_dict()
    ckpt = tmp_path / "ckpt"
    names = write_hf_weights(state, ckpt, "20KB")  # embeddings alone are 12 KB: several shards
    placed.student.config.save_pretrained(ckpt)
    index = json.loads((ckpt / WEIGHTS_INDEX).read_text())
    assert len(names) > 2 and set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(names)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in state.values())
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    from tokenizers import Tokenizer, models

    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))).save_pretrained(tok_dir)
    out = export_student(ckpt, AutoTokenizer.from_pretrained(tok_dir), tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- 20-step runs
@pytest.mark.slow
def test_accumulation_and_workers_change_nothing_but_memory(tiny_teacher):
    """grad_accum 4 x micro-batch 2 == micro-batch 8 == 2 workers x 4 (masks differing per row); activation
    checkpointing changes nothing at all."""
    one = train_case(tiny_teacher, batch_size=8, lr=1e-3)
    accum = train_case(tiny_teacher, batch_size=2, grad_accum_steps=4, lr=1e-3)
    for k, v in one["student"].items():
        np.testing.assert_allclose(accum["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(accum["losses"], one["losses"], rtol=1e-5)
    ac = train_case(tiny_teacher, batch_size=8, lr=1e-3, steps=5, activation_checkpointing=True)
    plain = train_case(tiny_teacher, batch_size=8, lr=1e-3, steps=5)
    for k, v in plain["student"].items():
        np.testing.assert_array_equal(ac["student"][k], v, err_msg=k)
    ddp2, fsdp2 = run_spmd(2, train_cases, tiny_teacher, [dict(batch_size=4, lr=1e-3, strategy=s) for s in ("ddp", "fsdp")])[0]
    for k, v in one["student"].items():
        np.testing.assert_allclose(ddp2["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(fsdp2["student"][k], v, rtol=0, atol=1e-5, err_msg=k)


FEATURES = {"hidden": {"weight": 0.1, "layer_map": {1: 1, 2: 2}}, "adversarial": {"weight": 0.05, "warmup_steps": 2}}


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_exactly(tiny_teacher):
    """2 gloo workers: FSDP == DDP after 20 steps (weights within 1e-5), with the learnable projections and the
    discriminator too; an FSDP run stopped at step 10 and resumed from its sharded checkpoint == uninterrupted;
    FSDP + bf16 + accumulation + activation checkpointing trains."""
    cases = [dict(batch_size=4, lr=1e-3, strategy="ddp"), dict(batch_size=4, lr=1e-3, strategy="fsdp"),
             dict(batch_size=4, lr=1e-3, strategy="fsdp", resume_at=10),
             dict(batch_size=4, lr=1e-3, strategy="ddp", loss=FEATURES, steps=8),
             dict(batch_size=4, lr=1e-3, strategy="fsdp", loss=FEATURES, steps=8),
             dict(batch_size=2, grad_accum_steps=2, lr=1e-3, strategy="fsdp", precision="bf16",
                  activation_checkpointing=True),
             dict(batch_size=4, lr=1e-3, strategy="fsdp", loss_chunk_size=40)]  # lm_head used inside the root
    ddp, fsdp, resumed, ddp_f, fsdp_f, bf16, chunked = run_spmd(2, train_cases, tiny_teacher, cases)[0]
    for k, v in ddp["student"].items():
        np.testing.assert_allclose(fsdp["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(chunked["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
        np.testing.assert_array_equal(resumed["student"][k], fsdp["student"][k], err_msg=k)
    assert fsdp["val_loss"] == pytest.approx(ddp["val_loss"], rel=1e-5)
    assert resumed["losses"] == fsdp["losses"]
    for k, v in ddp_f["student"].items():
        np.testing.assert_allclose(fsdp_f["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
    for part in ("projector", "adversary"):
        for name, t in ddp_f["objective"][part].items():
            torch.testing.assert_close(fsdp_f["objective"][part][name], t, rtol=0, atol=1e-5)
    assert all(v.dtype == np.float32 for v in bf16["student"].values())  # fp32 master weights under bf16
    assert np.isfinite(bf16["losses"]).all() and np.mean(bf16["losses"][-5:]) < np.mean(bf16["losses"][:5])
