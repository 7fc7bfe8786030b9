"""On-policy rollouts in the Train worker (`loss.on_policy`): the student writes, the teacher grades.

    rollouts = OnPolicyRollouts(cfg, student, score, fingerprint, rank=rank, engine=None)   # engine: vllm's
    submit = rollouts.data_submit(submit, start_step)          # no teacher scoring for on-policy steps' data
    for step ...:
        batch, signals = next(prefetch)                        # the step's data batch (raykd/train/prefetch.py)
        batch, signals, on_policy = rollouts.step_batch(step, batch, signals)
        trainer.step(step, [MicroBatch(batch.ids, signals, batch.weight, batch.mask, on_policy=on_policy)])
        rollouts.after_step(step, trainer.placed)               # engine vllm: the weight sync
    rollouts.metrics()                                          # on_policy_fraction, rollout_tokens_per_s, ...

On the steps `raykd.loss.on_policy.on_policy_step` picks (a fraction lambda, the same on every worker), the
batch is replaced by B sequences `prompt (P tokens) + continuation (G tokens)`: the prompts are cut from a data
batch (`rollout_prompts`), the continuation is sampled by the worker's own student (engine hf: no grad, KV cache,
`sample_continuations`) or by the student rollout deployment (engine vllm: raykd/train/rollout_engine.py, synced
every sync_every steps in `after_step`), and the teacher deployment scores the whole sequence through the usual
wire format (`score_packed`, raykd/signals/format.py): its top-k for objective divergence, k = 1 for sampled_reverse_kl
(which uses the sampled token's `target_logprob` only). The loss mask is 1 on the G generated tokens only.
The signal cache is bypassed: rollout tokens are new every step, so caching them would only fill the disk.

Staleness. With `max_staleness` S > 0, at step n the worker writes the rollouts of step n + S (prompts from
step n's data batch) with its current weights and sends them to the teacher before it trains step n: the teacher
scores them while the student trains, and step n + S trains on tokens written S updates earlier (GKD /
asynchronous RL). With S = 0 a step's rollouts are written right before it, with the weights it updates, and
the worker waits for the teacher. On-policy steps with nothing pending (the first S steps of a run or of a resumed
run) are written at once (staleness 0). `rollout_staleness` logs the staleness actually trained on.

Overlap. Rollouts written ahead (S > 0) are generated on a background thread while the step trains: engine hf
samples with a copy of the student taken at the write (the weights of step n, so the tokens are exactly those a
synchronous write would give; it costs one more copy of the student's weights, on its own CUDA stream on a GPU),
engine vllm waits for its deployment there; the thread then sends the sequences to the teacher. The step that
trains on them waits for what is not done yet (`rollout_generation_wait_s`, beside `rollout_teacher_wait_s`).

Pure torch + numpy (the teacher is a callable returning something with `.result()`): tests run it without Ray.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raykd.loss.on_policy import on_policy_step
from raykd.train.batches import StepBatch


def rollout_prompts(ids: np.ndarray, mask: np.ndarray, source: str, prompt_tokens: int) -> np.ndarray:
    """`(B, P)` prompts from a data batch `ids, mask (B, L)` (mask: raykd/data/records.py, 1 = trained token).

    block: the first P tokens. records: the P tokens before the first position f >= P where a trained span
    starts (mask[f] = 1, mask[f - 1] = 0: an assistant turn or a completion begins), i.e. the prompt part of a
    record with the context before it; a row without such a position falls back to its first P tokens."""
    ids, p = np.asarray(ids), prompt_tokens
    if p >= ids.shape[1]:
        raise ValueError(f"prompt_tokens={p} must be < the sequence length {ids.shape[1]}")
    if source == "block":
        return ids[:, :p].copy()
    if source != "records":
        raise ValueError(f"prompt source must be 'block' or 'records', got {source!r}")
    m = np.asarray(mask) > 0
    starts = m[:, p:] & ~m[:, p - 1 : -1]  # (B, L - P): a trained span starts at position P + j
    out = ids[:, :p].copy()
    for b in np.flatnonzero(starts.any(1)):
        f = p + int(np.argmax(starts[b]))
        out[b] = ids[b, f - p : f]
    return out


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """`(B,)` next tokens from `(B, V)` logits: greedy at temperature 0, else sampled from softmax(z / T),
    restricted to the smallest set of tokens whose mass reaches top_p."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # tokens before which the mass is still below top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


