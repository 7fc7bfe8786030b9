"""Configuration of the loss and of the distillation methods: divergence, schedules, dynamic temperature,
hidden-state / attention matching, adversarial term (section `loss:`), sequence-level KD (`seqkd:`).

Part of the `raykd distill` config (raykd/config/distill.py); each sub-config is read by the module that
implements it in raykd/loss/ (raykd/loss/objective.py ties them together). Example:

    loss:
      divergence: jsd        # forward_kl | reverse_kl | jsd | skew_kl | skew_reverse_kl | tvd
      beta: 0.5              # jsd only: 0 = forward KL, 1 = reverse KL
      temperature_schedule: {kind: cosine, start: 4.0, end: 1.0}
      hidden: {weight: 1.0, layer_map: {2: 4}}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raykd.config.base import StrictModel
from raykd.config.on_policy import OnPolicyConfig


def schedule_bounds(
    *,
    kind: str = "constant",
    start: float,
    end: float | None = None,
    warmup_steps: int = 0,
    warmup_from: float | None = None,
    milestones: list[int] | tuple[int, ...] = (),
    gamma: float = 1.0,
) -> tuple[float, float]:
    """(min, max) over all steps of any run length (raykd/loss/schedules.py: every shape is monotone between
    these points). The validators use it to reject an alpha leaving [0, 1] or a temperature reaching 0."""
    points = [start]
    if warmup_steps > 0 and warmup_from is not None:
        points.append(warmup_from)
    if kind in ("linear", "cosine") and end is not None:
        points.append(end)
    if kind == "step":
        points += [start * gamma**j for j in range(1, len(milestones) + 1)]
    return min(points), max(points)


class ScheduleConfig(StrictModel):
    """Per-step value of temperature or alpha (raykd/loss/schedules.py): optional warm-up, then a shape."""

    kind: Literal["constant", "linear", "cosine", "step"] = Field(
        "constant", description="constant: start; linear / cosine: start -> end at the last step; "
        "step: start * gamma^(milestones passed)."
    )
    start: float | None = Field(None, description="Value after the warm-up; null: the base value (loss.temperature / loss.alpha).")
    end: float | None = Field(None, description="Value at the last step (linear, cosine); null: start.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear ramp from warmup_from to start.")
    warmup_from: float | None = Field(None, description="Value at step 0 of the warm-up (required with warmup_steps).")
    milestones: list[int] = Field(default_factory=list, description="step: absolute steps where the value is multiplied by gamma.")
    gamma: float = Field(0.5, gt=0, description="step: factor applied at each milestone.")

    @model_validator(mode="after")
    def _complete(self) -> "ScheduleConfig":
        if self.warmup_steps > 0 and self.warmup_from is None:
            raise ValueError("warmup_from is required when warmup_steps > 0")
        if self.kind in ("linear", "cosine") and self.end is None:
            raise ValueError(f"a {self.kind} schedule needs end")
        if self.kind == "step" and not self.milestones:
            raise ValueError("a step schedule needs milestones")
        return self

    def bounds(self, base: float) -> tuple[float, float]:
        """(min, max) of the values this schedule takes; `start: null` means `base` (loss.temperature/alpha)."""
        return schedule_bounds(kind=self.kind, start=base if self.start is None else self.start, end=self.end,
                               warmup_steps=self.warmup_steps, warmup_from=self.warmup_from,
                               milestones=self.milestones, gamma=self.gamma)


class DynamicTemperatureConfig(StrictModel):
    """Per-token temperature from difficulty (raykd/loss/dynamic_temperature.py): T_i = t_min + (t_max - t_min) d_i."""

    rule: Literal["none", "entropy", "disagreement"] = Field(
        "none", description="none: loss.temperature (scheduled); entropy: d = teacher confidence 1 - H/log C; "
        "disagreement: d = TVD(teacher, student) at T = 1."
    )
    min_temperature: float = Field(1.0, gt=0, le=100, description="Temperature of the easiest tokens (d = 0).")
    max_temperature: float = Field(4.0, gt=0, le=100, description="Temperature of the hardest tokens (d = 1).")

    @model_validator(mode="after")
    def _ordered(self) -> "DynamicTemperatureConfig":
        if self.min_temperature > self.max_temperature:
            raise ValueError(f"min_temperature {self.min_temperature} > max_temperature {self.max_temperature}")
        return self


def _check_layer_map(layer_map: dict[int, int], weight: float, first: int, numbering: str) -> None:
    """A feature term that is on names its layers, and every layer index is at least `first`."""
    if weight > 0 and not layer_map:
        raise ValueError("layer_map is empty; give student -> teacher layers, e.g. {2: 4}")
    if any(k < first or v < first for k, v in layer_map.items()):
        raise ValueError(f"layer_map indices must be >= {first} ({numbering}), got {layer_map}")


class HiddenMatchConfig(StrictModel):
    """weight * sum_l MSE(h_l^teacher, W_l h_l^student), W_l learnable (raykd/loss/features.py)."""

    weight: float = Field(0.0, ge=0, description="Weight of the hidden-state term; 0: off.")
    layer_map: dict[int, int] = Field(
        default_factory=dict, description="student layer -> teacher layer; 0 = embeddings, l = output of layer l "
        "(the last layer's after the final norm), as in HF `hidden_states`. E.g. {1: 2, 2: 4}."
    )

    @model_validator(mode="after")
    def _map(self) -> "HiddenMatchConfig":
        _check_layer_map(self.layer_map, self.weight, first=0, numbering="0 = embeddings")
        return self


class AttentionMatchConfig(StrictModel):
    """weight * sum_l MSE(A_l^teacher, A_l^student) over attention maps (raykd/loss/features.py)."""

    weight: float = Field(0.0, ge=0, description="Weight of the attention-map term; 0: off. Needs teacher.backend: hf.")
    layer_map: dict[int, int] = Field(
        default_factory=dict, description="student layer -> teacher layer, 1-based (layer l's attention). E.g. {2: 4}."
    )
    heads: Literal["mean", "group"] = Field(
        "mean", description="mean: compare head-averaged maps; group: average teacher heads in consecutive groups "
        "of (teacher heads / student heads) and compare head by head (needs divisibility)."
    )

    @model_validator(mode="after")
    def _map(self) -> "AttentionMatchConfig":
        _check_layer_map(self.layer_map, self.weight, first=1, numbering="1-based")
        return self


class AdversarialConfig(StrictModel):
    """A discriminator tells teacher from student; the student gets weight * its non-saturating GAN loss."""

    weight: float = Field(0.0, ge=0, description="Weight of the student's adversarial term; 0: off.")
    input: Literal["distribution", "hidden"] = Field(
        "distribution", description="distribution: the compared (top-k + tail) probabilities at T = 1; hidden: "
        "teacher hidden states vs projected student ones of the first loss.hidden.layer_map pair."
    )
    disc_hidden: int = Field(64, ge=4, description="Width of the discriminator's two hidden layers.")
    disc_lr: float = Field(1e-3, gt=0, description="Discriminator Adam learning rate (betas 0.5, 0.999).")
    disc_steps: int = Field(1, ge=1, description="Discriminator updates per student step.")
    warmup_steps: int = Field(20, ge=0, description="The student's term ramps 0 -> weight over these steps.")
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="One-sided: teacher label 1 - this (stabilises D).")
    max_rows: int = Field(512, ge=8, description="Token rows sampled per step for the discriminator.")


class CrossTokenizerConfig(StrictModel):
    """A student with another tokenizer than the teacher's (raykd/loss/cross_tokenizer.py, docs/cross_tokenizer.md).

    Rows are aligned by byte offsets of the same text; the soft term is D over the teacher's top-k tokens the
    student also has (+ a rest bucket holding the unmapped mass) plus uld_weight * ULD over the rest.
    """

    mapping: Literal["exact", "none"] = Field(
        "exact", description="exact: compare tokens whose bytes are the same in both vocabularies with "
        "loss.divergence, the rest with ULD; none: ULD alone for every token (Boizard et al. 2024)."
    )
    uld_weight: float = Field(
        1.0, ge=0, le=100, description="Weight of the ULD term (Wasserstein-1 between sorted probabilities) "
        "on what the mapping cannot compare; 0: mapped tokens only. Must be > 0 with mapping: none."
    )

    @model_validator(mode="after")
    def _teaches(self) -> "CrossTokenizerConfig":
        if self.mapping == "none" and self.uld_weight == 0:
            raise ValueError("mapping 'none' compares with ULD alone; uld_weight 0 would teach nothing")
        return self


class LossConfig(StrictModel):
    """L = alpha * T^2 * D(p_teacher^T, p_student^T) + (1 - alpha) * CE + feature/attention/adversarial terms.

    D is `divergence` (forward KL by default, see raykd/loss/divergences.py); T and alpha may follow schedules,
    T may be per token (dynamic_temperature). Every term is scaled by the per-sample data weights.
    """

    temperature: float = Field(2.0, gt=0, le=100, description="Softmax temperature T of the soft targets.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft (KD) term; 0 = hard labels only.")
    top_k: int = Field(20, ge=1, description="Teacher log-probs kept per position.")
    tail: Literal["bucket", "renormalize"] = Field(
        "bucket", description="Mass outside the top-k: one extra 'rest' bucket, or renormalise over the top-k."
    )
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"] = Field(
        "forward_kl", description="D of the soft term: KL(p||q), KL(q||p), normalised generalised JSD(beta), "
        "KL(p||lam p+(1-lam) q), KL(q||lam q+(1-lam) p), total variation (p teacher, q student)."
    )
    beta: float = Field(
        0.5, ge=0, le=1, description="jsd: mixture weight; 0 = forward KL, 1 = reverse KL (continuous in between)."
    )
    skew_lambda: float = Field(0.1, ge=0, lt=1, description="skew_kl / skew_reverse_kl: lam (0 = plain KL).")
    temperature_schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="T per step.")
    alpha_schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="alpha per step.")
    dynamic_temperature: DynamicTemperatureConfig = Field(default_factory=DynamicTemperatureConfig)
    hidden: HiddenMatchConfig = Field(default_factory=HiddenMatchConfig)
    attention: AttentionMatchConfig = Field(default_factory=AttentionMatchConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    on_policy: OnPolicyConfig = Field(
        default_factory=OnPolicyConfig, description="On-policy KD: the student writes, the teacher grades "
        "(raykd/config/on_policy.py, docs/on_policy.md)."
    )
    cross_tokenizer: CrossTokenizerConfig | None = Field(
        None, description="Set to distil into a student whose tokenizer differs from the teacher's (student.path); "
        "null: the tokenizers must be the same."
    )

    @model_validator(mode="after")
    def _schedules(self) -> "LossConfig":
        lo, hi = self.alpha_schedule.bounds(self.alpha)
        if lo < 0 or hi > 1:
            raise ValueError(f"alpha_schedule takes values in [{lo:g}, {hi:g}], outside [0, 1]")
        lo, hi = self.temperature_schedule.bounds(self.temperature)
        if lo <= 0 or hi > 100:
            raise ValueError(f"temperature_schedule takes values in [{lo:g}, {hi:g}], outside (0, 100]")
        sched = self.temperature_schedule
        if self.dynamic_temperature.rule != "none" and (sched.kind != "constant" or sched.warmup_steps):
            raise ValueError("dynamic_temperature sets T per token; it cannot be combined with a temperature_schedule")
        if self.adversarial.weight > 0 and self.adversarial.input == "hidden" and not self.hidden.layer_map:
            raise ValueError("adversarial.input 'hidden' uses the first hidden.layer_map pair, and it is empty")
        if self.cross_tokenizer is not None:
            self._cross_tokenizer_limits()
        return self

    def _cross_tokenizer_limits(self) -> None:
        """What the cross-tokenizer loss does not combine with: terms that assume one vocabulary or one position
        per token on both sides."""
        unsupported = {
            "loss.tail 'renormalize' (the unmapped teacher mass needs the rest bucket)": self.tail != "bucket",
            "loss.dynamic_temperature": self.dynamic_temperature.rule != "none",
            "loss.hidden": self.hidden.weight > 0,
            "loss.attention": self.attention.weight > 0,
            "loss.adversarial": self.adversarial.weight > 0,
            "loss.on_policy": self.on_policy.fraction > 0,
        }
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"cross_tokenizer cannot be combined with {', '.join(bad)}")


class SeqKDConfig(StrictModel):
    """Sequence-level KD (raykd/train/seqkd.py): the teacher writes continuations, the student trains on them.

    With loss.alpha 0 this is Kim & Rush's sequence-level KD; alpha > 0 adds token-level KD on the same
    teacher-written sequences.
    """

    enabled: bool = Field(False, description="Replace the training sequences by teacher continuations.")
    prompt_tokens: int = Field(32, ge=1, description="Prompt = the first tokens of each training sequence.")
    max_new_tokens: int = Field(96, ge=1, description="Tokens the teacher writes per prompt (sequence = prompt + these).")
    temperature: float = Field(0.0, ge=0, description="0: greedy (Kim & Rush's beam-search stand-in); > 0: sampled.")
    max_prompts: int | None = Field(None, ge=1, description="Prompts used (from the start of the training set); null: all.")
    loss_on_prompt: bool = Field(False, description="Also train on the prompt tokens (default: response tokens only).")
    request_prompts: int = Field(16, ge=1, description="Prompts per generate request to the teacher.")
