"""`raykd capture`'s config (raykd/capture.py): the teacher and data sections of `raykd distill` plus where
and how the shards are written."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raykd.config.base import StrictModel
from raykd.config.distill import DataConfig
from raykd.config.teacher import TeacherConfig


class CaptureConfig(StrictModel):
    """`raykd capture`: score a dataset once with the teacher deployment (Ray Data), write Parquet shards.

    Uses the same `teacher` and `data` sections as `raykd distill`, so the same YAML values yield the same
    token blocks and the shards are found by training (as cache hits, or via `signals.offline_path`).
    """

    run_name: str = Field("capture", pattern=r"^[A-Za-z0-9_.-]+$", description="Names the log lines.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    top_k: int = Field(20, ge=1, description="Teacher log-probs kept per position (loss.top_k of the training).")
    split: Literal["train", "val", "all"] = Field("train", description="Which blocks to score (the distill split).")
    output_dir: str | None = Field(
        None, description="Where shards go; default: the signal cache of this teacher and top_k (pre-warms it)."
    )
    cache_dir: str | None = Field(None, description="Cache root when output_dir is null (as signals.cache_dir).")
    sequences_per_shard: int = Field(256, ge=1, description="Sequences per Parquet shard (one Ray Data batch).")
    request_sequences: int = Field(32, ge=1, description="Sequences per teacher request within a shard.")
    concurrency: int = Field(2, ge=1, description="Ray Data actors calling the teacher at once: more keeps "
                             "more replicas busy, costs memory per in-flight shard.")
    num_cpus_per_actor: float = Field(0.25, gt=0, description="CPUs reserved per capture actor (it mostly waits).")
    overwrite: bool = Field(False, description="Re-score sequences already in output_dir (default: skip them).")
