"""Stage teachers of a pipeline: domain teachers by continued pre-training, and teacher-written answers.

    path = adapt_teacher(base_path, base_fp, train_blocks, val_blocks, AdaptTeacherConfig(steps=40))
    jsonl = teacher_responses(handle, tokenizer, records, ResponsesConfig(), teacher_fp)

`adapt_teacher` turns a general teacher into a domain teacher: AdamW on the domain data set's training
blocks (never its held-out tail), saved as an HF directory with the *base teacher's tokenizer*, so the
same student can learn from both. It runs in the driver before the stage's Ray work, with progress (rate,
ETA), and is cached under `<cache>/teachers/adapted-<fingerprint>` (fingerprint = base teacher, data,
settings, seed) with a per-fingerprint lock and an atomic move, like raykd/teacher/build.py.

`teacher_responses` is the data step of instruction distillation: the stage's teacher (the Serve
deployment, so a 7B teacher never enters the driver) answers each prompt, and the pairs are written
as jsonl for the stage to train on. Cached per (teacher fingerprint, prompts, settings).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from functools import partial
from pathlib import Path

import numpy as np

from raykd import console
from raykd.config import default_cache_dir
from raykd.config.pipeline import AdaptTeacherConfig, ResponsesConfig
from raykd.console import Progress
from raykd.files import atomic_dir, build_once

ADAPT_FORMAT = 1
ADAPT_META = "raykd_adapted.json"
_LOG_EVERY_S = 10.0

_say = partial(console.say, scope="raykd.pipeline")


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def adapted_fingerprint(base_fingerprint: str, train: np.ndarray, cfg: AdaptTeacherConfig, seed: int) -> str:
    data = np.ascontiguousarray(train, dtype=np.int32)
    settings = json.dumps(cfg.model_dump(exclude={"dataset"}), sort_keys=True)
    return _sha(str(ADAPT_FORMAT), base_fingerprint, str(data.shape), data.tobytes(), settings, str(seed))


def adapt_teacher(
    base_path: str,
    base_fingerprint: str,
    train: np.ndarray,  # (N, L) int32 training blocks of the domain data set, base tokenizer
    val: np.ndarray,  # (M, L) int32 held-out blocks (reported before/after, never trained on)
    cfg: AdaptTeacherConfig,
    seed: int = 0,
    cache_dir: Path | None = None,
    threads: int = 1,
) -> tuple[Path, dict]:
    """The adapted teacher's directory (built once) and its build record (losses before/after, timings).

    `threads`: torch threads (the pipeline passes the CPUs of a teacher replica). More threads than free
    cores make every step wait on descheduled threads: on a shared 2-core machine 1 is ~10x faster than 2.
    """
    fp = adapted_fingerprint(base_fingerprint, train, cfg, seed)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = root / "teachers" / f"adapted-{fp}"
    build_once(out, lambda p: (p / ADAPT_META).is_file(), lambda: _train(base_path, train, val, cfg, seed, out, threads))
    return out, json.loads((out / ADAPT_META).read_text())


def _train(base_path: str, train: np.ndarray, val: np.ndarray, cfg: AdaptTeacherConfig, seed: int, out: Path,
           threads: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raykd.eval.heldout import heldout_loss
    from raykd.loss.schedules import lr_factor

    from raykd.models import torch_threads

    t0 = time.monotonic()
    with torch_threads(threads):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
            before, _ = heldout_loss(model, val)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
            rng = np.random.default_rng([seed, 7])
            model.train()
            losses: list[float] = []
            progress = Progress(cfg.steps, every_s=_LOG_EVERY_S)
            tokens_per_step = cfg.batch_size * train.shape[1]
            _say(f"adapting teacher {base_path}: {cfg.steps} steps on {len(train)} sequences of {train.shape[1]}")
            for step in range(cfg.steps):
                for g in opt.param_groups:
                    g["lr"] = lr_factor(step, cfg.warmup_steps, step / max(1, cfg.steps - 1), base=cfg.lr)
                ids = torch.as_tensor(train[rng.integers(0, len(train), cfg.batch_size)], dtype=torch.long)
                logits = model(input_ids=ids).logits[:, :-1]
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(float(loss.detach()))
                if progress.due(step + 1):
                    _say(f"  adapt step {step + 1}/{cfg.steps} loss {np.mean(losses[-5:]):.4f} "
                         f"{progress.rate_eta(step + 1, 'tok', scale=tokens_per_step)}")
            after, _ = heldout_loss(model, val)
    record = {
        "format": ADAPT_FORMAT, "base": base_path, "config": cfg.model_dump(), "seed": seed,
        "train_sequences": int(len(train)), "heldout_loss_before": before, "heldout_loss_after": after,
        "first_loss": losses[0], "last_loss": float(np.mean(losses[-5:])), "seconds": time.monotonic() - t0,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(tmp)  # the base tokenizer, byte for byte
        (tmp / ADAPT_META).write_text(json.dumps(record, indent=2) + "\n")
    _say(f"adapted teacher ready in {record['seconds']:.0f}s: held-out loss {before:.3f} -> {after:.3f} ({out})")
    return record


def _cut(text: str, stop_after: str | None) -> str:
    if stop_after and stop_after in text:
        end = text.index(stop_after)
        newline = text.find("\n", end)
        return text[: newline if newline >= 0 else len(text)]
    return text


def teacher_responses(
    handle,  # DeploymentHandle of the stage's teacher (raykd/teacher/service.py)
    tokenizer,
    records: list[dict],
    cfg: ResponsesConfig,
    teacher_fingerprint: str,
    max_model_len: int,
    cache_dir: Path | None = None,
) -> Path:
    """jsonl of `{prompt_field: prompt, response_field: teacher's answer}`, one per prompt (cached)."""
    from raykd.data.tasks import write_jsonl

    prompts = [str(r[cfg.prompt_field]) for r in records[: cfg.max_prompts]]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = _sha(teacher_fingerprint, json.dumps(prompts), json.dumps(cfg.model_dump(), sort_keys=True))
    out = root / "responses" / f"{key}.jsonl"
    if out.is_file():
        _say(f"teacher answers cached: {out}")
        return out
    eos = tokenizer.eos_token_id
    keep = max(1, max_model_len - cfg.max_new_tokens)
    ids = [np.asarray(tokenizer.encode(p + "\n\n", add_special_tokens=False)[-keep:], np.int32) for p in prompts]
    answers: list[str] = []
    chunk, progress = cfg.request_prompts, Progress(len(ids), every_s=0)
    pending: deque = deque()  # DeploymentResponses in submission order: at most max_inflight outstanding

    def collect() -> None:
        for toks in pending.popleft().result().tokens:
            toks = [int(t) for t in np.asarray(toks)]
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos)]
            answers.append(_cut(tokenizer.decode(toks, skip_special_tokens=True), cfg.stop_after).strip())
        _say(f"  teacher answers {len(answers)}/{len(ids)} ({progress.rate_eta(len(answers), 'prompts')})")

    for i in range(0, len(ids), chunk):
        pending.append(handle.generate.remote(ids[i : i + chunk], cfg.max_new_tokens, cfg.temperature))
        if len(pending) >= cfg.max_inflight:
            collect()
    while pending:
        collect()
    pairs = [{cfg.prompt_field: p, cfg.response_field: a} for p, a in zip(prompts, answers) if a]
    if not pairs:
        raise RuntimeError(f"the teacher answered none of {len(prompts)} prompts (only whitespace within "
                           f"{cfg.max_new_tokens} tokens): use a stronger or adapted teacher, or more max_new_tokens")
    if len(pairs) < len(prompts):
        _say(f"  {len(prompts) - len(pairs)} of {len(prompts)} answers were empty and are left out")
    write_jsonl(pairs, out)
    return out
