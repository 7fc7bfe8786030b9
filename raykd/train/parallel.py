"""How the student is spread over the Train workers: DDP replicas or FSDP2 shards, bf16 compute, activation
checkpointing. Worker side, torch only (no Ray): raykd/train/student.py builds on it.

    placed = place_student(s_config, s_state, tc, device, rank, world, forward_loss)
    loss, metrics = placed.module(ids, **batch)        # the student's forward and the loss, one module call
    with placed.accumulating(last=False):              # no gradient sync before the last micro-batch
        loss.backward()
    placed.clip_grad_norm(tc.grad_clip)                 # over all shards / replicas
    state = placed.full_state_dict()                    # rank 0: the whole student on the CPU; others: {}

`train.strategy`:
  ddp   every worker holds the whole student; DDP averages the gradients (all-reduce).
  fsdp  PyTorch FSDP2: `fully_shard` on each decoder layer (HF `_no_split_modules`), then on the root
        (embeddings, final norm, lm_head). Parameters, gradients and AdamW state are sharded over the workers
        (dim 0); a layer is all-gathered just before its forward and backward and freed after. The student is
        built on the meta device and each worker copies its own shards out of the initial weights (numpy
        arrays in Ray's object store, read without a copy), so no worker ever holds the whole model.
`train.precision: bf16`: FSDP `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (bf16 compute,
  float32 gradient reduce-scatter, float32 sharded parameters for AdamW); under DDP `torch.autocast(bf16)`
  around the student's forward (float32 parameters, gradients and all-reduce). The loss runs outside
  autocast on float32 upcasts (raykd/loss/).
`train.activation_checkpointing`: HF gradient checkpointing, non-reentrant, per decoder layer. Under FSDP2 a
  recomputed layer's parameters are all-gathered by FSDP's pre-backward hook (module-hook-based checkpointing
  composes with fully_shard).

`StudentWithLoss` makes the loss part of the module's forward: FSDP2 keeps the root's parameters (lm_head
included) unsharded inside it, so the chunked loss (raykd/train/chunked_objective.py) multiplies by the real
lm_head, and the root's gradients are reduce-scattered like any others.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

STRATEGIES = ("ddp", "fsdp")


class StudentWithLoss(nn.Module):
    """`forward(ids, **batch) = loss_fn(student, ids, **batch)`: the student's forward plus the loss."""

    def __init__(self, student: nn.Module, loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]]):
        super().__init__()
        self.student = student
        self.loss_fn = loss_fn  # a plain callable (raykd/train/student.py), not a submodule

    def forward(self, ids: torch.Tensor, logits_only: bool = False, **batch: Any):
        if logits_only:  # evaluation through the root (FSDP: every rank calls it together)
            return self.student(input_ids=ids)
        return self.loss_fn(self.student, ids, **batch)


class _RootLogits(nn.Module):
    """`model(input_ids=ids).logits` through the FSDP root, for raykd/eval/heldout.py."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self.root = root

    def forward(self, input_ids: torch.Tensor):
        return self.root(input_ids, logits_only=True)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: modules whose class HF lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} declares no decoder layer class (_no_split_modules): cannot shard it")
    return layers


def bf16_autocast(device: torch.device, enabled: bool):
    """The DDP bf16 context (a no-op when disabled)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@dataclass
