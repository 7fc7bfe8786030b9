"""The training objective of `raykd distill`: every loss term of every configured method, per step.

    objective = Objective(cfg, student_config, use_teacher=True, world=2)      # in each Train worker
    extras = objective.teacher_extras()           # what the teacher must return besides top-k (or None)
    out = model(input_ids=ids, **objective.model_kwargs())
    loss, metrics = objective.compute_loss(step, out, ids, signals, token_weights, token_mask)   # ids (B, L)
    loss, metrics = objective.compute_loss(step, out, ids, signals, token_weights, token_mask, denominator=n / world)
    loss.backward(); optimizer.step(); objective.step()                               # + learnable extras
    objective.pop_step_values()      # (step, alpha, mean T) of the steps so far, for MLflow (raykd/train/)

    L = alpha_s * T^2 D(p_t^T, p_s^T) + (1 - alpha_s) CE + w_h sum_l MSE(h_t, W h_s) + w_a sum_l MSE(A_t, A_s)
        + ramp_s * w_adv * L_adv

The first two terms are the row-level loss (raykd/loss/row_loss.py: D is `loss.divergence`, alpha_s and T
follow their schedules or T is per token); the feature terms are raykd/loss/features.py and the adversarial
term raykd/loss/adversarial.py. Rows are the positions 0..L-2 of each sequence (raykd/signals/types.py);
every term is reduced with the data's loss mask (`token_mask`, raykd/data/records.py: 1 where the label token
is trained — assistant / completion tokens, never padding, prompts or a record's first token; sequence-level
KD's prompts are masked there too) and the per-sample data weights (`data.weight_field`, weight of the record
the label token comes from). Row j uses the mask and weight of token j + 1.

Normalisation: without `denominator` each term is a mean over this batch's unmasked rows. The training
loop (raykd/train/student.py) passes `denominator` = unmasked rows of the whole global batch (every
micro-batch of every worker) / workers: each call then returns its share of the global token mean, the
shares of the micro-batches add up, and the workers' averaged gradients are those of one big batch.
Metrics in ADDITIVE_METRICS are such shares then (summed over micro-batches); the others are per call.

The learnable parts (projections W, discriminator D) live here, with their own optimizers, because the
student's optimizer and checkpoint are plain HF: their gradients are averaged over the DDP workers by
hand, and `state_dict`/`load_state_dict` go into the Train checkpoint (raykd/train/checkpoint.py). They are
created on the first batch, when the teacher's hidden width is known from its signals. With the defaults
(forward KL, constant T and alpha, no extra terms) the loss is raykd.loss.kd.distill_loss exactly. Pure
torch: no Ray, no MLflow, no files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raykd.config import DistillConfig, LossConfig
from raykd.loss.adversarial import AdversarialDistiller, student_adversarial_loss
from raykd.loss.dynamic_temperature import temperature_summary
from raykd.loss.features import HiddenProjector, attention_loss, gather_rows, hidden_loss
from raykd.loss.on_policy import on_policy_loss
from raykd.loss.row_loss import SIGNAL_FIELDS, RowLoss

LOGPROB_FLOOR = -20.0  # discriminator input floor (log-probs)
# Metrics that are shares of the step's loss when compute_loss gets a denominator: summed over micro-batches.
ADDITIVE_METRICS = frozenset({"loss", "loss_soft", "loss_hard", "loss_hidden", "loss_attention", "loss_adv",
                              "loss_on_policy"})
_HIST_BINS = 40


def needs_teacher(cfg: DistillConfig) -> bool:
    """Whether any term of the loss uses teacher signals at some step (on-policy steps always do)."""
    return off_policy_needs_teacher(cfg) or cfg.loss.on_policy.enabled


def off_policy_needs_teacher(cfg: DistillConfig) -> bool:
    """Whether the loss of a data batch uses teacher signals at some step (else: hard labels only)."""
    lc = cfg.loss
    alpha_max = lc.alpha_schedule.bounds(lc.alpha)[1]
    return alpha_max > 0 or lc.hidden.weight > 0 or lc.attention.weight > 0 or lc.adversarial.weight > 0


def uses_hidden(lc: LossConfig) -> bool:
    """Hidden states are needed for their own term or as the discriminator's input."""
    return lc.hidden.weight > 0 or (lc.adversarial.weight > 0 and lc.adversarial.input == "hidden")


