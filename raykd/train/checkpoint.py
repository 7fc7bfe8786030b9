"""The student's Train checkpoint: what the workers write every `checkpoint_every` steps and resume from.

    save_checkpoint(directory, placed, optimizer, scheduler, step, objective, global_batch=64)  # every rank
    step = load_checkpoint(directory, placed, optimizer, scheduler, objective, global_batch=64)  # every rank
    checkpoint_step(directory)                                 # the step, without torch
    write_hf_weights(state, directory, "5GB")                  # safetensors, split with an index when big

`placed` is raykd/train/parallel.py's PlacedStudent. Every directory holds `config.json` (the student's HF
config), `objective.pt` when the loss has learnable parts (raykd/loss/objective.py: projections,
discriminator, temperature histogram) and `state.json` (step, global batch, strategy: the data position is
the step times the global batch, so a resume must keep the global batch); `StudentTrainer.save` adds, last,
the sizes and sha256 of each writing rank's files (raykd/train/integrity.py: a damaged checkpoint is found on
resume and the previous one used). Then, by `train.strategy`:

  ddp   rank 0 writes the model as HF safetensors (`model.safetensors`, or shards + index past
        `train.export_shard_size`: a loadable student) and `optimizer.pt` (optimizer + LR schedule, loaded
        with weights_only=True).
  fsdp  every rank writes its own shards of the model and the optimizer state with torch.distributed.checkpoint
        (`dcp/`: `__<rank>_0.distcp` + `.metadata`; Ray Train uploads each rank's files into the same checkpoint
        directory), rank 0 the LR schedule (`scheduler.pt`). With `export` (the last step) the model is also
        gathered with `get_model_state_dict(full_state_dict=True, cpu_offload=True)`, one tensor at a time onto
        rank 0's CPU (the only full copy), and written as HF safetensors shards: raykd/train/fit.py exports
        the same files whatever the strategy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
OBJECTIVE_FILE = "objective.pt"
DCP_DIR = "dcp"
WEIGHTS_INDEX = "model.safetensors.index.json"


def parse_size(size: str) -> int:
    """'5GB' -> 5e9 bytes, '500MiB' -> 500 * 2**20 (train.export_shard_size)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([KMG])(i?)B", size.strip())
    if not m:
        raise ValueError(f"not a size like '5GB': {size!r}")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** ("KMG".index(m.group(2)) + 1))


def write_hf_weights(state: dict[str, Any], directory: Path, shard_size: str = "5GB") -> list[str]:
    """Write a state dict as HF safetensors: `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards of
    at most `shard_size` (a larger tensor gets a shard of its own) with `model.safetensors.index.json`."""
    from safetensors.torch import save_file

    limit = parse_size(shard_size)
    shards: list[dict[str, Any]] = [{}]
    used = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and used + nbytes > limit:
            shards.append({})
            used = 0
        shards[-1][name] = tensor.contiguous()
        used += nbytes
    directory.mkdir(parents=True, exist_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards):
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / WEIGHTS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                      indent=2))
    return names


def _write_config(student, directory: Path) -> None:
    config = student.config
    config.architectures = [type(student).__name__]
    config.save_pretrained(directory)
    gen = getattr(student, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(directory)


def save_checkpoint(directory: Path, placed, optimizer, scheduler, step: int, objective=None, *,
                    global_batch: int | None = None, export: bool = False, shard_size: str = "5GB") -> None:
    """Every rank calls it (FSDP writes collectively); see the module doc for what each rank writes."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    main = placed.rank == 0
    if placed.fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(placed.student, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory / DCP_DIR))
        if export:
            full = placed.full_state_dict()  # collective: every rank takes part, rank 0 receives
            if main:
                write_hf_weights(full, directory, shard_size)
            del full
        if main:
            _write_config(placed.student, directory)
            torch.save({"scheduler": scheduler.state_dict()}, directory / "scheduler.pt")
    elif main:
        placed.student.save_pretrained(directory, safe_serialization=True, max_shard_size=shard_size)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / "optimizer.pt")
    if main:
        if objective is not None:
            torch.save(objective.state_dict(), directory / OBJECTIVE_FILE)
        state = {"step": step, "strategy": placed.strategy}
        if global_batch is not None:
            state["global_batch"] = global_batch
        (directory / STATE_FILE).write_text(json.dumps(state))


def load_checkpoint(directory: Path, placed, optimizer, scheduler, objective=None, *,
                    global_batch: int | None = None) -> int:
    """Every rank: restore what save_checkpoint wrote; returns the step. Refuses a checkpoint of the other
    strategy or of another global batch (its data position would not be this run's)."""
    import torch

    directory = Path(directory)
    step = checkpoint_step(directory)
    if step is None:
        raise ValueError(f"checkpoint {directory} has no readable {STATE_FILE}")
    saved = json.loads((directory / STATE_FILE).read_text())
    written = "fsdp" if (directory / DCP_DIR).is_dir() else "ddp"
    if written != placed.strategy:
        raise ValueError(f"checkpoint {directory} was written with train.strategy={written}; this run uses "
                         f"{placed.strategy} (resume with the strategy it was trained with)")
    if global_batch is not None and saved.get("global_batch", global_batch) != global_batch:
        raise ValueError(f"checkpoint {directory} was trained with a global batch of {saved['global_batch']} sequences "
                         f"per step, this run has {global_batch} (train.batch_size x grad_accum_steps x num_workers): "
                         "its data position would not carry over")
    if placed.fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(placed.student, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))
        set_state_dict(placed.student, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True)["scheduler"])
    else:
        load_hf_weights(placed.student, directory)
        state = torch.load(directory / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    if objective is not None and (directory / OBJECTIVE_FILE).is_file():
        objective.load_state_dict(torch.load(directory / OBJECTIVE_FILE, weights_only=True))
    return step


def load_hf_weights(model, directory: Path) -> None:
    """Load `model.safetensors` or the shards of an index into an (unsharded) model, strictly."""
    from safetensors.torch import load_file, load_model

    directory = Path(directory)
    index = directory / WEIGHTS_INDEX
    if not index.is_file():
        load_model(model, directory / "model.safetensors")
        return
    state: dict[str, Any] = {}
    for fname in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(str(directory / fname)))
    missing = model.load_state_dict(state, strict=False).missing_keys
    # Tied weights (lm_head = embeddings) are written once: missing is fine when the same tensor was loaded.
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    untied = [k for k in missing if k not in params or id(params[k]) not in loaded]
    if untied:
        raise KeyError(f"checkpoint {directory} lacks {untied[:5]}")


def checkpoint_step(directory: Path | str | None) -> int | None:
    """The step a checkpoint directory was saved at; None when there is none (or it is unreadable)."""
    if directory is None:
        return None
    try:
        return int(json.loads((Path(directory) / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