class PlacedStudent:
    module: nn.Module  # DDP(StudentWithLoss) / fully_shard(StudentWithLoss) / StudentWithLoss (one DDP worker)
    student: nn.Module  # the HF model inside (sharded DTensor parameters under FSDP)
    strategy: str
    rank: int
    world: int

    @property
    def fsdp(self) -> bool:
        return self.strategy == "fsdp"

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Around a micro-batch's backward: gradients are synchronised only after the last one of a step."""
        if self.fsdp:
            self.module.set_requires_gradient_sync(last)
            yield
        elif not last and hasattr(self.module, "no_sync"):
            with self.module.no_sync():
                yield
        else:
            yield

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the global gradient norm (over every shard / the replica); returns the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP: a replicated DTensor
            norm = norm.full_tensor()
        return float(norm)

    def eval_model(self) -> nn.Module:
        """A causal LM view for held-out scoring: the plain student (DDP: rank 0 alone may call it) or, under
        FSDP, the root's forward (every rank must call it with the same batches: it all-gathers)."""
        return _RootLogits(self.module) if self.fsdp else self.student

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole student on the CPU, on rank 0 only (others get {}): one full copy per job, gathered tensor
        by tensor (FSDP: `get_model_state_dict(full_state_dict=True, cpu_offload=True)`)."""
        if not self.fsdp:
            return {k: v.detach().cpu() for k, v in self.student.state_dict().items()} if self.rank == 0 else {}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def place_student(
    config: Any,  # HF config of the student
    state: dict[str, np.ndarray],  # its initial weights (every worker gets the same, read-only arrays)
    train: Any,  # raykd.config.TrainConfig: strategy, precision, activation_checkpointing
    device: torch.device,
    rank: int,
    world: int,
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]],
    attn_implementation: str | None = None,  # "eager" when attention maps are distilled
) -> PlacedStudent:
    """Build the student with its initial weights and wrap it for `train.strategy` (module doc)."""
    from transformers import AutoModelForCausalLM

    if train.strategy not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {STRATEGIES}, got {train.strategy!r}")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if train.strategy == "fsdp":
        with torch.device("meta"):
            student = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
    else:
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
        student.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in state.items()})
        student.to(device)
    student.train()
    if train.activation_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapped = StudentWithLoss(student, loss_fn)
    if train.strategy == "fsdp":
        module = _fully_shard(wrapped, student, train.precision == "bf16", device, world)
        _load_local_shards(student, state, device, rank, world)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets (no second copy of them).
        module = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None,
                                         gradient_as_bucket_view=True)
    else:
        module = wrapped
    return PlacedStudent(module, student, train.strategy, rank, world)


def _fully_shard(wrapped: nn.Module, student: nn.Module, bf16: bool, device: torch.device, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    layer_mp = root_mp = MixedPrecisionPolicy()
    if bf16:
        layer_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        # The root's inputs are token ids, data weights and masks: nothing to cast (weights stay float32).
        root_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                       cast_forward_inputs=False)
    for layer in decoder_layers(student):
        fully_shard(layer, mesh=mesh, mp_policy=layer_mp)
    return fully_shard(wrapped, mesh=mesh, mp_policy=root_mp)


@torch.no_grad()
def _load_local_shards(student: nn.Module, state: dict[str, np.ndarray], device: torch.device, rank: int,
                       world: int) -> None:
    """Materialise the meta-device student on `device`, copying only this rank's dim-0 chunk of each weight."""
    student.to_empty(device=device)
    # Buffers the state dict does not carry (rotary inv_freq): recomputed by the model's own initialiser.
    for name, buf in student.named_buffers():
        if name in state:
            buf.copy_(torch.as_tensor(np.asarray(state[name])))
        else:
            owner = student.get_submodule(name.rsplit(".", 1)[0]) if "." in name else student
            student._init_weights(owner)
    for name, param in student.named_parameters():
        if name not in state:
            raise KeyError(f"the student's initial weights lack {name}")
        with warnings.catch_warnings():  # object-store arrays are read-only; only read here
            warnings.simplefilter("ignore", UserWarning)
            full = torch.from_numpy(np.asarray(state[name]))  # a view of the object-store array: no full copy
        local = param.to_local() if hasattr(param, "to_local") else param
        chunks = torch.chunk(full, world, dim=0)  # FSDP2's Shard(0): torch.chunk, last ranks may get nothing
        piece = chunks[rank] if rank < len(chunks) else full[:0]
        if tuple(local.shape) != tuple(piece.shape):
            raise RuntimeError(f"{name}: shard {tuple(local.shape)} on rank {rank} != chunk {tuple(piece.shape)}")
        local.copy_(piece)
