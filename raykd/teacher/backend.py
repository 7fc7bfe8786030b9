"""The interface every teacher backend implements, and the choice of backend for a `teacher:` section.

    backend: TeacherBackend = make_backend(cfg.teacher, model_path)    # in the replica (raykd/teacher/service.py)
    signals = await backend.score([np.array([1, 5, 9, 2])], top_k=20)      # TeacherSignals, 3 rows
    gen = await backend.generate(prompts, max_new_tokens=64)                # Generation

Two backends today: transformers in the replica (`ServedHFBackend`, raykd/teacher/hf_backend.py) and a vLLM
engine (`VllmTeacherBackend`, raykd/teacher/vllm_backend.py). A new one (another engine, a faster scoring
path) implements `TeacherBackend` and is added to `make_backend` (service.py); nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from raykd.signals import TeacherSignals


@dataclass
class Generation:
    """Generated continuations: `tokens[b]` holds only the new tokens of prompt b.

    `signals` (optional, vLLM backend with `logprobs_k > 0`): T = 1 top-k of every generated token, for
    sequence-level KD. Row j of prompt b (rows offsets[b]:offsets[b+1]) is the distribution that produced
    tokens[b][j]; its `target_logprob` is that token's log-prob.
    """

    tokens: list[np.ndarray]
    seconds: float
    signals: TeacherSignals | None = None

    @property
    def tokens_per_second(self) -> float:
        return sum(len(t) for t in self.tokens) / max(self.seconds, 1e-9)


@runtime_checkable
class TeacherBackend(Protocol):
    """What the Teacher deployment calls. One backend per replica; its methods are coroutines."""

    vocab_size: int
    max_model_len: int  # longest sequence `score` accepts
    max_top_k: int  # largest `top_k` it returns
    returns_extras: bool  # can it return hidden states / attention maps, and score masked-LM positions?
    scoring: str  # how `score` computes its signals, named in logs and TeacherInfo (settled by `start`)

    async def start(self) -> None:
        """Finish starting once the replica's event loop runs (the vLLM backend chooses its scoring path
        here); idempotent, and `score` awaits it."""
        ...

    async def score(
        self, token_ids: list[np.ndarray], top_k: int, extras: dict[str, list[int]] | None = None,
        positions: list[np.ndarray] | None = None, labels: list[np.ndarray] | None = None,
    ) -> TeacherSignals:
        """Top-k T = 1 log-probs for positions 0..L_b-2 of each sequence (raykd/signals/teacher_signals.py);
        a masked-LM teacher scores `positions[b]` with targets `labels[b]` instead."""
        ...

    async def generate(
        self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0, *,
        top_p: float = 1.0, seed: int | None = None, logprobs_k: int = 0,
    ) -> Generation:
        """Exactly `max_new_tokens` new tokens per prompt, greedy at temperature 0."""
        ...

    async def check_health(self) -> None:
        """Raise if the backend can no longer serve (Serve then replaces the replica)."""
        ...

    def shutdown(self) -> None:
        """Release what the backend started (engine processes); idempotent."""
        ...
