"""transformers backend of the teacher: scoring (teacher forcing) and generation in-process.

    backend = HFTeacherBackend("/path/to/hf_dir", dtype="float32")
    signals = backend.score([np.array([1, 5, 9, 2])], top_k=20)   # TeacherSignals with 3 rows
    served = ServedHFBackend("/path/to/hf_dir")                    # the TeacherBackend a Serve replica runs

`HFTeacherBackend` is synchronous: the evaluation runs students with it, so teacher and student generation
speed are measured by the same code. `ServedHFBackend` is its `TeacherBackend` (raykd/teacher/backend.py)
for the Serve replica: one forward at a time, in a thread, so the replica's event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np

from raykd.signals import TeacherSignals
from raykd.teacher.backend import Generation


def _fused_kernel() -> bool:
    """Is the CPU top-k kernel importable (numba, which vLLM brings)? Else torch ops (exact, slower on a CPU)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


class HFTeacherBackend:
    def __init__(self, path: str, dtype: str = "float32", device: str | None = None, max_batch_tokens: int = 8192):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # A masked LM (BERT-style, raykd/mlm/) is scored at given positions instead of next tokens.
        self.is_mlm = any(a.endswith("ForMaskedLM") for a in AutoConfig.from_pretrained(path).architectures or [])
        auto = AutoModelForMaskedLM if self.is_mlm else AutoModelForCausalLM
        self.model = auto.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = int(self.model.config.pad_token_id or 0)
        self._fused = self.device == "cpu" and _fused_kernel()

    def _check(self, sequences: list[np.ndarray], top_k: int) -> None:
        if not 1 <= top_k <= self.vocab_size:
            raise ValueError(f"top_k={top_k} must be in [1, vocab_size={self.vocab_size}]")
        for i, s in enumerate(sequences):
            if len(s) < 2:
                raise ValueError(f"sequence {i} has {len(s)} tokens; scoring needs at least 2")
            if len(s) > self.max_model_len:
                raise ValueError(f"sequence {i} has {len(s)} tokens > max_model_len {self.max_model_len}")

    def score(self, sequences: list[np.ndarray], top_k: int, extras: dict[str, list[int]] | None = None,
              positions: list[np.ndarray] | None = None, labels: list[np.ndarray] | None = None) -> TeacherSignals:
        """Top-k next-token log-probs (T = 1) at every position but the last of each sequence.

        A masked-LM teacher instead scores `positions[b]` (the masked positions of sequence b, one row each)
        with `labels[b]` (the original tokens there) as targets: rows are then masked positions.

        `extras` adds, per row (position j of sequence b, as the top-k rows), float32 arrays in `signals.extras`:
        "hidden_states": (N, P, hidden) for the P requested HF `hidden_states` indices (0 = embeddings,
        l = output of layer l); "attentions": (N, P, heads, K) for the P requested 0-based layers: query j's
        attention over keys 0..K-1, K = the longest sequence of the request (zeros past a sequence's end).
        """
        self._check(sequences, top_k)
        if self.is_mlm != (positions is not None) or (positions is None) != (labels is None):
            raise ValueError("a masked-LM teacher scores given positions and labels; a causal LM takes neither"
                             if self.is_mlm else "positions/labels are for masked-LM teachers only")
        extras = {k: list(v) for k, v in (extras or {}).items() if v}
        unknown = sorted(set(extras) - {"hidden_states", "attentions"})
        if unknown:
            raise ValueError(f"unknown extras {unknown}; this backend returns 'hidden_states' and 'attentions'")
        key_width = max(len(s) for s in sequences)
        parts: list[TeacherSignals] = []
        batch: list[np.ndarray] = []
        first, longest = 0, 0  # first: index of batch[0] in sequences (for the MLM positions)
        for i, seq in enumerate(sequences):
            longest_if_added = max(longest, len(seq))
            if batch and longest_if_added * (len(batch) + 1) > self.max_batch_tokens:
                parts.append(self._score_batch(batch, top_k, extras, key_width, *self._mlm_rows(positions, labels, first, i)))
                batch, longest_if_added, first = [], len(seq), i
            batch.append(np.asarray(seq))
            longest = longest_if_added
        if batch:
            parts.append(self._score_batch(batch, top_k, extras, key_width,
                                           *self._mlm_rows(positions, labels, first, len(sequences))))
        return TeacherSignals.concat(parts)

    @staticmethod
    def _mlm_rows(positions, labels, start: int, stop: int) -> tuple:
        if positions is None:
            return None, None
        return [np.asarray(p, np.int64) for p in positions[start:stop]], [np.asarray(t, np.int64) for t in labels[start:stop]]

    @contextlib.contextmanager
    def _eager_attention(self, needed: bool):
        """Switch to the eager attention kernel for one forward: SDPA does not return attention weights."""
        before = self.model.config._attn_implementation
        if needed and before != "eager":
            self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if self.model.config._attn_implementation != before:
                self.model.set_attn_implementation(before)

    def _extras(self, out, rows_at: list, extras: dict[str, list[int]], key_width: int) -> dict[str, np.ndarray]:
        """Row-aligned hidden states / attention maps of one forward (see `score`); rows_at[b]: positions of b."""
        torch = self.torch
        arrays = {}
        if "hidden_states" in extras:
            layers = torch.stack([out.hidden_states[i] for i in extras["hidden_states"]], 2)  # (B, L, P, H)
            arrays["hidden_states"] = torch.cat([layers[b, r] for b, r in enumerate(rows_at)]).float().cpu().numpy()
        if "attentions" in extras:
            maps = torch.stack([out.attentions[i] for i in extras["attentions"]], 1)  # (B, P, heads, L, L)
            maps = maps.permute(0, 3, 1, 2, 4)  # (B, L, P, heads, L): rows are query positions
            maps = torch.nn.functional.pad(maps, (0, key_width - maps.shape[-1]))
            arrays["attentions"] = torch.cat([maps[b, r] for b, r in enumerate(rows_at)]).float().cpu().numpy()
        return arrays

    def _score_batch(self, sequences: list[np.ndarray], top_k: int, extras: dict[str, list[int]] | None = None,
                     key_width: int = 0, positions: list[np.ndarray] | None = None,
                     labels: list[np.ndarray] | None = None) -> TeacherSignals:
        torch = self.torch
        lengths = [len(s) for s in sequences]
        width = max(lengths)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(sequences), width), dtype=torch.long)
        for b, s in enumerate(sequences):
            ids[b, : len(s)] = torch.as_tensor(np.asarray(s, np.int64))
            attn[b, : len(s)] = 1
        extras = extras or {}
        with torch.inference_mode(), self._eager_attention("attentions" in extras):
            out = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
                             output_hidden_states="hidden_states" in extras, output_attentions="attentions" in extras)
            logits = out.logits
            # Rows: positions 0 .. L_b - 2 of each sequence (the next-token distributions we have labels for);
            # for a masked LM the given positions, with the given labels as targets.
            if positions is None:
                rows_at = [torch.arange(n - 1) for n in lengths]
                targets = torch.cat([ids[b, 1:n] for b, n in enumerate(lengths)])  # (N,)
            else:
                rows_at = [torch.as_tensor(p) for p in positions]
                targets = torch.cat([torch.as_tensor(t) for t in labels])
            if self._fused:
                top_ids, top_lp, tail, target = self._fused_rows(logits, rows_at, targets, top_k, positions is None)
            else:
                top_ids, top_lp, tail, target = self._torch_rows(logits, rows_at, targets, top_k)
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows_at])]).astype(np.int64)
        return TeacherSignals(
            top_ids, top_lp, tail, target, offsets,
            self._extras(out, rows_at, extras, key_width) if extras else {},
        )

    def _torch_rows(self, logits, rows_at: list, targets, top_k: int) -> tuple[np.ndarray, ...]:
        """(ids, log-probs, tail, target) of the rows, by torch ops on the logits' device, exact tail mass."""
        torch = self.torch
        rows = torch.cat([logits[b, r] for b, r in enumerate(rows_at)]).float()  # (N, V)
        targets = targets.to(rows.device)
        lse = torch.logsumexp(rows, -1)  # (N,)
        top_vals, top_ids = rows.topk(top_k, dim=-1)
        if top_k < rows.shape[-1]:  # exact tail mass: logsumexp over the logits that are not in the top-k
            tail = torch.logsumexp(rows.scatter(-1, top_ids, float("-inf")), -1) - lse
        else:
            tail = torch.full_like(lse, float("-inf"))
        target = rows.gather(-1, targets[:, None])[:, 0] - lse
        return (top_ids.to(torch.int32).cpu().numpy(), (top_vals - lse[:, None]).cpu().numpy(), tail.cpu().numpy(),
                target.cpu().numpy())

    def _fused_rows(self, logits, rows_at: list, targets, top_k: int, causal: bool) -> tuple[np.ndarray, ...]:
        """The same on CPU in one pass per row (raykd/teacher/topk_kernel.py, the vLLM path's kernel): no (N, V)
        copies, a tail from the top-k in float64 (raykd/teacher/logprob_arrays.py). A causal sequence's rows
        0..n-2 are a contiguous view of its logits."""
        from raykd.teacher.logprob_arrays import tail_logprob
        from raykd.teacher.topk_kernel import topk_packed

        packed = np.empty((int(sum(len(r) for r in rows_at)), 2 * top_k + 1), np.float32)
        a = 0
        for b, r in enumerate(rows_at):
            n = len(r)
            topk_packed(logits[b, :n] if causal else logits[b, r], targets[a : a + n], top_k, packed[a : a + n])
            a += n
        lp = np.ascontiguousarray(packed[:, :top_k])
        return (np.ascontiguousarray(packed[:, top_k : 2 * top_k]).view(np.int32), lp,
                tail_logprob(lp, logits.shape[-1]), np.ascontiguousarray(packed[:, 2 * top_k]))

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


