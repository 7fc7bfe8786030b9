"""The student at scale (raykd/train/student.py, parallel.py, checkpoint.py): normalisation by the global
batch's tokens, DDP == FSDP, accumulation == a bigger batch, resume == an uninterrupted run, HF export.

    pytest tests/train/test_student.py                 # the math, checkpoints and export in-process

The 20-step equivalences (DDP == FSDP, accumulation == a bigger batch, resume == uninterrupted; 2 gloo
processes) are slow tests: tests/e2e/test_student_equivalence.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch



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
                                                   token_mask=loss_mask[rows], denominator=total if denominator else None)
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
    from raykd.data.order import batch_indices as global_batch_indices, micro_batch_indices

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
