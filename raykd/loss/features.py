"""Intermediate-representation distillation: hidden states and attention maps. Pure torch, no I/O.

    proj = HiddenProjector({2: 4}, student_hidden=128, teacher_hidden=256)     # one W per mapped pair
    loss = hidden_loss(teacher_hidden, student_hidden, proj, mask, weights)    # sum_l MSE(h_l^t, W_l h_l^s)
    loss = attention_loss(teacher_attn, student_attn, "group", mask, weights)  # sum_l MSE(A_l^t, A_l^s)

Rows are token positions, as everywhere in raykd (`(N, ...)`, N = tokens of the batch, `mask (N,)`,
`weights (N,)` reduced as in raykd/loss/divergences.py: sum m w x / sum m).

Hidden states (TinyBERT / FitNets): `teacher_hidden (N, P, H_t)` for the P mapped pairs in layer-map
order, `student_hidden (N, P, H_s)`. Per pair l, the row term is mean_d (h^t - W_l h^s)_d^2 (MSE over the
hidden dimension); the loss is the sum over pairs. W_l is learnable (H_s -> H_t, no bias), initialised
to the embedding [I; 0] that maps the student's dimensions onto the teacher's first H_s ones: a
student derived by slicing the teacher's width (raykd/models.py) then starts at its sliced features.

Attention maps (MiniLM / TinyBERT): `teacher_attn (N, P, heads_t, K)`, `student_attn (N, P, heads_s, K)`:
row i holds query i's attention over K keys (zero past the sequence). Head counts may differ:
  * "mean":  both sides averaged over heads, one map per layer;
  * "group": teacher heads averaged in consecutive groups of heads_t / heads_s (heads_t must be a
             multiple of heads_s), then compared head by head.
The row term is the squared error summed over keys and averaged over heads, so it does not shrink as
sequences get longer (plain element-wise MSE would divide by K); the loss is the sum over pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from raykd.loss.divergences import reduce_rows


class HiddenProjector(nn.Module):
    """One learnable `W_l: H_s -> H_t` per student->teacher pair of the layer map."""

    def __init__(self, layer_map: dict[int, int], student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.pairs = [(int(s), int(t)) for s, t in layer_map.items()]
        self.student_hidden, self.teacher_hidden = student_hidden, teacher_hidden
        self.proj = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden, bias=False) for _ in self.pairs)
        with torch.no_grad():
            for lin in self.proj:
                lin.weight.copy_(torch.eye(teacher_hidden, student_hidden))

    def forward(self, student_hidden: torch.Tensor) -> torch.Tensor:
        """`(N, P, H_s)` -> `(N, P, H_t)`, pair p through W_p."""
        return torch.stack([lin(student_hidden[:, p]) for p, lin in enumerate(self.proj)], 1)


def hidden_loss(
    teacher_hidden: torch.Tensor,  # (N, P, H_t)
    student_hidden: torch.Tensor,  # (N, P, H_s)
    projector: HiddenProjector,
    mask: torch.Tensor | None = None,  # (N,)
    weights: torch.Tensor | None = None,  # (N,)
    denominator: float | None = None,  # rows to divide by (reduce_rows); None: these rows' unmasked count
) -> torch.Tensor:
    """sum_l MSE(h_l^t, W_l h_l^s), rows reduced with mask and weights. Gradient to student and W only."""
    projected = projector(student_hidden.float())  # (N, P, H_t)
    per_row = (projected - teacher_hidden.detach().float()).pow(2).mean(-1).sum(-1)  # (N,)
    return reduce_rows(per_row, mask, weights, denominator)


def match_heads(attn: torch.Tensor, heads: int, mode: str) -> torch.Tensor:
    """`(N, P, H, K)` -> `(N, P, heads', K)`: mean over all heads ("mean", heads' = 1) or over groups."""
    if mode == "mean":
        return attn.mean(2, keepdim=True)
    if mode != "group":
        raise ValueError(f"head mode must be 'mean' or 'group', got {mode!r}")
    n, p, h, k = attn.shape
    if h % heads:
        raise ValueError(f"cannot group {h} heads into {heads}: {h} is not a multiple of {heads}")
    return attn.reshape(n, p, heads, h // heads, k).mean(3)


def attention_loss(
    teacher_attn: torch.Tensor,  # (N, P, heads_t, K)
    student_attn: torch.Tensor,  # (N, P, heads_s, K)
    heads: str = "mean",
    mask: torch.Tensor | None = None,  # (N,)
    weights: torch.Tensor | None = None,  # (N,)
    denominator: float | None = None,  # rows to divide by (reduce_rows); None: these rows' unmasked count
) -> torch.Tensor:
    """sum_l of the per-row squared error summed over keys, mean over (matched) heads (module doc)."""
    if teacher_attn.shape[-1] != student_attn.shape[-1]:
        raise ValueError(f"key lengths differ: teacher {teacher_attn.shape[-1]}, student {student_attn.shape[-1]}")
    s_heads = student_attn.shape[2]
    t = match_heads(teacher_attn.detach().float(), s_heads, heads)
    s = match_heads(student_attn.float(), s_heads, heads) if heads == "mean" else student_attn.float()
    per_row = (t - s).pow(2).sum(-1).mean(-1).sum(-1)  # keys summed, heads averaged, pairs summed -> (N,)
    return reduce_rows(per_row, mask, weights, denominator)


def gather_rows(per_layer: list[torch.Tensor], lengths: list[int] | None = None) -> torch.Tensor:
    """Stack per-layer `(B, L, ...)` student tensors into rows `(N, P, ...)` for positions 0..L_b-2.

    Rows follow raykd/signals/types.py: sequence b contributes positions 0..L_b - 2 (default L_b = L).
    """
    stacked = torch.stack(per_layer, 2)  # (B, L, P, ...)
    b, width = stacked.shape[:2]
    lengths = lengths or [width] * b
    return torch.cat([stacked[i, : n - 1] for i, n in enumerate(lengths)])