class ServedHFBackend:
    """`HFTeacherBackend` as a `TeacherBackend`: requests run one at a time (concurrent forwards would only
    fight over the replica's cores), each in a worker thread."""

    returns_extras = True
    scoring = "transformers"

    def __init__(self, path: str, dtype: str = "float32"):
        self.hf = HFTeacherBackend(path, dtype=dtype)
        self.vocab_size, self.max_model_len = self.hf.vocab_size, self.hf.max_model_len
        self.max_top_k = self.hf.vocab_size
        self._lock = asyncio.Lock()

    async def score(self, token_ids: list[np.ndarray], top_k: int, extras: dict[str, list[int]] | None = None,
                    positions: list[np.ndarray] | None = None, labels: list[np.ndarray] | None = None) -> TeacherSignals:
        async with self._lock:
            return await asyncio.to_thread(self.hf.score, token_ids, top_k, extras, positions, labels)

    async def generate(self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0, *,
                       top_p: float = 1.0, seed: int | None = None, logprobs_k: int = 0) -> Generation:
        if top_p != 1.0 or seed is not None or logprobs_k:
            raise ValueError("top_p, seed and logprobs_k of generate need teacher.backend: vllm")
        async with self._lock:
            return await asyncio.to_thread(self.hf.generate, prompts, max_new_tokens, temperature)

    async def start(self) -> None:
        """Nothing left to start: the model loaded in the constructor."""

    async def check_health(self) -> None:
        """In-process weights: nothing that can die on its own."""

    def shutdown(self) -> None:
        """Nothing to stop: the weights go with the replica."""
