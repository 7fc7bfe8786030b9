"""Build the tiny offline teacher: a small Llama pre-trained on CPU on raykd's generated corpus.

When no real teacher is configured (`teacher.path: null`), raykd builds one once and caches it:

    path = ensure_tiny_teacher(cfg.teacher.build)      # <cache>/teachers/tiny-<fingerprint>
    model = AutoModelForCausalLM.from_pretrained(path)  # an ordinary HF model directory

The directory holds `config.json`, `generation_config.json`, `model.safetensors`, `tokenizer.json`,
`tokenizer_config.json` and `raykd_teacher.json` (the build config, its fingerprint, losses and
timings). The recipe: `generate_corpus(cfg.corpus_chars, cfg.seed)` → byte-level BPE tokenizer
(`<|endoftext|>` is bos, eos and pad) → `LlamaForCausalLM` trained with AdamW on random blocks of
`seq_len` tokens from the first 95 % of the token stream, then scored on the last 5 %.

Training stops at `max_steps` or when `max_minutes` (counted from the start of the build) would be
exceeded, whichever comes first. The learning-rate schedule (short linear warm-up, cosine decay to
10 % of `lr`) follows progress = max(step / max_steps, elapsed / budget), so it is planned on
`max_steps` but still reaches its floor when the time budget ends first. With a binding time budget
the result therefore depends on the machine's speed; with a binding step budget it is deterministic.

A build is written into a temporary directory beside the destination and moved into place with
`os.replace` at the end (raykd/files.py), so a killed or failed build never leaves a half-written teacher
behind. `ensure_tiny_teacher` also holds an `fcntl` lock per fingerprint so concurrent processes build a
given teacher only once. The tokenizer and the model (dense Llama or Qwen2-MoE) are raykd/teacher/tiny_model.py.

    raykd build-teacher [--out DIR] [max_minutes=2 num_layers=2 moe.num_experts=8 ...]

torch, transformers and tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from raykd.config import TinyTeacherConfig, default_cache_dir
from raykd.console import Bar, Progress, duration, say
from raykd.data.corpus import generate_corpus
from raykd.files import atomic_dir, build_once
from raykd.loss.schedules import lr_factor
from raykd.models import torch_threads
from raykd.teacher.tiny_model import EOT, make_model, train_tokenizer

# Bump when the corpus grammar or the build recipe changes: cached teachers are then rebuilt.
TEACHER_FORMAT = 2
META_FILE = "raykd_teacher.json"
VAL_FRACTION = 0.05
_MAX_VAL_BLOCKS = 64
_LOG_EVERY_S = 10.0


def teacher_fingerprint(cfg: TinyTeacherConfig) -> str:
    """First 16 hex chars of sha256 over the canonical JSON of `cfg` and `TEACHER_FORMAT` (and chat_data's bytes)."""
    # Fields at the defaults they had when they were added are left out, so that existing teachers keep
    # their fingerprints (`moe: null`: dense; `num_kv_heads: null`; no chat; `corpus: builtin` and
    # `task_fraction: 0`: the generated text only).
    defaults = (("moe", None), ("num_kv_heads", None), ("chat_template", False), ("chat_data", None),
                ("chat_fields", None), ("corpus", "builtin"), ("task_fraction", 0.0))
    exclude = {name for name, default in defaults if getattr(cfg, name) == default}
    dump = cfg.model_dump(mode="json", exclude=exclude or None)
    if cfg.chat_data is not None:  # the conversations are part of the recipe: a changed file is another teacher
        dump["chat_data_sha256"] = hashlib.sha256(Path(cfg.chat_data).expanduser().read_bytes()).hexdigest()
    payload = json.dumps({"format": TEACHER_FORMAT, "cfg": dump}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _log(enabled: bool, msg: str) -> None:
    if enabled:
        say(msg, scope="raykd.teacher")


def _pretrain(
    model, train_ids, cfg: TinyTeacherConfig, *, deadline: float, progress: bool
) -> dict[str, Any]:
    """AdamW on random `seq_len` blocks of `train_ids` until max_steps or `deadline` (monotonic)."""
    import torch
    import torch.nn.functional as F

    n = train_ids.numel()
    span = cfg.seq_len + 1
    if n < span + 1:
        raise ValueError(
            f"corpus has {n} training tokens, fewer than seq_len + 2 = {span + 1}; raise corpus_chars or lower seq_len"
        )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    offsets_range = torch.arange(span)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    warmup = max(1, min(20, cfg.max_steps // 20))
    model.train()

    t_start = time.monotonic()
    budget = max(1e-6, deadline - t_start)
    losses: list[float] = []
    loss_log: list[list[float]] = []
    step_s = 0.0  # EMA of seconds per step
    progress_line = Progress(cfg.max_steps, every_s=_LOG_EVERY_S, start=t_start)  # the loss log's cadence
    bar = Bar("pre-train teacher", cfg.max_steps, "steps", scope="raykd.teacher") if progress else None
    stopped_by = "max_steps"
    step = 0
    while step < cfg.max_steps:
        now = time.monotonic()
        if step > 0 and now + step_s > deadline:
            stopped_by = "max_minutes"
            break
        # The schedule follows whichever budget (steps or time) runs out first; the warm-up ends after
        # `warmup` steps or 10 % of that progress (slow steps must not spend the time budget warming up).
        progress_frac = max(step / cfg.max_steps, (now - t_start) / budget)
        lr = cfg.lr * lr_factor(step, warmup, progress_frac, warmup_progress=0.1)
        for group in opt.param_groups:
            group["lr"] = lr

        starts = torch.randint(0, n - span, (cfg.batch_size,), generator=gen)
        block = train_ids[starts[:, None] + offsets_range].long()
        logits = model(input_ids=block[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), block[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"teacher pre-training diverged at step {step} (loss {value}); lower lr")
        losses.append(value)
        t = time.monotonic()
        dt = t - now
        step_s = dt if step == 1 else 0.8 * step_s + 0.2 * dt
        if progress_line.due(step):
            recent = sum(losses[-10:]) / len(losses[-10:])
            loss_log.append([step, round(recent, 4)])
            tok_s = progress_line.rate(step) * cfg.batch_size * cfg.seq_len
            eta = min((cfg.max_steps - step) * step_s, max(0.0, deadline - t))  # whichever budget ends first
            if bar is not None:
                bar.update(step, f"loss {recent:.4f}  lr {lr:.2e}  {tok_s:,.0f} tok/s", eta_s=eta)
    if bar is not None:
        bar.close()
    seconds = time.monotonic() - t_start
    tail = losses[-10:]
    if loss_log[-1][0] != step:
        loss_log.append([step, round(sum(tail) / len(tail), 4)])
    return {
        "steps": step,
        "stopped_by": stopped_by,
        "first_loss": losses[0],
        "train_loss": sum(tail) / len(tail),
        "tokens_seen": step * cfg.batch_size * cfg.seq_len,
        "train_seconds": seconds,
        "tokens_per_s": step * cfg.batch_size * cfg.seq_len / max(seconds, 1e-9),
        "loss_log": loss_log,
    }


def _evaluate(model, train_ids, val_ids, seq_len: int, vocab_size: int) -> dict[str, float]:
    """Mean next-token loss (nats) on the held-out tail, and a unigram baseline for scale."""
    import torch

    from raykd.eval.heldout import heldout_loss

    span = min(seq_len + 1, val_ids.numel())
    nblocks = min(_MAX_VAL_BLOCKS, val_ids.numel() // span)
    if nblocks < 1 or span < 2:
        return {"val_loss": float("nan"), "unigram_val_loss": float("nan"), "val_tokens": 0}
    blocks = val_ids[: nblocks * span].long().view(nblocks, span)
    val_loss, _ = heldout_loss(model, blocks.numpy())
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    unigram = float(-logp[blocks[:, 1:].reshape(-1)].mean())
    return {"val_loss": val_loss, "unigram_val_loss": unigram, "val_tokens": blocks[:, 1:].numel()}


# --------------------------------------------------------------------------------------------- build
def teacher_text(cfg: TinyTeacherConfig) -> str:
    """The pre-training text: `corpus_chars` of general text (generated, or the packaged Shakespeare's
    teacher part), with task-suite problems mixed in when `task_fraction` > 0 (seeded by `cfg.seed`)."""
    if cfg.corpus == "shakespeare":
        from raykd.data.sources import shakespeare_text

        text = shakespeare_text("teacher")[: cfg.corpus_chars]
    else:
        text = generate_corpus(cfg.corpus_chars, cfg.seed)
    if cfg.task_fraction > 0:
        from raykd.data.task_suite import TaskSuite, mix_with_tasks

        text = mix_with_tasks(text, TaskSuite(), cfg.task_fraction, cfg.seed)
    return text


def default_threads() -> int:
    """os.cpu_count(), less the cores other processes keep busy (1-minute load average), at least 1.

    On an oversubscribed machine torch's OpenMP threads spin against each other: measured on a
    shared 2-core box, a training step took 17.7 s with 2 threads and 1.9 s with 1 thread, while on
    the idle box 2 threads were only 1.9x faster than 1. So busy cores are left alone.
    """
    cpus = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:  # not available on this platform
        busy = 0
    return max(1, min(cpus, cpus - busy))


def build_tiny_teacher(
    cfg: TinyTeacherConfig, out_dir: Path, *, progress: bool = True, num_threads: int | None = None
) -> Path:
    """Generate the corpus, train tokenizer and model, and write an HF model directory at `out_dir`.

    `num_threads`: torch intra-op threads during the build (default `default_threads()`: the idle
    cores; restored afterwards). Returns `out_dir`. An existing directory there is replaced only on
    success.
    """
    t0 = time.monotonic()
    deadline = t0 + cfg.max_minutes * 60.0
    out_dir = Path(out_dir).expanduser().absolute()
    fingerprint = teacher_fingerprint(cfg)
    with atomic_dir(out_dir) as tmp:
        timings: dict[str, float] = {}
        t = time.monotonic()
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        timings["imports"] = time.monotonic() - t
        threads = num_threads or default_threads()
        _log(progress, f"building tiny teacher {fingerprint} -> {out_dir} ({threads} threads, "
             f"budget {duration(cfg.max_minutes * 60)})")

        t = time.monotonic()
        text = teacher_text(cfg)
        if cfg.chat_data is not None:
            text = _with_chat(text, cfg)
        timings["corpus"] = time.monotonic() - t

        t = time.monotonic()
        tokenizer = train_tokenizer(text, cfg.vocab_size, cfg.max_position_embeddings,
                                    split_digits=cfg.task_fraction > 0)
        if cfg.chat_template:
            from raykd.data.chat import RAYKD_CHAT_TEMPLATE

            tokenizer.chat_template = RAYKD_CHAT_TEMPLATE
        timings["tokenizer"] = time.monotonic() - t

        t = time.monotonic()
        ids = torch.tensor(tokenizer.backend_tokenizer.encode(text).ids, dtype=torch.int32)
        timings["tokenize"] = time.monotonic() - t
        vocab = len(tokenizer)
        n_val = max(1, int(ids.numel() * VAL_FRACTION))
        train_ids, val_ids = ids[:-n_val], ids[-n_val:]

        with torch_threads(threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            t = time.monotonic()
            model = make_model(cfg, vocab, tokenizer.convert_tokens_to_ids(EOT))
            timings["model_init"] = time.monotonic() - t
            n_params = sum(p.numel() for p in model.parameters())
            _log(progress, f"corpus {len(text):,} chars -> {ids.numel():,} tokens (vocab {vocab}) in "
                 f"{duration(timings['corpus'] + timings['tokenizer'] + timings['tokenize'])}; "
                 f"model {n_params / 1e6:.2f}M parameters")
            stats = _pretrain(model, train_ids, cfg, deadline=deadline, progress=progress)
            timings["train"] = stats.pop("train_seconds")

            t = time.monotonic()
            ev = _evaluate(model, train_ids, val_ids, cfg.seq_len, vocab)
            timings["eval"] = time.monotonic() - t

        t = time.monotonic()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # "Writing model shards" for a single small file
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        tokenizer.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # readable by whoever shares the cache, as files a plain open() would make
            os.chmod(f, 0o666 & ~umask)
        timings["save"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t0

        meta = {
            "format": TEACHER_FORMAT,
            "fingerprint": fingerprint,
            "config": cfg.model_dump(mode="json"),
            "vocab_size": vocab,
            "num_parameters": n_params,
            "corpus_tokens": int(ids.numel()),
            "train_tokens": int(train_ids.numel()),
            **stats,
            **ev,
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "threads": threads,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _log(
        progress,
        f"done in {duration(timings['total'])}: {stats['steps']} steps ({stats['stopped_by']}), "
        f"train loss {stats['train_loss']:.3f}, held-out loss {ev['val_loss']:.3f} (unigram {ev['unigram_val_loss']:.3f})",
    )
    return out_dir


def _with_chat(corpus: str, cfg: TinyTeacherConfig) -> str:
    """The generated stories and the chat_data conversations (rendered with raykd's chat template), interleaved
    in a seeded order so that both are in the pre-training and the held-out part of the stream."""
    import random

    from raykd.config import DataConfig
    from raykd.data.chat import render_chat
    from raykd.data.sources import iter_examples

    data = DataConfig(source=cfg.chat_data, format="chat", chat_fields=cfg.chat_fields)
    chats = [render_chat(ex.messages, EOT) + "\n" for ex in iter_examples(data, "teacher.build.chat_data")]
    stories = [p + "\n\n" for p in corpus.split("\n\n") if p]
    pieces = stories + chats
    random.Random(cfg.seed).shuffle(pieces)
    return "".join(pieces)


def _is_complete(path: Path) -> bool:
    return (path / META_FILE).is_file()


def ensure_tiny_teacher(cfg: TinyTeacherConfig, cache_dir: Path | None = None) -> Path:
    """`<cache_dir>/teachers/tiny-<fingerprint>`, built first if it is not there yet.

    `cache_dir` defaults to `raykd.config.default_cache_dir()`. Safe to call from several processes
    at once: one builds while the others wait on the lock, then all return the same directory.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = root / "teachers" / f"tiny-{teacher_fingerprint(cfg)}"
    build_once(out, _is_complete, lambda: build_tiny_teacher(cfg, out),
               on_wait=lambda: _log(True, f"waiting for another process that is building {out}"))
    return out
