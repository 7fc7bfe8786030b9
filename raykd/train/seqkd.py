"""Sequence-level knowledge distillation (Kim & Rush 2016): the student trains on the teacher's own text.

    blocks = teacher_sequences(handle, data.take(0, 256), cfg.seqkd)   # TokenBlocks (N', P + G)

Each training block's first `prompt_tokens` tokens (P) are a prompt; the teacher deployment's
`generate` writes `max_new_tokens` (G) continuation tokens (greedy by default, the usual stand-in for
the paper's beam search), and the student trains on prompt + continuation. With `loss.alpha: 0` the
loss is cross-entropy on the teacher's tokens: pure sequence-level KD. With alpha > 0 the same
sequences are also scored by the teacher for token-level KD (word-level + sequence-level, as in the
paper's best setting). By default only continuation tokens are trained on: the blocks' loss mask is 0 on
the prompt (the one loss mask of raykd/data/records.py); `loss_on_prompt: true` keeps the data's own mask
on the prompt as well. The blocks go to the object store as a BlockData (raykd/data/ingest.py).

Requests go out `request_prompts` at a time with a few in flight, so several teacher replicas work in
parallel; progress is printed with rate and ETA. A continuation shorter than G (a backend that stops at
EOS) is dropped, and the count is reported. Per-sample weights follow the prompt (the weight of its
last token).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from raykd.config import ConfigError, SeqKDConfig
from raykd.console import Progress, say as _say
from raykd.data.blocks import TokenBlocks

_INFLIGHT = 4


def prompts_of(blocks: TokenBlocks, cfg: SeqKDConfig) -> TokenBlocks:
    """`(M, P)` prompts: the first P tokens of the first `max_prompts` blocks."""
    if cfg.prompt_tokens >= blocks.ids.shape[1]:
        raise ConfigError(f"seqkd.prompt_tokens={cfg.prompt_tokens} must be < the sequence length {blocks.ids.shape[1]}")
    head = blocks[: cfg.max_prompts or len(blocks)]
    p = cfg.prompt_tokens
    return TokenBlocks(head.ids[:, :p], head.mask[:, :p], None if head.weight is None else head.weight[:, :p])


def teacher_sequences(
    handle,  # DeploymentHandle of the teacher (raykd/teacher/service.py), or anything with .generate.remote
    blocks: TokenBlocks,  # training blocks (ids, mask, weight) whose starts are the prompts
    cfg: SeqKDConfig,
    say: Callable[[str], None] = _say,
) -> TokenBlocks:
    """`(N', P + G)` prompt + teacher continuation, with the loss mask and per-token weights (or None)."""
    prompts = prompts_of(blocks, cfg)
    n, size, g = len(prompts), cfg.request_prompts, cfg.max_new_tokens
    out: list[np.ndarray | None] = [None] * n
    pending: deque = deque()
    next_start, progress = 0, Progress(n)
    say(f"seqkd: teacher writes {g} tokens for each of {n} prompts of {cfg.prompt_tokens} tokens")
    while next_start < n or pending:
        while next_start < n and len(pending) < _INFLIGHT:
            chunk = [np.asarray(p) for p in prompts.ids[next_start : next_start + size]]
            pending.append((next_start, handle.generate.remote(chunk, g, cfg.temperature)))
            next_start += len(chunk)
        start, response = pending.popleft()
        for i, toks in enumerate(response.result().tokens):
            toks = np.asarray(toks, np.int32)
            out[start + i] = toks if len(toks) == g else None
        done = min(n, start + size)
        if progress.due(done):
            say(f"seqkd: {done}/{n} prompts ({progress.rate_eta(done, 'prompts')})")
    keep = [i for i, toks in enumerate(out) if toks is not None]
    if not keep:
        raise RuntimeError(f"seqkd: the teacher wrote fewer than {g} tokens for every prompt")
    if len(keep) < n:
        say(f"seqkd: dropped {n - len(keep)} of {n} continuations shorter than {g} tokens")
    ids = np.concatenate([prompts.ids[keep], np.stack([out[i] for i in keep])], 1).astype(np.int32)
    prompt_mask = prompts.mask[keep] if cfg.loss_on_prompt else np.zeros((len(keep), cfg.prompt_tokens), np.uint8)
    mask = np.concatenate([prompt_mask, np.ones((len(keep), g), np.uint8)], 1)
    mask[:, 0] = 0
    weight = None
    if prompts.weight is not None:  # the continuation carries the weight of the record its prompt ends in
        weight = np.repeat(prompts.weight[keep, -1:], ids.shape[1], 1).astype(np.float32)
    return TokenBlocks(ids, mask, weight)
