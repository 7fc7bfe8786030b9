"""Building one variant directory from the teacher, healing it, and scoring it: the body of each Ray task.

    path = build_variant(spec, teacher_path, out_dir, calibration)          # quantize / prune / factorise
    healed = recover_variant(path, spec, teacher, train_blocks, recovery, out_dir2, seed)
    rows = variant_task.remote(job)        # a Ray task: build (+ heal) + quality of both -> [Measurement json]

Every directory is written atomically (raykd/files.py) with the teacher's tokenizer beside the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raykd.files import atomic_dir


def _save(model, tokenizer, out: Path) -> Path:
    from raykd.compress.lowrank import save_lowrank

    with atomic_dir(out) as tmp:
        if getattr(model.config, "lowrank_ranks", None):
            save_lowrank(model, tmp)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def build_variant(spec, teacher_path: str, out: Path, calibration: np.ndarray, tokenizer) -> Path:
    """The variant of `spec` (raykd.config.compress *Variant) of the teacher at `teacher_path`, written to `out`."""
    import torch

    from raykd.compress.measure import load_variant

    if spec.method == "quantize":
        from raykd.compress.quantize import save_quantized

        with atomic_dir(out) as tmp:
            save_quantized(teacher_path, spec.mode, tmp)
            tokenizer.save_pretrained(tmp)
        return out
    model = load_variant(teacher_path)
    if spec.method == "magnitude_prune":
        from raykd.compress.prune import magnitude_prune, make_permanent

        magnitude_prune(model, spec.sparsity)
        make_permanent(model)
    elif spec.method == "structured_prune":
        from raykd.compress.structured import importance, prune_structured

        batches = [torch.tensor(calibration[i : i + 8], dtype=torch.long) for i in range(0, len(calibration), 8)]
        model = prune_structured(model, importance(model, batches), spec.heads, spec.mlp, spec.drop_layers)
    elif spec.method == "low_rank":
        from raykd.compress.lowrank import factorise, ranks_for

        factorise(model, ranks_for(model, ratio=spec.ratio, rank=spec.rank))
    else:
        raise ValueError(f"unknown method {spec.method}")
    return _save(model, tokenizer, out)


def recover_variant(path: Path, spec, teacher, train_blocks: np.ndarray, recovery, out: Path, tokenizer,
                    seed: int) -> Path:
    """`path`'s model healed by distillation from `teacher` (raykd/compress/recover.py), written to `out`."""
    from raykd.compress.measure import load_variant
    from raykd.compress.recover import recover

    model = load_variant(path)
    recover(model, teacher, train_blocks, recovery, seed=seed, sparse=spec.method == "magnitude_prune")
    return _save(model, tokenizer, out)


@dataclass
class VariantJob:
    """Everything a variant's task needs (numpy arrays travel through the object store)."""

    name: str
    spec: Any  # *Variant model, or None: the directory exists already (a KD student or its quantized copy)
    path: str  # where the variant is (or is to be) written
    teacher_path: str
    train_blocks: np.ndarray  # (M, L) recovery data
    calibration: np.ndarray  # (C, L) structured-pruning calibration blocks
    val: np.ndarray  # (V, L) held-out blocks
    top1: np.ndarray  # (V * (L - 1),) the teacher's argmax
    items: list  # task-suite problems
    recovery: Any  # RecoveryConfig
    seed: int
    threads: int
    quantize_from: str | None = None  # a KD student's directory to quantize (spec then a QuantizeVariant)


def run_job(job: VariantJob) -> list[dict]:
    """Build (+ heal) the variant and measure the quality of each directory; [Measurement.to_json(), ...]."""
    from transformers import AutoTokenizer

    from raykd.compress.measure import load_variant, measure_quality
    from raykd.models import torch_threads

    with torch_threads(job.threads):
        tokenizer = AutoTokenizer.from_pretrained(job.teacher_path)
        t0 = time.perf_counter()
        method = "kd" if job.spec is None else job.spec.method
        if job.quantize_from is not None:
            from raykd.compress.quantize import save_quantized

            with atomic_dir(job.path) as tmp:
                save_quantized(job.quantize_from, job.spec.mode, tmp)
                tokenizer.save_pretrained(tmp)
            method = "kd+quantize"
        elif job.spec is not None:
            build_variant(job.spec, job.teacher_path, Path(job.path), job.calibration, tokenizer)
        built = time.perf_counter() - t0
        rows = [measure_quality(job.name, method, job.path, job.val, job.top1, job.items, tokenizer)]
        rows[0].seconds = built
        if job.spec is not None and job.quantize_from is None and getattr(job.spec, "recover", False):
            t0 = time.perf_counter()
            healed = Path(f"{job.path}+kd")
            recover_variant(Path(job.path), job.spec, load_variant(job.teacher_path), job.train_blocks,
                            job.recovery, healed, tokenizer, job.seed)
            rows.append(measure_quality(f"{job.name}+kd", f"{method}+recovery", healed, job.val, job.top1,
                                        job.items, tokenizer))
            rows[-1].seconds = built + time.perf_counter() - t0
    return [r.to_json() for r in rows]
