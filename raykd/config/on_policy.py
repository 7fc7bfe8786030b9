"""Configuration of on-policy distillation (section `loss.on_policy`; docs/on_policy.md).

    loss:
      divergence: jsd          # GKD: generalised JSD with beta, on the student's own tokens
      beta: 0.5
      on_policy:
        fraction: 0.5          # lambda: the share of steps whose sequences the student writes; 0 = off
        objective: divergence  # divergence (loss.divergence over the teacher's top-k) | sampled_reverse_kl (k = 1)
        max_new_tokens: 32
        temperature: 1.0
        prompt: block          # block: the first prompt_tokens of a block | records: the tokens before a completion
        prompt_tokens: 32
        engine: hf             # hf: the Train worker generates with its current weights; vllm: a rollout deployment
        max_staleness: 1       # rollouts for step n + 1 are written while step n trains; 0: always current weights

The worker side is raykd/train/rollouts.py, the loss raykd/loss/on_policy.py. What needs other sections
(data.seq_len, train.strategy, the feature terms) is checked in raykd/config/distill.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raykd.config.base import StrictModel


class OnPolicyConfig(StrictModel):
    """On-policy KD (GKD, Agarwal et al. 2024): on a `fraction` of the steps the student writes the continuations
    and the teacher scores every generated token; the loss covers the generated tokens only."""

    fraction: float = Field(
        0.0, ge=0, le=1, description="lambda: share of the optimizer steps that are on-policy (spread evenly over "
        "the run, the same steps on every worker); 0: off (training is exactly the off-policy one), 1: every step.",
    )
    objective: Literal["divergence", "sampled_reverse_kl"] = Field(
        "divergence", description="divergence: loss.divergence (jsd with loss.beta = GKD) between the teacher's "
        "top-k and the student at every generated token; sampled_reverse_kl: the policy-gradient estimate of "
        "KL(student || teacher) from the sampled token alone (the teacher returns one log-prob per token, k = 1).",
    )
    max_new_tokens: int = Field(32, ge=1, description="Tokens the student writes per prompt (all of them trained).")
    temperature: float = Field(
        1.0, ge=0, description="Sampling temperature of the rollouts; 0: greedy. sampled_reverse_kl needs > 0 (its "
        "policy is softmax(logits / temperature)).",
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling of the rollouts; 1: the whole distribution (sampled_reverse_kl "
        "needs 1: a truncated policy is not the one whose gradient is estimated).",
    )
    prompt: Literal["block", "records"] = Field(
        "block", description="block: the first prompt_tokens of each training block; records: the prompt_tokens "
        "tokens that end where a trained span of the data's loss mask starts (chat: an assistant turn, "
        "prompt_completion: a completion; raykd/data/records.py), the block's start where it has none.",
    )
    prompt_tokens: int = Field(32, ge=1, description="Tokens of each prompt (sequence = prompt + max_new_tokens).")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf: the Train worker generates with its current weights (transformers, no grad); "
        "vllm: a student rollout deployment (vLLM on Serve, teacher.vllm settings) writes them and receives the "
        "trainer's weights every sync_every steps (raykd/train/rollout_engine.py).",
    )
    sync_every: int = Field(
        1, ge=1, description="engine vllm: optimizer steps between weight syncs to the rollout deployment.",
    )
    max_staleness: int = Field(
        1, ge=0, description="Steps between the weights that wrote a rollout and the step that trains on it: with 1 "
        "the rollouts of step n + 1 are written, and sent to the teacher, before step n trains, so the teacher "
        "scores them meanwhile; 0: written with the current weights right before their step (no overlap).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "OnPolicyConfig":
        if self.objective == "sampled_reverse_kl" and (self.temperature == 0 or self.top_p != 1):
            raise ValueError("objective sampled_reverse_kl samples from the student's distribution: it needs "
                             f"temperature > 0 and top_p 1 (got temperature {self.temperature}, top_p {self.top_p})")
        return self

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


def check_on_policy(cfg) -> None:
    """Cross-section checks of `loss.on_policy` against a DistillConfig `cfg` (its model validator calls this);
    ValueError naming the fields. What is not supported yet is refused here rather than trained wrongly."""
    op, loss = cfg.loss.on_policy, cfg.loss
    if not op.enabled:
        return
    if op.prompt_tokens >= cfg.data.seq_len:
        raise ValueError(f"loss.on_policy.prompt_tokens={op.prompt_tokens} must be < data.seq_len={cfg.data.seq_len} "
                         "(prompts are cut from the training blocks)")
    if op.prompt == "records" and cfg.data.format == "text":
        raise ValueError("loss.on_policy.prompt: records takes the prompt part of chat / prompt_completion records; "
                         "data.format is text (use prompt: block)")
    if cfg.train.strategy == "fsdp":
        raise ValueError("loss.on_policy with train.strategy fsdp is not supported yet (rollouts need the whole "
                         "student on each worker); use ddp")
    if isinstance(cfg.signals.loss_chunk_size, int):  # auto falls back to full logits with on-policy
        raise ValueError("loss.on_policy with signals.loss_chunk_size is not supported yet; set it to null or auto")
    if loss.hidden.weight > 0 or loss.attention.weight > 0 or loss.adversarial.weight > 0:
        raise ValueError("loss.on_policy trains the token-level divergence only; set loss.hidden / loss.attention / "
                         "loss.adversarial weights to 0")
    if loss.dynamic_temperature.rule != "none":
        raise ValueError("loss.on_policy uses the scheduled loss.temperature; set loss.dynamic_temperature.rule: none")
