"""Ablation of the distillation methods on real text: held-out loss of students per method, same budget.

    python benchmarks/ablation.py                       # <= 25 min on 2 shared CPU cores
    python benchmarks/ablation.py --steps 20 --seeds 1  # a quick look

Text: tinyshakespeare (../shared/data beside the repository, or --text FILE): the first 90 % trains the teacher and the students, the last
10 % is held out. Teacher: a Llama trained here on that text (byte-level BPE from raykd.teacher.build,
4 layers x 128 wide, --teacher-steps steps of 16 x 128 tokens; cached under $RAYKD_CACHE/bench). Every student is derived from it exactly as
`raykd distill` does (2 layers picked uniformly, width 64 sliced from the teacher's, raykd.models), trains
for the same number of steps on the same batches per seed, through the same objective the Train workers
run (raykd.loss.objective.Objective: divergences, schedules, dynamic temperature, hidden/attention matching,
adversarial term), against the hard-label-only student. The teacher's signals (top-k log-probs, hidden
states, attention maps) are computed once with the transformers backend (the code a Serve replica runs)
and reused by every method; sequence-level KD trains on the teacher's greedy continuations (96 tokens after
32-token prompts of the first --seqkd-prompts training blocks) instead.
Reported: held-out next-token loss (nats) over --val-seqs blocks, mean and spread (min..max) over --seeds
seeds (seeds change the data order and the learnable loss parts; the student init is the teacher's).

Writes benchmarks/results/ablation.json and benchmarks/results/ablation.md (machine, command, table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from shared_paths import add_text_argument, public_name, read_text  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"

# method name -> DistillConfig overrides on top of BASE (loss.alpha 0.5, T 2, forward KL, top-20 + bucket)
METHODS: dict[str, list[str]] = {
    "hard labels only": ["loss.alpha=0"],
    "forward KL": [],
    "reverse KL": ["loss.divergence=reverse_kl"],
    "JSD (beta 0.5)": ["loss.divergence=jsd", "loss.beta=0.5"],
    "skew KL (lam 0.1)": ["loss.divergence=skew_kl", "loss.skew_lambda=0.1"],
    "skew reverse KL (lam 0.1)": ["loss.divergence=skew_reverse_kl", "loss.skew_lambda=0.1"],
    "TVD": ["loss.divergence=tvd"],
    "FKL + T cosine 4->1, alpha warm-up": [
        "loss.temperature_schedule.kind=cosine", "loss.temperature_schedule.start=4.0",
        "loss.temperature_schedule.end=1.0", "loss.alpha_schedule.warmup_steps=20",
        "loss.alpha_schedule.warmup_from=0.0"],
    "FKL + dynamic T (entropy, 1..4)": ["loss.dynamic_temperature.rule=entropy"],
    "FKL + dynamic T (disagreement, 1..4)": ["loss.dynamic_temperature.rule=disagreement"],
    "FKL + hidden states (2->4)": ["loss.hidden.weight=1.0", "loss.hidden.layer_map={2: 4}"],
    "FKL + attention maps (2->4, mean)": ["loss.attention.weight=1.0", "loss.attention.layer_map={2: 4}"],
    "FKL + adversarial (0.1)": ["loss.adversarial.weight=0.1"],
    "sequence-level KD": ["loss.alpha=0", "seqkd.enabled=true"],
    "sequence-level + token KD": ["seqkd.enabled=true"],
}


def log(msg: str) -> None:
    print(f"[ablation] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- teacher
def build_teacher(text: str, out: Path, vocab: int, steps: int, seq_len: int) -> Path:
    """A 4-layer Llama trained on `text` (cached by its settings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from raykd.teacher.tiny_model import EOT, train_tokenizer

    if (out / "model.safetensors").is_file():
        return out
    t0 = time.monotonic()
    tok = train_tokenizer(text, vocab, 512)
    ids = torch.tensor(tok.backend_tokenizer.encode(text).ids, dtype=torch.long)
    eot = tok.convert_tokens_to_ids(EOT)
    log(f"teacher tokenizer: {len(tok)} tokens, {len(ids):,} training tokens ({time.monotonic() - t0:.0f}s)")
    t0 = time.monotonic()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(1)
    span = torch.arange(seq_len + 1)
    last = t0
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        block = ids[torch.randint(0, len(ids) - seq_len - 1, (16,), generator=gen)[:, None] + span]
        logits = model(input_ids=block[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), block[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        now = time.monotonic()
        if now - last > 15 or step + 1 == steps:
            rate = (step + 1) / (now - t0)
            log(f"teacher step {step + 1}/{steps} loss {loss.item():.3f} ({rate:.2f} steps/s, eta {(steps - step - 1) / rate:.0f}s)")
            last = now
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------- one student
def heldout_loss(model, val: np.ndarray) -> float:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(val), 16):
            ids = torch.as_tensor(val[i : i + 16], dtype=torch.long)
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                       reduction="sum").item()
            count += ids[:, 1:].numel()
    return total / count


def train_student(cfg, teacher_dir: str, tokens: np.ndarray, signals, val: np.ndarray) -> tuple[float, dict]:
    """One student, same steps/batches as every other method of this seed; returns (held-out loss, last metrics)."""
    import torch

    from raykd.models import build_student
    from raykd.loss.objective import Objective, needs_teacher
    from raykd.data.order import batch_indices as global_batch_indices
    from raykd.loss.schedules import lr_lambda

    tc = cfg.train
    student, _ = build_student(teacher_dir, cfg.student, seed=0)
    objective = Objective(cfg, student.config, use_teacher=needs_teacher(cfg))
    objective.prepare_student(student)
    opt = torch.optim.AdamW(student.parameters(), lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, tc.max_steps))
    rows = global_batch_indices(len(tokens), tc.batch_size, 1, 0, cfg.seed, 0)
    torch.manual_seed(cfg.seed)
    metrics = {}
    for step in range(tc.max_steps):
        idx = next(rows)
        ids = torch.as_tensor(tokens[idx], dtype=torch.long)
        sig = signals.take_sequences(idx) if objective.use_teacher else None
        out = student(input_ids=ids, **objective.model_kwargs())
        loss, metrics = objective.compute_loss(step, out, ids, sig)
        opt.zero_grad(set_to_none=True)
        objective.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), tc.grad_clip)
        opt.step()
        objective.step()
        sched.step()
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss diverged at step {step}")
    student.eval()
    return heldout_loss(student, val), metrics


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="student optimizer steps (same for every method)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--train-seqs", type=int, default=320, help="training blocks (scored once by the teacher)")
    ap.add_argument("--seqkd-prompts", type=int, default=128, help="prompts the teacher continues for sequence-level KD")
    ap.add_argument("--val-seqs", type=int, default=96, help="held-out blocks")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--vocab", type=int, default=2048)
    add_text_argument(ap)
    ap.add_argument("--only", nargs="*", help="run these methods only (names as in the table)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from raykd.config import DistillConfig, default_cache_dir, load_config
    from raykd.train.seqkd import teacher_sequences
    from raykd.teacher.hf_backend import HFTeacherBackend

    from raykd.teacher.build import default_threads

    # The idle cores only: on an oversubscribed machine more torch threads are slower, not faster.
    torch.set_num_threads(default_threads())
    log(f"{torch.get_num_threads()} torch thread(s); load average {os.getloadavg()[0]:.1f}")
    t_start = time.monotonic()
    text = read_text(args.text)
    split = int(len(text) * 0.9)
    teacher_dir = build_teacher(text[:split], default_cache_dir() / "bench" / f"shakespeare-v{args.vocab}-s{args.teacher_steps}",
                                args.vocab, args.teacher_steps, args.seq_len)
    backend = HFTeacherBackend(str(teacher_dir), device="cpu")
    tok = AutoTokenizer.from_pretrained(teacher_dir)

    def blocks_of(part: str, n: int) -> np.ndarray:
        ids = np.asarray(tok.backend_tokenizer.encode(part).ids, np.int32)
        m = min(n, len(ids) // args.seq_len)
        return ids[: m * args.seq_len].reshape(m, args.seq_len)

    train = blocks_of(text[:split], args.train_seqs)
    val = blocks_of(text[split:], args.val_seqs)
    teacher_val = backend.score(list(val), 1)
    teacher_loss = float(-np.mean(teacher_val.target_logprob))
    log(f"teacher {teacher_dir}: held-out loss {teacher_loss:.4f}; {len(train)} train / {len(val)} held-out blocks")

    base = ["loss.top_k=20", f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", "train.lr=3e-3",
            "train.warmup_steps=10", "student.num_layers=2", "student.hidden_size=64", f"data.seq_len={args.seq_len}",
            "seqkd.prompt_tokens=32", f"seqkd.max_new_tokens={args.seq_len - 32}", f"seqkd.max_prompts={args.seqkd_prompts}"]
    methods = {k: v for k, v in METHODS.items() if not args.only or k in args.only}

    t = time.monotonic()
    log("scoring the training blocks once (top-20, hidden state of layer 4, attention of layer 4)")
    signals = backend.score(list(train), 20, {"hidden_states": [4], "attentions": [3]})
    log(f"  {time.monotonic() - t:.0f}s")
    seq_tokens = seq_signals = None
    if any("seqkd.enabled=true" in v for v in methods.values()):
        cfg0 = load_config(DistillConfig, None, base + ["seqkd.enabled=true"])
        handle = SimpleNamespace(generate=SimpleNamespace(  # the deployment's `generate`, in-process
            remote=lambda prompts, n, temperature: SimpleNamespace(result=lambda g=backend.generate(prompts, n, temperature): g)))
        seq_tokens, _ = teacher_sequences(handle, train, None, cfg0.seqkd, log)
        seq_signals = backend.score(list(seq_tokens), 20)

    results: dict[str, list[float]] = {name: [] for name in methods}
    runs, total = 0, len(methods) * args.seeds
    t_runs = time.monotonic()
    for seed in range(args.seeds):
        for name, overrides in methods.items():
            cfg = load_config(DistillConfig, None, base + overrides + [f"seed={seed}"])
            tokens, sig = (seq_tokens, seq_signals) if cfg.seqkd.enabled else (train, signals)
            loss, last = train_student(cfg, str(teacher_dir), tokens, sig, val)
            results[name].append(loss)
            runs += 1
            rate = runs / (time.monotonic() - t_runs)
            log(f"seed {seed} {name:<38} held-out {loss:.4f}  [{runs}/{total}, {60 * rate:.1f} runs/min, "
                f"eta {(total - runs) / rate / 60:.1f} min]")

    hard = np.mean(results["hard labels only"]) if "hard labels only" in results else None
    rows = []
    for name, losses in results.items():
        mean = float(np.mean(losses))
        rows.append({"method": name, "mean": mean, "min": float(np.min(losses)), "max": float(np.max(losses)),
                     "std": float(np.std(losses)), "losses": losses,
                     "delta_vs_hard": None if hard is None else mean - float(hard)})
    elapsed = time.monotonic() - t_start
    cmd = "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = (f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
               f"{os.getloadavg()[0]:.1f} at the end), {platform.python_version()}, torch {torch.__version__}, no GPU")
    record = {"command": cmd.strip(), "machine": machine, "elapsed_s": elapsed, "teacher_dir": public_name(teacher_dir),
              "teacher_heldout_loss": teacher_loss, "settings": vars(args), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Ablation: held-out loss per distillation method (tinyshakespeare)", "",
        f"Command: `{cmd.strip()}`  ", f"Machine: {machine}  ",
        f"Wall time: {elapsed / 60:.1f} min. Teacher (4 x 128, trained here): held-out loss {teacher_loss:.4f}. "
        f"Students: 2 x 64 from the teacher, {args.steps} steps x {args.batch} x {args.seq_len} tokens, "
        f"{args.seeds} seed(s).", "",
        "| method | held-out loss (mean) | spread (min..max) | vs hard labels |", "|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["mean"]):
        delta = "" if r["delta_vs_hard"] is None else f"{r['delta_vs_hard']:+.4f}"
        lines.append(f"| {r['method']} | {r['mean']:.4f} | {r['min']:.4f}..{r['max']:.4f} | {delta} |")
    (RESULTS / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