def teacher_extras_request(lc: LossConfig) -> dict[str, list[int]]:
    """Extras for `Teacher.score`: HF `hidden_states` indices (0 = embeddings) and 0-based attention layers."""
    extras: dict[str, list[int]] = {}
    if uses_hidden(lc):
        extras["hidden_states"] = list(lc.hidden.layer_map.values())
    if lc.attention.weight > 0:
        extras["attentions"] = [t - 1 for t in lc.attention.layer_map.values()]
    return extras


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) -> rows (B*(L-1), ...) for positions 0..L-2."""
    return x[:, :-1].reshape(-1, *x.shape[2:])


class Objective:
    def __init__(self, cfg: DistillConfig, student_config: Any, *, use_teacher: bool, world: int = 1, rank: int = 0):
        self.cfg, self.lc = cfg, cfg.loss
        self.use_teacher, self.world, self.rank = use_teacher, world, rank
        lc = cfg.loss
        self.row_loss = RowLoss(lc, cfg.train.max_steps, use_teacher)
        self.dynamic = self.row_loss.dynamic
        self.extras = teacher_extras_request(lc) if use_teacher else {}
        self.hidden_pairs = list(lc.hidden.layer_map.items()) if "hidden_states" in self.extras else []
        self.attention_pairs = list(lc.attention.layer_map.items()) if "attentions" in self.extras else []
        self.adv_on = use_teacher and lc.adversarial.weight > 0
        self.student_hidden = int(student_config.hidden_size)
        self.projector = None  # HiddenProjector, built on the first batch
        self.projector_opt = None
        self.adversary = None  # AdversarialDistiller, built on the first batch
        self.dims: dict[str, int] = {}
        self.step_values: list[tuple[int, float, float]] = []  # (step, alpha, mean temperature) not yet logged
        self.curves: dict[str, list[tuple[int, float]]] = {}
        if self.dynamic is not None:
            self.hist_edges = np.linspace(self.dynamic.min_temperature, self.dynamic.max_temperature + 1e-9, _HIST_BINS + 1)
            self.hist = np.zeros(_HIST_BINS, np.int64)

    # ------------------------------------------------------------------ what the loop asks
    def teacher_extras(self) -> dict[str, list[int]] | None:
        return self.extras or None

    def model_kwargs(self) -> dict[str, bool]:
        kw = {}
        if self.hidden_pairs:
            kw["output_hidden_states"] = True
        if self.attention_pairs:
            kw["output_attentions"] = True
        return kw

    def prepare_student(self, model) -> None:
        """Attention maps need the eager attention kernel (SDPA does not return the weights)."""
        if self.attention_pairs:
            model.set_attn_implementation("eager")

    # ------------------------------------------------------------------ learnable parts
    def _build(self, teacher_hidden: int | None, adv_in: int | None) -> None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.cfg.seed + 7919)  # identical on every worker, independent of the student's init
        if teacher_hidden is not None and self.projector is None:
            self.dims["teacher_hidden"] = teacher_hidden
            self.projector = HiddenProjector(dict(self.hidden_pairs), self.student_hidden, teacher_hidden)
            self.projector_opt = torch.optim.AdamW(self.projector.parameters(), lr=self.cfg.train.lr)
        if adv_in is not None and self.adversary is None:
            a = self.lc.adversarial
            self.dims["adv_in"] = adv_in
            self.adversary = AdversarialDistiller(adv_in, a.disc_hidden, a.disc_lr, a.label_smoothing, a.disc_steps,
                                                  all_reduce=self._all_reduce)
        torch.random.set_rng_state(gen_state)

    def _all_reduce(self, params) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_available() and dist.is_initialized():
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

    def zero_grad(self) -> None:
        if self.projector_opt is not None:
            self.projector_opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Optimizer step of the projections (after the student's backward)."""
        if self.projector_opt is not None:
            self._all_reduce(self.projector.parameters())
            torch.nn.utils.clip_grad_norm_(self.projector.parameters(), self.cfg.train.grad_clip)
            self.projector_opt.step()
            self.projector_opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ the loss
    def row_mask(self, shape: tuple[int, int], token_mask: Any = None, device: Any = None) -> torch.Tensor | None:
        """`(B*(L-1),)` float mask of the rows trained on (the data's token mask), or None when every row is."""
        if token_mask is None:
            return None
        return torch.as_tensor(np.asarray(token_mask), device=device)[:, 1:].float().reshape(-1)

    def count_rows(self, shape: tuple[int, int], token_mask: Any = None) -> float:
        """Rows of a `(B, L)` batch the loss is computed on: what a global batch's denominator adds up."""
        mask = self.row_mask(shape, token_mask)
        return float(shape[0] * (shape[1] - 1)) if mask is None else float(mask.sum())

    def compute_loss(
        self,
        step: int,
        out: Any,  # model output: .logits (B, L, V), .hidden_states, .attentions when asked
        ids: torch.Tensor,  # (B, L) input token ids
        signals: Any = None,  # TeacherSignals of the batch (rows as raykd/signals/types.py) or None
        token_weights: np.ndarray | torch.Tensor | None = None,  # (B, L) per-token sample weights
        token_mask: np.ndarray | torch.Tensor | None = None,  # (B, L) 1 = token trained (None: all)
        denominator: float | None = None,  # unmasked rows of the global batch / workers (module doc)
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = out.logits
        flat = _rows(logits)  # (N, V)
        labels = ids[:, 1:].reshape(-1)
        device = logits.device
        mask = self.row_mask(tuple(ids.shape), token_mask, device)
        weights = None
        if token_weights is not None:
            weights = torch.as_tensor(np.asarray(token_weights), dtype=torch.float32, device=device)[:, 1:].reshape(-1)

        # The discriminator's input is the compared distributions at T = 1.
        need_t1 = self.adv_on and self.lc.adversarial.input == "distribution"
        rows = self.row_loss(step, flat, labels, signals, mask=mask, weights=weights, need_t1=need_t1,
                             denominator=denominator)
        metrics = rows.metrics
        loss = rows.loss
        if self.use_teacher and signals is not None:
            if self.dynamic is not None:
                self._record_temperatures(rows.temperature, mask, metrics)
            # The adversarial term is a mean over a subsample of rows: weighted by this batch's share.
            share = 1.0 if denominator is None else (float(mask.sum()) if mask is not None else float(len(labels))) / (
                float(denominator) or 1.0)
            loss = loss + self._feature_terms(step, out, signals, rows.t1, rows.s1, mask, weights, metrics,
                                              denominator, share)
            metrics["loss"] = float(loss.detach())
        self.step_values.append((step + 1, float(rows.alpha), rows.mean_temperature))
        return loss, metrics

    def compute_on_policy_loss(self, step, out, ids, signals, token_weights=None, token_mask=None,
                               denominator=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a batch the student wrote (raykd/loss/on_policy.py): loss.on_policy.objective over the rows
        `token_mask` marks (the generated tokens), at the step's scheduled T; no hard term (alpha does not apply)."""
        flat, sampled = _rows(out.logits), ids[:, 1:].reshape(-1)
        mask = self.row_mask(tuple(ids.shape), token_mask, flat.device)
        weights = None
        if token_weights is not None:
            weights = torch.as_tensor(np.asarray(token_weights), dtype=torch.float32, device=flat.device)
            weights = weights[:, 1:].reshape(-1)
        op = self.lc.on_policy
        if op.objective == "sampled_reverse_kl":  # k = 1: the teacher's log-prob of the sampled token alone
            teacher = {"teacher_logprob": torch.as_tensor(np.array(signals.target_logprob), device=flat.device)}
            temperature = op.temperature  # the estimator's policy is the sampling one
        else:
            teacher = {k: torch.as_tensor(np.array(getattr(signals, k)), device=flat.device) for k in SIGNAL_FIELDS}
            temperature = self.row_loss.temperature_at(step)
        loss, metrics = on_policy_loss(flat, sampled, objective=op.objective, divergence=self.lc.divergence,
                                       beta=self.lc.beta, skew_lambda=self.lc.skew_lambda, temperature=temperature,
                                       mask=mask, weights=weights, denominator=denominator, tail=self.lc.tail,
                                       **teacher)
        self.step_values.append((step + 1, 1.0, float(temperature)))  # the soft term alone: alpha 1
        return loss, metrics

    def _feature_terms(self, step, out, signals, t1, s1, mask, weights, metrics, denominator=None,
                       share=1.0) -> torch.Tensor:
        lc, device = self.lc, out.logits.device
        total = torch.zeros((), device=device)
        t_hidden = s_hidden = None
        if self.hidden_pairs:
            t_hidden = torch.as_tensor(np.array(signals.extras["hidden_states"]), device=device)  # (N, P, H_t)
            s_hidden = gather_rows([out.hidden_states[s] for s, _ in self.hidden_pairs])  # (N, P, H_s)
            if self.projector is None:
                self._build(int(t_hidden.shape[-1]), None)
            self.projector.to(device)  # no-op once there (a checkpoint loads it on the CPU)
            if lc.hidden.weight > 0:
                loss_hidden = hidden_loss(t_hidden, s_hidden, self.projector, mask, weights, denominator)
                metrics["loss_hidden"] = float(loss_hidden.detach())
                total = total + lc.hidden.weight * loss_hidden
        if self.attention_pairs:
            t_attn = torch.as_tensor(np.array(signals.extras["attentions"]), device=device)  # (N, P, heads_t, K)
            # HF attentions[l-1]: (B, heads, L, L) -> (B, L, heads, L) so that rows are query positions.
            s_attn = gather_rows([out.attentions[s - 1].transpose(1, 2) for s, _ in self.attention_pairs])
            loss_attn = attention_loss(t_attn[..., : s_attn.shape[-1]], s_attn, lc.attention.heads, mask, weights,
                                       denominator)
            metrics["loss_attention"] = float(loss_attn.detach())
            total = total + lc.attention.weight * loss_attn
        if self.adv_on:
            total = total + self._adversarial_term(step, t1, s1, t_hidden, s_hidden, mask, metrics, share)
        return total

    def _adversarial_term(self, step, t1, s1, t_hidden, s_hidden, mask, metrics, share=1.0) -> torch.Tensor:
        a = self.lc.adversarial
        if a.input == "distribution":
            # (N, C) log-probs of the compared outcomes at T = 1, floored: probabilities would give a
            # spectral-normalised D too little input range to tell the rows apart.
            real, fake = t1.clamp_min(LOGPROB_FLOOR), s1.clamp_min(LOGPROB_FLOOR)
        else:
            real, fake = t_hidden[:, 0].float(), self.projector(s_hidden)[:, 0]
        if self.adversary is None:
            self._build(None, int(real.shape[-1]))
        self.adversary.to(real.device)
        rows = torch.arange(real.shape[0], device=real.device)
        if mask is not None:
            rows = rows[mask > 0]
        if len(rows) > a.max_rows:  # a seeded subsample (by seed, step and rank): reruns see the same rows
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step * 131 + self.rank)
            rows = rows[torch.randperm(len(rows), generator=g)[: a.max_rows].to(rows.device)]
        real, fake = real[rows], fake[rows]
        metrics.update(self.adversary.train_discriminator(real, fake.detach()))
        loss_adv = student_adversarial_loss(self.adversary.disc, fake)
        ramp = min(1.0, (step + 1) / a.warmup_steps) if a.warmup_steps else 1.0
        if share != 1.0:
            loss_adv = loss_adv * share
        metrics["loss_adv"] = float(loss_adv.detach())
        metrics["adv_weight"] = ramp * a.weight
        if self.rank == 0:
            for key in ("adv_disc_loss", "adv_disc_accuracy", "loss_adv"):
                self.curves.setdefault(key, []).append((step + 1, metrics[key]))
        return ramp * a.weight * loss_adv

    def _record_temperatures(self, temperature: torch.Tensor, mask, metrics) -> None:
        t = temperature.detach()
        if mask is not None:
            t = t[mask > 0]
        values = t.cpu().numpy()
        metrics.update(temperature_summary(values, "dyn_temperature"))
        self.hist += np.histogram(np.clip(values, self.hist_edges[0], self.hist_edges[-1]), self.hist_edges)[0]

    # ------------------------------------------------------------------ what the loop logs
    def pop_step_values(self) -> list[tuple[int, float, float]]:
        """(step, alpha, temperature) of every step since the last call (temperature: the mean over tokens
        when dynamic); the training loop logs them to MLflow."""
        values, self.step_values = self.step_values, []
        return values

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        state: dict[str, Any] = {"dims": dict(self.dims)}
        if self.projector is not None:
            state["projector"] = self.projector.state_dict()
            state["projector_opt"] = self.projector_opt.state_dict()
        if self.adversary is not None:
            state["adversary"] = self.adversary.disc.state_dict()
            state["adversary_opt"] = self.adversary.optimizer.state_dict()
        if self.dynamic is not None:
            state["hist"] = torch.as_tensor(self.hist)
        if self.curves:  # rank 0's per-step adversarial curves, so a resumed run draws the whole run
            state["curves"] = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.curves.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        dims = state.get("dims", {})
        self._build(dims.get("teacher_hidden") if "projector" in state else None,
                    dims.get("adv_in") if "adversary" in state else None)
        if "projector" in state:
            self.projector.load_state_dict(state["projector"])
            self.projector_opt.load_state_dict(state["projector_opt"])
        if "adversary" in state:
            self.adversary.disc.load_state_dict(state["adversary"])
            self.adversary.optimizer.load_state_dict(state["adversary_opt"])
        if "hist" in state and self.dynamic is not None:
            self.hist = state["hist"].numpy().astype(np.int64)
        self.curves = {k: [(int(s), float(v)) for s, v in t.tolist()] for k, t in state.get("curves", {}).items()}
