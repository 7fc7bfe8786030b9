"""The student's equivalences over 20 fp32 steps on the same seed and rows (raykd/train/student.py, parallel.py,
checkpoint.py): grad_accum_steps=4 x micro-batch 2 == micro-batch 8 == 2 workers x 4, with loss masks that
differ per row, and with the learnable projections and discriminator (their gradients averaged over
workers); FSDP == DDP on 2 gloo processes (also with the learnable projections and the discriminator,
and with the chunked loss); an FSDP run stopped at step 10 and resumed from its sharded checkpoint == an
uninterrupted one. No Ray: tests/train/student_runs.py runs the workers' code on local processes.

    pytest -m slow tests/e2e/test_student_equivalence.py

Tolerances: 1e-5 on the weights after 20 fp32 AdamW steps at lr 1e-3. Sums of the same gradients in another
order differ by float32 rounding; Adam divides by sqrt(v), so on elements whose gradient is a near-cancelling
sum that rounding moves the update by a fraction of lr: a few 1e-6 here (1.2e-5 at lr 3e-3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.train.student_runs import run_spmd, train_case, train_cases

pytestmark = pytest.mark.slow


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
    # The learnable loss parts (hidden-state projections, discriminator) live outside DDP/FSDP: their gradients
    # are averaged over the workers by the objective. 2 workers x 4 == 1 worker x 8 for them too, with rows of
    # equal weight (the discriminator's step is a mean over each worker's rows: equal only when the workers have
    # as many unmasked rows, docs/methods.md).
    one_f = train_case(tiny_teacher, batch_size=8, lr=1e-3, loss=FEATURES, steps=8, masks=False)
    cases = [dict(batch_size=4, lr=1e-3, strategy=s) for s in ("ddp", "fsdp")]
    cases.append(dict(batch_size=4, lr=1e-3, strategy="ddp", loss=FEATURES, steps=8, masks=False))
    ddp2, fsdp2, ddp2_f = run_spmd(2, train_cases, tiny_teacher, cases)[0]
    for k, v in one["student"].items():
        np.testing.assert_allclose(ddp2["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(fsdp2["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
    for k, v in one_f["student"].items():
        np.testing.assert_allclose(ddp2_f["student"][k], v, rtol=0, atol=1e-5, err_msg=k)
    for part in ("projector", "adversary"):
        assert one_f["objective"][part]
        for name, t in one_f["objective"][part].items():
            torch.testing.assert_close(ddp2_f["objective"][part][name], t, rtol=0, atol=1e-5)


FEATURES = {"hidden": {"weight": 0.1, "layer_map": {1: 1, 2: 2}}, "adversarial": {"weight": 0.05, "warmup_steps": 2}}


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