@torch.no_grad()
def sample_continuations(model: Any, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                         top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """`(B, G)` tokens the causal LM `model` writes after `prompts (B, P)`: exactly G each (no stop at EOS, so the
    policy is the plain softmax and every row has the same length), with its KV cache."""
    generator = generator or torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=prompts, use_cache=True)
        tokens = []
        for t in range(max_new_tokens):
            nxt = _pick(out.logits[:, -1], temperature, top_p, generator)  # (B,)
            tokens.append(nxt)
            if t + 1 < max_new_tokens:
                out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
        return torch.stack(tokens, 1)
    finally:
        model.train(was_training)


def rollout_batch(prompts: np.ndarray, continuation: np.ndarray, data: StepBatch) -> StepBatch:
    """The `(B, P + G)` batch of an on-policy step: loss mask 1 on the generated tokens only; per-token weights
    (data.weight_field) are those of the prompt's last token, as for sequence-level KD."""
    b, p = prompts.shape
    ids = np.concatenate([prompts, continuation], 1).astype(np.int32)
    mask = np.zeros(ids.shape, np.uint8)
    mask[:, p:] = 1
    weight = None if data.weight is None else np.repeat(np.asarray(data.weight)[:, p - 1 : p], ids.shape[1], 1)
    return StepBatch(ids, mask, weight, data.index)


@dataclass
class _Pending:
    batch: StepBatch
    response: Any  # .result() -> packed signals (bytes / Arrow table) or TeacherSignals
    written_at: int  # the step whose weights wrote it
    gen_seconds: float = 0.0


