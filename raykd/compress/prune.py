"""Unstructured magnitude pruning of the decoder's linear layers (torch.nn.utils.prune).

    masks = magnitude_prune(model, 0.5)     # each decoder linear: its 50 % smallest |w| set to zero, in place
    keep_zeros(model)                       # re-attach masks from the zeros (recovery keeps them at zero)
    make_permanent(model)                   # fold the masks into the weights before saving

Each linear layer of the decoder blocks loses exactly round(sparsity x its elements) weights, the smallest
by magnitude (`prune.l1_unstructured`, per layer, so no layer is emptied); embeddings, norms and `lm_head`
stay dense, as in the magnitude baselines of Wanda and SparseGPT. The saved directory is a plain HF model
with zeros in it: the same bytes on disk and the same dense kernels at run time (the zeros only pay off with
a sparse format or kernel; docs/compression.md says so beside the numbers).
"""

from __future__ import annotations

import torch
from torch.nn.utils import prune


def decoder_linears(model) -> dict[str, torch.nn.Linear]:
    """{qualified name: module} of the linear layers inside the decoder blocks (`.layers.<i>.`)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"}


def magnitude_prune(model, sparsity: float) -> dict[str, torch.Tensor]:
    """Zero the smallest-|w| fraction `sparsity` (0 < s < 1) of every decoder linear weight; masks stay
    attached (weight = weight_orig * weight_mask) until `make_permanent`. Returns {layer name: mask}."""
    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    masks = {}
    for name, layer in decoder_linears(model).items():
        prune.l1_unstructured(layer, "weight", amount=sparsity)
        masks[name] = layer.weight_mask
    return masks


def keep_zeros(model) -> int:
    """Attach a mask of the current non-zeros to every decoder linear (a pruned model loaded from disk), so
    that training keeps the pruned weights at zero. Returns the number of masked (zero) weights."""
    zeros = 0
    for layer in decoder_linears(model).values():
        mask = (layer.weight != 0).to(layer.weight.dtype)
        zeros += int((mask == 0).sum())
        prune.custom_from_mask(layer, "weight", mask)
    return zeros


def make_permanent(model) -> None:
    """Fold attached masks into plain `weight` parameters (the state dict then has HF's names again)."""
    for layer in decoder_linears(model).values():
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")


def count_nonzero(model) -> int:
    """Non-zero parameters (tied tensors counted once, like `count_parameters`)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())
