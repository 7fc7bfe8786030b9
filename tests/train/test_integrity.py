"""Faults in training without a cluster: checkpoint and export checksums (raykd/train/integrity.py; a damaged
latest checkpoint is found on resume, said in one line, and the previous one used) and the trainer's restart
wiring (train.max_failures). The restart itself: tests/e2e/test_faults.py.

    pytest tests/train/test_integrity.py
"""

from __future__ import annotations

import json

import pytest
import torch

from raykd.train.checkpoint import load_checkpoint, save_checkpoint
from raykd.train.integrity import checksum_problem, whole_checkpoint, write_checksums

from .test_student import _placed_tiny


def _two_checkpoints(tmp_path):
    """Ray Train's layout: <storage>/<run>/checkpoint_<n>, the student trained a little between the two."""
    placed, opt, sched, _ = _placed_tiny(tmp_path)
    run = tmp_path / "runs" / "r"
    dirs = []
    for i, step in enumerate((10, 20)):
        with torch.no_grad():
            for p in placed.student.parameters():
                p.add_(0.01 * (i + 1))
        dirs.append(run / f"checkpoint_00000{i}")
        save_checkpoint(dirs[-1], placed, opt, sched, step, global_batch=32)
        write_checksums(dirs[-1])  # as StudentTrainer.save does after it (rank 0 of DDP: the only writer)
    return placed, opt, sched, dirs