def _done(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


class OnPolicyRollouts:
    """One worker's on-policy steps (module doc). `score(sequences, top_k)` sends sequences to the teacher
    (the deployment's `score_packed`) and returns something with `.result()`."""

    def __init__(self, cfg: Any, student: Any, score: Callable[[list[np.ndarray], int], Any], fingerprint: str | None,
                 *, rank: int = 0, device: Any = "cpu", engine: Any = None):
        self.cfg, self.op = cfg, cfg.loss.on_policy
        self.engine = engine  # engine vllm: a VllmRolloutEngine (raykd/train/rollout_engine.py); None: hf
        self.student, self.score, self.fingerprint = student, score, fingerprint
        self.rank, self.device = rank, torch.device(device)
        self.top_k = 1 if self.op.objective == "sampled_reverse_kl" else cfg.loss.top_k
        self.pending: dict[int, Future] = {}  # step -> Future[_Pending] (done at once when written synchronously)
        self.wait_seconds = 0.0  # cumulative time blocked on the teacher for rollouts
        self.teacher_tokens = 0  # cumulative tokens sent to the teacher for rollouts
        self._window = {"steps": 0, "on": 0, "gen_tokens": 0, "gen_seconds": 0.0, "staleness": 0.0, "wait": 0.0,
                        "gen_wait": 0.0}
        self._pool: ThreadPoolExecutor | None = None  # the background writer (rollouts written ahead)
        self._copy: Any = None  # engine hf: the student's weights at the last write ahead

    def on_policy(self, step: int) -> bool:
        return on_policy_step(step, self.op.fraction)

    def data_submit(self, submit: Callable[[StepBatch], Any] | None, start_step: int) -> Callable[[StepBatch], Any]:
        """The prefetcher's submit for data batches (called once per step, in order): None (no teacher request)
        for on-policy steps, whose data only lends its prompts."""
        steps = iter(range(start_step, 1 << 62))

        def fn(batch: StepBatch) -> Any:
            return None if self.on_policy(next(steps)) or submit is None else submit(batch)

        return fn

    def _write(self, step: int, data: StepBatch, written_at: int, ahead: bool = False) -> None:
        """Sample continuations of `data`'s prompts (hf: the weights of step `written_at`; vllm: the deployment's
        last sync) and send prompt + continuation to the teacher; `ahead`: on the background thread."""
        op = self.op
        prompts = rollout_prompts(data.ids, data.mask, op.prompt, op.prompt_tokens)
        seed = self.cfg.seed * 1_000_003 + step * 7919 + self.rank * 104_729  # vllm: prompt b draws with seed + b
        if self.engine is not None:  # the rollout deployment, serving the weights of its last sync
            written_at = self.engine.version
        if not ahead:
            self.pending[step] = _done(self._generate_and_send(prompts, seed, data, written_at, self.student, None))
            return
        model, after = None, None
        if self.engine is None:  # a copy of this step's weights: the student trains on while the copy writes
            for fut in self.pending.values():  # the copy is rewritten now: no earlier write may still sample with it
                fut.result()
            model = self._snapshot()
            after = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="raykd-rollouts")
        self.pending[step] = self._pool.submit(self._generate_and_send, prompts, seed, data, written_at, model, after)

    def _snapshot(self) -> Any:
        with torch.no_grad():
            if self._copy is None:
                self._copy = copy.deepcopy(self.student)
            else:
                for dst, src in zip(self._copy.state_dict().values(), self.student.state_dict().values()):
                    dst.copy_(src)
        return self._copy

    def _generate_and_send(self, prompts: np.ndarray, seed: int, data: StepBatch, written_at: int, model: Any,
                           after: Any) -> _Pending:
        op = self.op
        start = time.perf_counter()
        if self.engine is not None:
            cont = self.engine.generate(prompts, op.max_new_tokens, op.temperature, op.top_p, seed)
        else:
            stream = None
            if after is not None:  # a GPU: a stream of its own, after the copy the trainer's stream made
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(after)
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                gen = torch.Generator().manual_seed(seed)
                cont = sample_continuations(model, torch.as_tensor(prompts, dtype=torch.long, device=self.device),
                                            op.max_new_tokens, op.temperature, op.top_p, gen).cpu().numpy()
        gen_seconds = time.perf_counter() - start
        batch = rollout_batch(prompts, cont, data)
        return _Pending(batch, self.score(list(batch.ids), self.top_k), written_at, gen_seconds)

    def after_step(self, step: int, placed: Any) -> None:
        """After step `step`'s update (every worker): engine vllm pushes the weights every sync_every steps."""
        if self.engine is not None and (step + 1) % self.op.sync_every == 0:
            for fut in self.pending.values():  # no generation runs while the deployment reloads its weights
                fut.result()
            self.engine.sync(placed, step + 1)

    def step_batch(self, step: int, data: StepBatch, signals: Any) -> tuple[StepBatch, Any, bool]:
        """`(batch, signals, on_policy)` to train step `step` on, given the step's data batch and its signals."""
        op, last = self.op, self.cfg.train.max_steps - 1
        self._window["steps"] += 1
        on = self.on_policy(step)
        if on and step not in self.pending:  # nothing written ahead (staleness 0, a run's first steps)
            self._write(step, data, step)
        ahead = step + op.max_staleness
        if op.max_staleness and ahead <= last and self.on_policy(ahead) and ahead not in self.pending:
            self._write(ahead, data, step, ahead=True)  # written and scored while this step trains
        if not on:
            return data, signals, False
        start = time.perf_counter()
        pending = self.pending.pop(step).result()  # the background writer's generation, if it is not done
        written = time.perf_counter()
        rollout_signals = self._receive(pending.response.result())
        waited = time.perf_counter() - written
        self.wait_seconds += waited
        self.teacher_tokens += pending.batch.ids.size
        w = self._window
        w["on"] += 1
        w["wait"] += waited
        w["gen_wait"] += written - start
        w["gen_seconds"] += pending.gen_seconds
        w["gen_tokens"] += pending.batch.ids.size - pending.batch.ids.shape[0] * op.prompt_tokens
        w["staleness"] += step - pending.written_at
        return pending.batch, rollout_signals, True

    def _receive(self, reply: Any) -> Any:
        from raykd.signals.format import from_ipc, unpack

        if isinstance(reply, (bytes, bytearray)):
            reply = from_ipc(reply)
        if hasattr(reply, "schema"):  # packed Arrow rows: check the teacher and k, unpack
            return unpack(reply, expect_fingerprint=self.fingerprint, expect_top_k=self.top_k)
        return reply  # TeacherSignals already

    def metrics(self) -> dict[str, float]:
        """The window's on-policy metrics since the last call, averaged over the workers (every worker calls it at
        the same step): on_policy_fraction, rollout_tokens_per_s, rollout_staleness, rollout_teacher_wait_s and
        rollout_generation_wait_s (means over the window's on-policy steps), rollout_teacher_tokens (cumulative, summed over workers)."""
        w = self._window
        on = max(w["on"], 1)
        values = {
            "on_policy_fraction": w["on"] / max(w["steps"], 1),
            "rollout_tokens_per_s": w["gen_tokens"] / w["gen_seconds"] if w["gen_seconds"] > 0 else 0.0,
            "rollout_staleness": w["staleness"] / on,
            "rollout_teacher_wait_s": w["wait"] / on,
            "rollout_generation_wait_s": w["gen_wait"] / on,
            "rollout_teacher_tokens": float(self.teacher_tokens),
        }
        self._window = {k: 0 * v for k, v in w.items()}
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)  # GPU under NCCL
            world = dist.get_world_size()
            dist.all_reduce(t)
            values = {k: v if k == "rollout_teacher_tokens" else v / world for k, v in zip(values, t.tolist())}
        return values


def teacher_score_fn(handle: Any) -> Callable[[list[np.ndarray], int], Any]:
    """`score(sequences, top_k)` through the teacher deployment's packed path, no extras, no cache."""
    return lambda sequences, top_k: handle.score_packed.remote([np.asarray(s) for s in sequences], top_k, None)
