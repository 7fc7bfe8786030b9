"""The student's Train checkpoint: what a worker writes every `checkpoint_every` steps and resumes from.

    save_checkpoint(directory, model, optimizer, scheduler, step, objective)   # rank 0, then ray.train.report
    step = load_checkpoint(directory, model, optimizer, scheduler, objective)  # every worker on resume
    checkpoint_step(directory)                                                 # the step, without torch

A checkpoint directory holds `model.safetensors` + `config.json` (a loadable HF student), `optimizer.pt`
(optimizer and LR scheduler, loaded with weights_only=True), `objective.pt` when the loss has learnable
parts (raykd/loss/objective.py: projections, discriminator, temperature histogram) and `state.json` (step).
"""

from __future__ import annotations

import json
from pathlib import Path

STATE_FILE = "state.json"
OBJECTIVE_FILE = "objective.pt"


def save_checkpoint(directory: Path, model, optimizer, scheduler, step: int, objective=None) -> None:
    import torch

    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / "optimizer.pt")
    if objective is not None:
        torch.save(objective.state_dict(), directory / OBJECTIVE_FILE)
    (directory / STATE_FILE).write_text(json.dumps({"step": step}))


def load_checkpoint(directory: Path, model, optimizer, scheduler, objective=None) -> int:
    import torch
    from safetensors.torch import load_model

    directory = Path(directory)
    load_model(model, directory / "model.safetensors")
    state = torch.load(directory / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if objective is not None and (directory / OBJECTIVE_FILE).is_file():
        objective.load_state_dict(torch.load(directory / OBJECTIVE_FILE, weights_only=True))
    step = checkpoint_step(directory)
    if step is None:
        raise ValueError(f"checkpoint {directory} has no readable {STATE_FILE}")
    return step


def checkpoint_step(directory: Path | str | None) -> int | None:
    """The step a checkpoint directory was saved at; None when there is none (or it is unreadable)."""
    if directory is None:
        return None
    try:
        return int(json.loads((Path(directory) / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
