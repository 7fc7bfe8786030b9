"""Seeded student runs for the strategy / accumulation / resume equivalence tests (tests/e2e/test_student_equivalence.py).

`train_case` trains the student of a tiny teacher for a few steps with raykd/train/student.py, exactly as a
Ray Train worker does (same rows per step: raykd/train/loop.py micro_batch_indices), with real teacher
signals (the hf backend in-process) and a loss mask that differs per row. `run_spmd` runs a function on W
local processes joined in a gloo process group: what Ray Train sets up for its workers, without Ray.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SEQ_LEN = 32
ROWS = 64


def make_config(teacher: Path, world: int, **train: Any):
    from raykd.config import DistillConfig

    loss = train.pop("loss", {})
    chunk = train.pop("loss_chunk_size", None)
    return DistillConfig.model_validate({
        "teacher": {"path": str(teacher)}, "student": {"num_layers": 2, "hidden_size": 64},
        "data": {"seq_len": SEQ_LEN}, "loss": {"alpha": 0.5, "temperature": 2.0, "top_k": 8, **loss},
        "signals": {"loss_chunk_size": chunk},
        "train": {"num_workers": world, "lr": 3e-3, "warmup_steps": 2, "max_steps": 20, **train},
    })


def data(teacher: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ROWS, SEQ_LEN) token blocks and a loss mask per row: the first 1..SEQ_LEN-2 labels of each row
    masked out (a prompt of random length), so every row trains on a different number of tokens."""
    from transformers import AutoTokenizer

    from raykd.data.corpus import generate_corpus

    tok = AutoTokenizer.from_pretrained(teacher)
    ids = np.asarray(tok(generate_corpus(30_000, seed=5)).input_ids, np.int64)[: ROWS * SEQ_LEN]
    blocks = ids.reshape(ROWS, SEQ_LEN)
    prompt = np.random.default_rng(seed).integers(1, SEQ_LEN - 1, ROWS)
    mask = (np.arange(SEQ_LEN)[None, :] > prompt[:, None]).astype(np.float32)  # (ROWS, L)
    return blocks, mask


def train_case(teacher: Path, rank: int = 0, world: int = 1, *, resume_at: int | None = None,
               masks: bool = True, steps: int = 20, **train: Any) -> dict[str, Any]:
    """Train `steps` steps; with `resume_at`, stop there, save, rebuild everything and continue from the
    checkpoint. Returns (rank 0) the student's full weights and the learnable loss parts, and the losses."""
    import torch

    from raykd.loss.objective import Objective
    from raykd.models import build_student
    from raykd.teacher.hf_backend import HFTeacherBackend
    from raykd.data.order import micro_batch_indices
    from raykd.train.student import MicroBatch, StudentTrainer

    torch.manual_seed(0)
    cfg = make_config(teacher, world, max_steps=steps, **train)
    student, _ = build_student(str(teacher), cfg.student, cfg.seed)
    state = {k: v.detach().numpy() for k, v in student.state_dict().items()}
    blocks, mask = data(teacher)
    hf = HFTeacherBackend(str(teacher), device="cpu")
    tc = cfg.train

    def build():
        objective = Objective(cfg, student.config, use_teacher=True, world=world, rank=rank)
        return StudentTrainer(cfg, student.config, state, objective, device=torch.device("cpu"), rank=rank,
                              world=world)

    trainer = build()
    rows = micro_batch_indices(ROWS, tc.batch_size, tc.grad_accum_steps, world, rank, cfg.seed, 0)
    losses = []
    with tempfile.TemporaryDirectory() as own_tmp:
        tmp = own_tmp
        if world > 1:  # one directory for all ranks: rank 0's
            import torch.distributed as dist

            shared = [own_tmp]
            dist.broadcast_object_list(shared, src=0)
            tmp = shared[0]
        for step in range(steps):
            if resume_at is not None and step == resume_at:
                ckpt = Path(tmp) / f"rank{rank}"  # each rank its own directory, as in Ray Train
                trainer.save(ckpt, step)
                if world > 1:  # rank 0 wrote state.json / config.json, every rank its DCP shard
                    dist.barrier()
                    for f in (Path(tmp) / "rank0").rglob("*"):
                        if f.is_file() and not (ckpt / f.relative_to(Path(tmp) / "rank0")).exists():
                            (ckpt / f.relative_to(Path(tmp) / "rank0")).parent.mkdir(parents=True, exist_ok=True)
                            (ckpt / f.relative_to(Path(tmp) / "rank0")).write_bytes(f.read_bytes())
                    # The other ranks' shards (Ray merges them), each read from the directory of the rank that
                    # wrote it: another rank's directory also receives copies, being written at this moment.
                    for r in range(world):
                        for f in (Path(tmp) / f"rank{r}" / "dcp").glob(f"__{r}_*.distcp"):
                            if r != rank:
                                (ckpt / "dcp" / f.name).write_bytes(f.read_bytes())
                    dist.barrier()
                trainer = build()
                assert trainer.load(ckpt) == step
            micro = []
            for _ in range(tc.grad_accum_steps):
                r = next(rows)
                ids = blocks[r]
                signals = hf.score(list(ids), cfg.loss.top_k, trainer.objective.teacher_extras())
                micro.append(MicroBatch(ids, signals, None, mask[r] if masks else None))
            losses.append(trainer.step(step, micro)["loss"])
        full = trainer.placed.full_state_dict()  # collective: also keeps rank 0's directory until all are done
    from raykd.eval.heldout import heldout_loss

    # Held-out scoring as a sweep does it (FSDP: every rank through the root's forward).
    val = heldout_loss(trainer.placed.eval_model(), blocks[-8:])[0] if rank == 0 or trainer.placed.fsdp else None
    out: dict[str, Any] = {"losses": losses, "val_loss": val}
    if rank == 0:
        out["student"] = {k: v.float().numpy() for k, v in full.items()}
        out["objective"] = {k: v for k, v in trainer.objective.state_dict().items() if k in ("projector", "adversary")}
    return out


def train_cases(teacher: Path, cases: list[dict[str, Any]], rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
    """Several `train_case`s one after the other in the same process group (one spawn for all)."""
    return [train_case(teacher, rank, world, **case) for case in cases]


# --------------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args, kwargs) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(*args, rank=rank, world=world, **kwargs)
        torch.save(_to_tensors(result), Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_spmd(world: int, fn, *args: Any, **kwargs: Any) -> list[Any]:
    """`fn(*args, rank=r, world=world, **kwargs)` on `world` processes (gloo); each rank's return value."""
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_entry, args=(world, _free_port(), out, fn, args, kwargs), nprocs=world, join=True,
                           start_method="spawn")
        return [_from_tensors(torch.load(Path(out) / f"{r}.pt", weights_only=True)) for r in range(world)]


_NDARRAY = "__ndarray__"


def _to_tensors(obj):
    """A rank's result in types torch.load(weights_only=True) reads: numpy arrays become marked tensors."""
    import torch

    if isinstance(obj, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_tensors(v) for v in obj)
    return obj


def _from_tensors(obj):
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY}:
            return obj[_NDARRAY].numpy()
        return {k: _from_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_tensors(v) for v in obj)
    return obj
