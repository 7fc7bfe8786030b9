"""The configured row-level KD loss of one step: `distill_loss` with alpha and T from their schedules, or T per
token (dynamic temperature). Shared by `raykd distill` (raykd/loss/objective.py) and `raykd mlm-distill`.

    row_loss = RowLoss(cfg.loss, total_steps=cfg.train.max_steps, use_teacher=True)
    out = row_loss(step, rows, labels, signals, mask=mask, weights=weights)   # rows (N, V), labels (N,)
    out.loss.backward(); out.metrics    # {"loss", "loss_soft", "loss_hard"}; out.alpha, out.temperature
    out = row_loss(step, rows, labels, signals, mask=mask, denominator=4064.0)  # a share of a global batch

Reduction: masked sum over rows / `denominator` when given (the training loop's unmasked rows of the whole
global batch per worker: raykd/train/student.py), else / these rows' unmasked count (raykd/loss/divergences.py
`reduce_rows`, the one place this happens).

`signals` is anything with `topk_ids (N, k)`, `topk_logprobs (N, k)` and `tail_logprob (N,)` (a TeacherSignals
whose rows are these rows), or None (hard labels only), or the signals of a teacher with another tokenizer
(raykd/train/cross_signals.py: `cross_tokenizer` is true; the soft term is raykd/loss/cross_tokenizer.py's on
the aligned rows, the hard term the student's own tokens). With `need_t1` the compared log-distributions at
T = 1 come back too (`out.t1`, `out.s1`, `(N, C)`): the disagreement rule and the adversarial term use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raykd.config.loss import LossConfig
from raykd.loss.distributions import log_distributions
from raykd.loss.dynamic_temperature import disagreement_difficulty, entropy_difficulty, token_temperature
from raykd.loss.kd import distill_loss, hard_ce
from raykd.loss.schedules import Schedule

SIGNAL_FIELDS = ("topk_ids", "topk_logprobs", "tail_logprob")


@dataclass
class RowLossOut:
    loss: torch.Tensor  # scalar: alpha * soft + (1 - alpha) * hard
    metrics: dict[str, float]  # loss, loss_soft, loss_hard
    alpha: float
    temperature: float | torch.Tensor  # the step's T, or (N,) per-token temperatures (dynamic)
    signals: dict[str, torch.Tensor] = field(default_factory=dict)  # the teacher's rows as tensors
    t1: torch.Tensor | None = None  # (N, C) teacher log-distribution at T = 1 (need_t1)
    s1: torch.Tensor | None = None  # (N, C) student log-distribution at T = 1 (need_t1)

    @property
    def mean_temperature(self) -> float:
        t = self.temperature
        return float(t.mean()) if isinstance(t, torch.Tensor) else float(t)


class RowLoss:
    def __init__(self, lc: LossConfig, total_steps: int, use_teacher: bool = True):
        self.lc, self.use_teacher = lc, use_teacher
        self.alpha_at = Schedule.from_config(lc.alpha_schedule, lc.alpha, total_steps)
        self.temperature_at = Schedule.from_config(lc.temperature_schedule, lc.temperature, total_steps)
        self.dynamic = lc.dynamic_temperature if lc.dynamic_temperature.rule != "none" else None

    def __call__(
        self,
        step: int,
        rows: torch.Tensor,  # (N, V) student logits
        labels: torch.Tensor,  # (N,) next tokens
        signals: Any = None,  # the teacher's top-k of these rows, or None
        *,
        mask: torch.Tensor | None = None,  # (N,) 1 = real token
        weights: torch.Tensor | None = None,  # (N,) per-row loss weights
        need_t1: bool = False,
        denominator: float | None = None,  # unmasked rows of the global batch per worker; None: these rows'
    ) -> RowLossOut:
        lc = self.lc
        alpha = self.alpha_at(step) if self.use_teacher else 0.0
        temperature: float | torch.Tensor = self.temperature_at(step)
        if not self.use_teacher or signals is None:
            loss, _, hard = distill_loss(rows, labels, alpha=0.0, temperature=temperature, mask=mask, weights=weights,
                                         denominator=denominator)
            metrics = {"loss_hard": float(hard.detach()), "loss_soft": 0.0, "loss": float(loss.detach())}
            return RowLossOut(loss, metrics, alpha, temperature)
        if getattr(signals, "cross_tokenizer", False):  # another tokenizer: aligned rows (raykd/train/cross_signals.py)
            return self._cross(rows, labels, signals, alpha, temperature, mask, weights, denominator)
        sig = {k: torch.as_tensor(np.array(getattr(signals, k)), device=rows.device) for k in SIGNAL_FIELDS}
        if sig["topk_ids"].shape[0] != rows.shape[0]:
            raise ValueError(f"teacher signals have {sig['topk_ids'].shape[0]} rows, the batch {rows.shape[0]}")
        dyn = self.dynamic
        compared: dict[str, torch.Tensor] = {}

        def step_temperature() -> float | torch.Tensor:
            """T of this step, after the hard term (the order autograd accumulates the gradients in): the
            compared distributions at T = 1 first when the disagreement rule or the caller needs them."""
            if need_t1 or (dyn is not None and dyn.rule == "disagreement"):
                compared["t1"], compared["s1"] = log_distributions(rows, **sig, temperature=1.0, tail=lc.tail)
            if dyn is None:
                return temperature
            if dyn.rule == "entropy":
                d = entropy_difficulty(sig["topk_logprobs"], sig["tail_logprob"], rows.shape[-1])
            else:
                d = disagreement_difficulty(compared["t1"], compared["s1"])
            return token_temperature(d, dyn.min_temperature, dyn.max_temperature)

        loss, soft, hard, temperature = distill_loss(
            rows, labels, alpha=alpha, temperature=step_temperature, divergence=lc.divergence, beta=lc.beta,
            skew_lambda=lc.skew_lambda, mask=mask, weights=weights, tail=lc.tail, return_temperature=True,
            denominator=denominator, **sig,
        )
        t1, s1 = compared.get("t1"), compared.get("s1")
        metrics = {"loss_hard": float(hard.detach()), "loss_soft": float(soft.detach()), "loss": float(loss.detach())}
        return RowLossOut(loss, metrics, alpha, temperature, sig, t1, s1)

    def _cross(self, rows, labels, signals, alpha, temperature, mask, weights, denominator) -> RowLossOut:
        """alpha * cross-tokenizer soft term (raykd/loss/cross_tokenizer.py) + (1 - alpha) * CE on the student's
        own tokens; student rows without a teacher row predicting the same text add 0 to the soft term."""
        from raykd.loss.cross_tokenizer import cross_soft_loss

        ct, dev = self.lc.cross_tokenizer, rows.device
        t_rows, s_rows = (torch.as_tensor(a, device=dev) for a in signals.aligned_rows())
        sig = {k: torch.as_tensor(np.array(getattr(signals.signals, k)), device=dev) for k in SIGNAL_FIELDS}
        hard = hard_ce(rows, labels, mask, weights, denominator)
        soft = cross_soft_loss(
            rows, t_rows, s_rows, sig["topk_ids"], sig["topk_logprobs"], sig["tail_logprob"],
            torch.as_tensor(signals.vmap, device=dev), torch.as_tensor(signals.only, device=dev),
            teacher_vocab=signals.teacher_vocab, temperature=temperature, mask=mask, weights=weights,
            denominator=denominator, divergence=self.lc.divergence, beta=self.lc.beta,
            skew_lambda=self.lc.skew_lambda, uld_weight=ct.uld_weight if ct else 1.0,
            mapping=ct.mapping if ct else "exact")
        loss = alpha * soft + (1.0 - alpha) * hard
        metrics = {"loss_hard": float(hard.detach()), "loss_soft": float(soft.detach()), "loss": float(loss.detach()),
                   "aligned_fraction": signals.num_aligned / max(1, rows.shape[0])}
        return RowLossOut(loss, metrics, alpha, temperature)
