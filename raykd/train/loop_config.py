"""What the driver hands each Ray Train worker: the typed contract between raykd/train/fit.py (and sweep
trials, raykd/sweep/trial.py) and the worker loop (raykd/train/loop.py).

    loop = LoopConfig(cfg, student_ref=ref, run_id=run_id, tracking_uri=uri)
    TorchTrainer(train_loop_per_worker, train_loop_config=loop.to_train_loop_config(), datasets=..., ...)
    loop = LoopConfig.from_train_loop_config(config)              # in the worker

Ray Train records the loop config of a run as a plain dict, so it crosses as one (the DistillConfig dumped),
and is checked back into this dataclass on the worker: a missing or unknown key fails at once. The training
data does not travel here: each worker reads it through `ray.train.get_dataset_shard` (raykd/train/batches.py),
in the step windows `data_windows` that `make_trainer` (raykd/train/fit.py) planned.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from raykd.config import DistillConfig


@dataclass(frozen=True)
class LoopConfig:
    cfg: DistillConfig  # the run's resolved config
    student_ref: Any  # ObjectRef of (HF config, state dict): every worker starts from the same weights
    run_id: str | None = None  # MLflow run rank 0 logs into (None: no logging)
    tracking_uri: str | None = None
    alpha_only_hard: bool = False  # train on hard labels only, without the teacher (the baseline)
    val_ref: Any = None  # sweeps: ObjectRef of held-out TokenBlocks (raykd/data/blocks.py); reports carry val_loss
    init_checkpoint: str | None = None  # sweeps: start from this directory when Ray Train has no checkpoint
    progress: Any = None  # ray.util.queue.Queue the driver draws rank 0's progress from (raykd/train/progress.py)
    data_windows: tuple = ()  # step ranges (s0, s1) of the datasets train.0, train.1, ... (raykd/train/batches.py)
    batch_trace: str | None = None  # the driver's RAYKD_BATCH_TRACE: workers log each step's blocks there
    block_routes: Any = None  # teachers.routing: ObjectRef of (n_blocks,) int8, each block's teacher

    def to_train_loop_config(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "cfg": self.cfg.model_dump()}

    @classmethod
    def from_train_loop_config(cls, config: dict[str, Any]) -> "LoopConfig":
        windows = tuple(tuple(w) for w in config.get("data_windows", ()))
        return cls(**{**config, "cfg": DistillConfig.model_validate(config["cfg"]), "data_windows": windows})
