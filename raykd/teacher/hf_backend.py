"""transformers backend of the teacher: scoring (teacher forcing) and generation in-process.

    backend = HFTeacherBackend("/path/to/hf_dir", dtype="float32")
    signals = backend.score([np.array([1, 5, 9, 2])], top_k=20)   # TeacherSignals with 3 rows

Used inside the Serve replica (raykd/teacher/service.py) and, for the student, by the evaluation so that
teacher and student generation speed are measured by the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from raykd.signals import TeacherSignals


@dataclass
class Generation:
    """Generated continuations: `tokens[b]` holds only the new tokens of prompt b."""

    tokens: list[np.ndarray]
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return sum(len(t) for t in self.tokens) / max(self.seconds, 1e-9)


class HFTeacherBackend:
    def __init__(self, path: str, dtype: str = "float32", device: str | None = None, max_batch_tokens: int = 8192):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = int(self.model.config.pad_token_id or 0)

    def _check(self, sequences: list[np.ndarray], top_k: int) -> None:
        if not 1 <= top_k <= self.vocab_size:
            raise ValueError(f"top_k={top_k} must be in [1, vocab_size={self.vocab_size}]")
        for i, s in enumerate(sequences):
            if len(s) < 2:
                raise ValueError(f"sequence {i} has {len(s)} tokens; scoring needs at least 2")
            if len(s) > self.max_model_len:
                raise ValueError(f"sequence {i} has {len(s)} tokens > max_model_len {self.max_model_len}")

    def score(self, sequences: list[np.ndarray], top_k: int) -> TeacherSignals:
        """Top-k next-token log-probs (T = 1) at every position but the last of each sequence."""
        self._check(sequences, top_k)
        parts: list[TeacherSignals] = []
        batch: list[np.ndarray] = []
        longest = 0
        for seq in sequences:
            longest_if_added = max(longest, len(seq))
            if batch and longest_if_added * (len(batch) + 1) > self.max_batch_tokens:
                parts.append(self._score_batch(batch, top_k))
                batch, longest_if_added = [], len(seq)
            batch.append(np.asarray(seq))
            longest = longest_if_added
        if batch:
            parts.append(self._score_batch(batch, top_k))
        return TeacherSignals.concat(parts)

    def _score_batch(self, sequences: list[np.ndarray], top_k: int) -> TeacherSignals:
        torch = self.torch
        lengths = [len(s) for s in sequences]
        width = max(lengths)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(sequences), width), dtype=torch.long)
        for b, s in enumerate(sequences):
            ids[b, : len(s)] = torch.as_tensor(np.asarray(s, np.int64))
            attn[b, : len(s)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits
            # Rows: positions 0 .. L_b - 2 of each sequence (the next-token distributions we have labels for).
            rows = torch.cat([logits[b, : n - 1] for b, n in enumerate(lengths)]).float()  # (N, V)
            targets = torch.cat([ids[b, 1:n] for b, n in enumerate(lengths)]).to(rows.device)  # (N,)
            lse = torch.logsumexp(rows, -1)  # (N,)
            top_vals, top_ids = rows.topk(top_k, dim=-1)
            if top_k < rows.shape[-1]:
                # Exact tail mass: logsumexp over the logits that are not in the top-k.
                tail = torch.logsumexp(rows.scatter(-1, top_ids, float("-inf")), -1) - lse
            else:
                tail = torch.full_like(lse, float("-inf"))
            target = rows.gather(-1, targets[:, None])[:, 0] - lse
            top_lp = top_vals - lse[:, None]
        offsets = np.concatenate([[0], np.cumsum([n - 1 for n in lengths])]).astype(np.int64)
        return TeacherSignals(
            top_ids.to(torch.int32).cpu().numpy(),
            top_lp.cpu().numpy(),
            tail.cpu().numpy(),
            target.cpu().numpy(),
            offsets,
        )

    def generate(self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0) -> Generation:
        """Greedy (temperature 0) or sampled continuations, one prompt at a time (no padding effects)."""
        torch = self.torch
        out: list[np.ndarray] = []
        start = time.perf_counter()
        with torch.inference_mode():
            for p in prompts:
                ids = torch.as_tensor(np.asarray(p, np.int64))[None].to(self.device)
                kwargs = {"do_sample": temperature > 0}
                if temperature > 0:
                    kwargs["temperature"] = temperature
                gen = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                    pad_token_id=self.pad_id, **kwargs,
                )
                out.append(gen[0, ids.shape[1]:].cpu().numpy().astype(np.int32))
        return Generation(out, time.perf_counter() - start)