def test_a_truncated_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    placed, opt, sched, (first, latest) = _two_checkpoints(tmp_path)
    said: list[str] = []
    assert whole_checkpoint(latest, said.append) == latest and said == []
    load_checkpoint(first, placed, opt, sched, global_batch=32)
    weights_at_10 = {k: v.clone() for k, v in placed.student.state_dict().items()}
    with torch.no_grad():
        for p in placed.student.parameters():
            p.add_(1.0)  # the state the restore must replace

    weights = latest / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # the disk filled during the copy
    chosen = whole_checkpoint(latest, said.append)
    assert chosen == first
    assert said == [f"checkpoint checkpoint_000001 is damaged (model.safetensors has {size // 2} bytes, {size} were "
                    "written); resuming from the previous one, checkpoint_000000 (step 10)"]
    assert load_checkpoint(chosen, placed, opt, sched, global_batch=32) == 10
    assert all(torch.equal(v, weights_at_10[k]) for k, v in placed.student.state_dict().items())

    optimizer = latest / "optimizer.pt"
    blob = bytearray(optimizer.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, one bit pattern changed
    (latest / "model.safetensors").unlink()
    assert checksum_problem(latest) == "model.safetensors is missing"
    optimizer.write_bytes(bytes(blob))
    (first / "optimizer.pt").write_bytes(bytes(blob))
    assert checksum_problem(first) == "optimizer.pt differs from what was written (sha256)"
    with pytest.raises(RuntimeError, match=r"checkpoint_000001 is damaged \(model.safetensors is missing\) and no "
                                           "earlier whole checkpoint"):
        whole_checkpoint(latest, said.append)


def test_every_writing_rank_lists_its_files(tmp_path):
    """FSDP: each rank's files arrive in one directory; a rank's list that never arrived makes it incomplete."""
    d = tmp_path / "ckpt"
    (d / "dcp").mkdir(parents=True)
    (d / "dcp" / "__0_0.distcp").write_bytes(b"rank0")
    (d / "state.json").write_text(json.dumps({"step": 4}))
    write_checksums(d, rank=0, writers=2)
    assert checksum_problem(d) == "checksums.rank1.json is missing"
    (d / "dcp" / "__1_0.distcp").write_bytes(b"rank1")
    rank1 = tmp_path / "rank1"  # rank 1 lists only its own files
    (rank1 / "dcp").mkdir(parents=True)
    (rank1 / "dcp" / "__1_0.distcp").write_bytes(b"rank1")
    (d / "checksums.rank1.json").write_text(write_checksums(rank1, rank=1, writers=2).read_text())
    assert checksum_problem(d) is None
    for f in d.glob("checksums.*"):
        f.unlink()
    assert checksum_problem(d) is None  # written before raykd wrote checksums: used as it is


def test_the_exported_student_carries_its_checksums(tmp_path, tiny_teacher):
    from transformers import AutoTokenizer

    from raykd.train.fit import export_student

    placed, opt, sched, (_, latest) = _two_checkpoints(tmp_path)
    out = export_student(latest, AutoTokenizer.from_pretrained(tiny_teacher), tmp_path / "student")
    listed = json.loads((out / "checksums.rank0.json").read_text())["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(listed) and checksum_problem(out) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".student")]  # no temporary left beside it


def test_the_trainer_restarts_lost_workers_and_carries_the_batch_trace(monkeypatch):
    """make_trainer wires train.max_failures into Ray Train's FailureConfig and the driver's RAYKD_BATCH_TRACE into
    the loop config the workers get (no cluster: the TorchTrainer is only built)."""
    from types import SimpleNamespace

    import numpy as np

    from raykd.config import DistillConfig
    from raykd.train.fit import make_trainer
    from raykd.train.loop_config import LoopConfig

    monkeypatch.setenv("RAYKD_BATCH_TRACE", "/tmp/trace-dir")
    data = SimpleNamespace(n_train=64, seq_len=16, chunks=[], offsets=np.array([0, 64]))
    for failures in (3, 0):
        cfg = DistillConfig.model_validate({"train": {"max_failures": failures, "max_steps": 4}})
        trainer = make_trainer(cfg, "run", "/tmp/nowhere", LoopConfig(cfg, student_ref=None), data)
        assert trainer.run_config.failure_config.max_failures == failures
        assert LoopConfig.from_train_loop_config(trainer.train_loop_config).batch_trace == "/tmp/trace-dir"
    assert DistillConfig().train.max_failures == 3  # on by default


def test_a_full_disk_fails_the_checkpoint_loudly_and_keeps_the_previous_one(tmp_path):
    """The disk fills while step 30's checkpoint is written. RLIMIT_FSIZE stands in for the full disk (no mount
    needed): every writer (safetensors, torch.save, json) gets a short write and an error from the OS, as with
    ENOSPC. The save fails in one line naming the step; step 20's checkpoint, written before, stays whole and is
    the one a resume continues from (raykd/train/batches.py resume_point)."""
    import resource
    import signal
    from types import SimpleNamespace

    from raykd.train.batches import resume_point
    from raykd.train.checkpoint import checkpoint_step
    from raykd.train.student import StudentTrainer

    placed, opt, sched, (first, latest) = _two_checkpoints(tmp_path)
    trainer = object.__new__(StudentTrainer)  # the save path only: no data, no teacher
    trainer.placed, trainer.optimizer, trainer.scheduler, trainer.objective = placed, opt, sched, None
    trainer.world, trainer.tc = 1, SimpleNamespace(export_shard_size="5GB", batch_size=32, grad_accum_steps=1)
    size = (latest / "model.safetensors").stat().st_size
    target = latest.parent / "checkpoint_000002"

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of the signal's core dump
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        with pytest.raises(RuntimeError) as failed:
            trainer.save(target, 30)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(failed.value)
    assert message.startswith(f"the checkpoint of step 30 could not be written to {target} (")
    assert message.endswith("); the previous checkpoint is kept") and "\n" not in message
    written = target / "model.safetensors"
    assert not written.exists() or written.stat().st_size < size  # the write really was cut short
    assert checkpoint_step(target) is None and not list(target.glob("checksums.*"))  # never taken for a checkpoint
    assert checksum_problem(latest) is None and whole_checkpoint(latest, print) == latest
    assert resume_point(latest.parent.parent, latest.parent.name) == (10, str(latest))
