"""The `raykd mlm-distill` job: teacher on Serve -> student trained in the driver -> evaluation, one MLflow run.

    raykd mlm-distill --config jobs/configs/mlm.yaml [key=value ...]
    history = train_mlm_student(student, blocks, tokenizer, cfg, score)   # the loop alone (tests, benchmarks)

`score(inputs, positions, labels)` returns something with `.result()` -> TeacherSignals whose rows are
the masked positions (the Serve handle's `score.remote(..., positions=, labels=)`, or a local backend).
See raykd/mlm.py for the method.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from raykd.config import flatten
from raykd.mlm import MLMDistillConfig, derive_bert_student, distilbert_mask, ensure_tiny_bert, mlm_blocks, special_ids


def _say(msg: str) -> None:
    print(f"[raykd.mlm] {msg}", file=sys.stderr, flush=True)


def _masked_batches(blocks: np.ndarray, tok, cfg: MLMDistillConfig, seed: int, steps: int):
    """(inputs, selected, labels) per step: seeded row sampling and masking, identical for KD and baseline."""
    rng = np.random.default_rng([seed, 17])
    m = cfg.masking
    for _ in range(steps):
        batch = blocks[rng.integers(0, len(blocks), cfg.train.batch_size)]
        inputs, selected = distilbert_mask(batch, rng, mask_id=tok.mask_token_id, vocab_size=len(tok),
                                           special_ids=special_ids(tok), mask_prob=m.mask_prob,
                                           mask_token=m.mask_token, random_token=m.random_token)
        yield inputs, selected, batch[selected]


def _request(score, inputs, selected, labels):
    positions = [np.flatnonzero(row) for row in selected]
    per_seq = np.split(labels, np.cumsum([len(p) for p in positions])[:-1])
    return score(inputs, positions, per_seq)


def train_mlm_student(student, blocks: np.ndarray, tok, cfg: MLMDistillConfig,
                      score: Callable | None, logger: Any = None) -> list[dict[str, float]]:
    """Train `student` in place; `score=None` trains on hard labels only. Returns per-step metrics."""
    import torch

    from raykd.divergences import log_distributions, soft_loss
    from raykd.dynamic_temperature import disagreement_difficulty, entropy_difficulty, token_temperature
    from raykd.schedules import Schedule

    tc, lc = cfg.train, cfg.loss
    torch.set_num_threads(tc.torch_threads)
    opt = torch.optim.AdamW(student.parameters(), lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, tc.warmup_steps)) * max(0.05, 1 - s / tc.max_steps))
    alpha_at = Schedule.from_config(lc.alpha_schedule, lc.alpha, tc.max_steps)
    temperature_at = Schedule.from_config(lc.temperature_schedule, lc.temperature, tc.max_steps)
    dyn = lc.dynamic_temperature if lc.dynamic_temperature.rule != "none" else None
    batches = _masked_batches(blocks, tok, cfg, cfg.seed, tc.max_steps)
    pending = None
    if score is not None:
        first = next(batches)
        pending = (first, _request(score, *first))
    history, t0 = [], time.monotonic()
    student.train()
    for step in range(tc.max_steps):
        if score is not None:  # the next batch's teacher request is in flight while this step runs
            (inputs, selected, labels), response = pending
            nxt = next(batches, None)
            pending = (nxt, _request(score, *nxt)) if nxt is not None else None
            signals = response.result()
        else:
            inputs, selected, labels = next(batches)
            signals = None
        logits = student(input_ids=torch.as_tensor(inputs, dtype=torch.long)).logits
        rows = logits[torch.as_tensor(selected)]  # (N, V): masked positions, sequence by sequence
        target = torch.as_tensor(labels, dtype=torch.long)
        hard = torch.nn.functional.cross_entropy(rows.float(), target)
        metrics = {"loss_hard": float(hard.detach()), "loss_soft": 0.0}
        alpha = alpha_at(step) if signals is not None else 0.0
        loss = hard
        if signals is not None:
            sig = {k: torch.as_tensor(np.array(getattr(signals, k))) for k in ("topk_ids", "topk_logprobs", "tail_logprob")}
            temperature: Any = temperature_at(step)
            if dyn is not None:
                if dyn.rule == "entropy":
                    d = entropy_difficulty(sig["topk_logprobs"], sig["tail_logprob"], rows.shape[-1])
                else:
                    d = disagreement_difficulty(*log_distributions(rows, **sig, tail=lc.tail))
                temperature = token_temperature(d, dyn.min_temperature, dyn.max_temperature)
                metrics["temperature"] = float(temperature.mean())
            else:
                metrics["temperature"] = float(temperature)
            soft = soft_loss(rows, **sig, tail=lc.tail, divergence=lc.divergence, temperature=temperature,
                             beta=lc.beta, skew_lambda=lc.skew_lambda)
            metrics["loss_soft"] = float(soft.detach())
            loss = alpha * soft + (1 - alpha) * hard
        metrics.update(loss=float(loss.detach()), alpha=alpha, lr=sched.get_last_lr()[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(metrics)
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.max_steps:
            window = history[-tc.log_every:]
            avg = {k: float(np.mean([m[k] for m in window if k in m])) for k in window[-1]}
            if logger is not None:
                logger.log(avg, step + 1)
            rate = (step + 1) / (time.monotonic() - t0)
            _say(f"step {step + 1}/{tc.max_steps} loss {avg['loss']:.4f} (soft {avg['loss_soft']:.4f} hard "
                 f"{avg['loss_hard']:.4f}) {rate:.2f} steps/s eta {(tc.max_steps - step - 1) / rate:.0f}s")
    student.eval()
    return history


def evaluate_mlm(student, blocks: np.ndarray, tok, cfg: MLMDistillConfig, teacher_signals) -> dict[str, float]:
    """Held-out masked-LM loss and top-1 agreement with the teacher at the same (seeded) masked positions."""
    import torch

    inputs, selected, labels = _eval_batch(blocks, tok, cfg)
    with torch.inference_mode():
        rows = student(input_ids=torch.as_tensor(inputs, dtype=torch.long)).logits[torch.as_tensor(selected)].float()
    loss = float(torch.nn.functional.cross_entropy(rows, torch.as_tensor(labels, dtype=torch.long)))
    agree = float((rows.argmax(-1).numpy() == np.asarray(teacher_signals.topk_ids)[:, 0]).mean())
    return {"heldout_loss": loss, "perplexity": math.exp(loss), "top1_agreement": agree}


def _eval_batch(blocks: np.ndarray, tok, cfg: MLMDistillConfig):
    val = blocks[: cfg.eval.max_sequences]
    rng = np.random.default_rng(1234)  # the same masked positions for every model
    m = cfg.masking
    inputs, selected = distilbert_mask(val, rng, mask_id=tok.mask_token_id, vocab_size=len(tok),
                                       special_ids=special_ids(tok), mask_prob=m.mask_prob, mask_token=m.mask_token,
                                       random_token=m.random_token)
    return inputs, selected, val[selected]


def run_mlm_distill(cfg: MLMDistillConfig) -> dict[str, Any]:
    """The whole job (module doc): returns the run id, the student directory and the evaluation rows."""
    from transformers import AutoTokenizer

    from raykd.cluster import init_ray, shutdown_ray
    from raykd.config import ConfigError, TeacherConfig
    from raykd.data import load_texts, split_blocks
    from raykd.models import check_model_dir, model_fingerprint
    from raykd.teacher.service import launch_teacher
    from raykd.tracking import MetricLogger, resolve_tracking_uri, tracked_run

    texts = load_texts(cfg.data)
    if cfg.teacher.path is not None:
        check_model_dir(cfg.teacher.path, "teacher.path")
    teacher_path = cfg.teacher.path or str(ensure_tiny_bert(cfg.teacher.build))
    tok = AutoTokenizer.from_pretrained(teacher_path)
    if tok.mask_token_id is None:
        raise ConfigError(f"teacher.path: {teacher_path} has no [MASK] token (not a masked-LM tokenizer)")
    train, val = split_blocks(mlm_blocks(texts, tok, cfg.data.seq_len), cfg.data.val_fraction)
    uri = resolve_tracking_uri(cfg.mlflow)
    t_cfg = TeacherConfig(path=teacher_path, backend="hf", num_cpus=cfg.teacher.num_cpus, app_name=cfg.teacher.app_name)
    with tracked_run(uri, cfg.mlflow.experiment, cfg.run_name, flatten(cfg), {"raykd.job": "mlm-distill"}) as run_id:
        started = init_ray(cfg.teacher.num_cpus + 1)
        try:
            handle = launch_teacher(t_cfg, teacher_path, model_fingerprint(teacher_path))
            score = lambda x, p, y: handle.score.remote(list(x), cfg.loss.top_k, None, positions=p, labels=y)  # noqa: E731
            students = {"kd student": score}
            if cfg.eval.baseline:
                students["hard-label student"] = None
            inputs, selected, labels = _eval_batch(val, tok, cfg)
            teacher_sig = _request(score, inputs, selected, labels).result()
            t_loss = float(-np.mean(teacher_sig.target_logprob))
            rows = [{"model": "teacher", "heldout_loss": t_loss, "perplexity": math.exp(t_loss), "top1_agreement": 1.0}]
            out_root = Path(cfg.output_dir) / cfg.run_name
            for name, fn in students.items():
                student = derive_bert_student(teacher_path, cfg.student, cfg.seed)
                _say(f"training the {name} ({sum(p.numel() for p in student.parameters()):,} params)")
                logger = MetricLogger(uri, run_id) if fn is not None else None
                train_mlm_student(student, train, tok, cfg, fn, logger)
                rows.append({"model": name, **evaluate_mlm(student, val, tok, cfg, teacher_sig)})
                if fn is not None:
                    student.save_pretrained(out_root / "student")
                    tok.save_pretrained(out_root / "student")
                del student
            import mlflow

            table = "\n".join(f"{r['model']:<20}{r['heldout_loss']:>12.4f}{r['perplexity']:>10.2f}{r['top1_agreement']:>10.3f}"
                              for r in rows)
            table = f"{'model':<20}{'MLM loss':>12}{'ppl':>10}{'top-1':>10}\n" + table
            print(table, flush=True)
            mlflow.log_text(table, "eval_table.txt", run_id=run_id)
            mlflow.log_metrics({f"eval_{r['model'].replace(' ', '_').replace('-', '_')}_{k}": v
                                for r in rows for k, v in r.items() if k != "model"}, run_id=run_id)
            return {"run_id": run_id, "student_dir": str(out_root / "student"), "rows": rows, "table": table}
        finally:
            shutdown_ray(started)
