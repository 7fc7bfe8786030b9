"""The one harness every variant and the teacher go through: size, quality, agreement, task skill, CPU speed.

    model = load_variant(dir)                                   # plain, quantized (torchao) or low-rank dirs
    m = measure_quality("prune-50", dir, val, teacher_top1, items, tokenizer)   # -> Measurement
    m.speed = measure_speed(model, SpeedConfig(), vocab_size)   # one model at a time, on an idle machine
    m.retention(teacher_measurement)                            # {quality metric: variant / teacher}

Quality: held-out next-token loss and perplexity (raykd/eval/heldout.py), top-1 agreement with the
teacher's argmax on the same positions, task-suite exact match per level (raykd/data/task_suite.py,
greedy). Size: parameters (each stored element once; a low-rank pair counts its two factors), non-zero
parameters, and bytes on disk of the weight files (*.safetensors; config and tokenizer not counted).
Speed: prefill tokens/s (one forward over batch x prompt_tokens, filling the KV cache) and decode tokens/s
(gen_tokens greedy one-token steps on that cache, timed on their own) at each batch size, median of
`repeats` after a warm-up, with `threads` torch threads.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

QUALITY = ("heldout_loss", "perplexity", "top1_agreement", "task_em")
LOWER_IS_BETTER = ("heldout_loss", "perplexity")


@dataclass
class Measurement:
    name: str
    method: str  # teacher | kd | quantize | magnitude_prune | structured_prune | low_rank (+ recovered)
    params: int
    nonzero_params: int
    bytes_on_disk: int
    heldout_loss: float
    perplexity: float
    top1_agreement: float
    task_em: float | None = None
    task_em_levels: dict[int, float] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)  # prompt_tps_b1, gen_tps_b1, prompt_tps_b16, ...
    seconds: float = 0.0  # building (and recovering) the variant

    def retention(self, teacher: "Measurement") -> dict[str, float]:
        """variant / teacher for each quality number; for loss and perplexity teacher / variant, so that 1.0 is
        the teacher's quality and lower is worse everywhere. nan where the teacher's value is 0."""
        out = {}
        for key in QUALITY:
            mine, ref = getattr(self, key), getattr(teacher, key)
            if mine is None or ref is None:
                continue
            num, den = (ref, mine) if key in LOWER_IS_BETTER else (mine, ref)
            out[key] = num / den if den else math.nan
        for lv, em in self.task_em_levels.items():
            ref = teacher.task_em_levels.get(lv)
            if ref is not None:
                out[f"task_em_L{lv}"] = em / ref if ref else math.nan
        return out

    def metrics(self, teacher: "Measurement | None" = None) -> dict[str, float]:
        """Flat numbers for MLflow."""
        out = {k: float(v) for k, v in asdict(self).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
        out.update({f"task_em_L{lv}": v for lv, v in self.task_em_levels.items()})
        out.update(self.speed)
        if teacher is not None:
            out.update({f"retention_{k}": v for k, v in self.retention(teacher).items()})
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Measurement":
        d = dict(d)
        d["task_em_levels"] = {int(k): v for k, v in d.get("task_em_levels", {}).items()}
        return cls(**d)


def load_variant(path: str | Path):
    """Any directory raykd compress writes, in float32 where it is not quantized, in eval mode."""
    from transformers import AutoModelForCausalLM

    from raykd.compress.lowrank import is_lowrank_dir

    import json

    config = json.loads((Path(path) / "config.json").read_text())
    kwargs = {} if "quantization_config" in config else {"dtype": "float32"}
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=is_lowrank_dir(path), **kwargs)
    return model.eval()


def bytes_on_disk(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def stored_elements(model) -> tuple[int, int]:
    """(elements, non-zero elements) of the parameters as stored: a quantized weight counts its integer
    elements (not its scales), tied tensors once."""
    import torch

    total = nonzero = 0
    for p in model.parameters():
        t = getattr(p, "qdata", p)
        total += t.numel()
        nonzero += int(torch.count_nonzero(t))
    return total, nonzero


def teacher_top1(model, blocks: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(M * (L - 1),) the model's argmax next token at every position of `blocks` (M, L): the rows of
    raykd/eval/heldout.py's agreement."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            ids = torch.tensor(np.asarray(blocks[i : i + batch_size]), dtype=torch.long)
            out.append(model(input_ids=ids).logits[:, :-1].argmax(-1).reshape(-1).numpy())
    return np.concatenate(out)


def measure_quality(name: str, method: str, path: str | Path, val: np.ndarray, top1: np.ndarray | None,
                    items: list, tokenizer) -> Measurement:
    """Everything but speed, for the directory at `path` (`top1` None: this is the teacher, agreement 1)."""
    from raykd.data.task_suite import score_model
    from raykd.eval.heldout import heldout_loss

    model = load_variant(path)
    loss, agree = heldout_loss(model, val, top1)
    params, nonzero = stored_elements(model)
    m = Measurement(name, method, params, nonzero, bytes_on_disk(path), loss, math.exp(loss),
                    1.0 if agree is None else agree)
    if items:
        score = score_model(model, tokenizer, items)
        m.task_em = score.exact_match()
        m.task_em_levels = {lv: score.exact_match(lv) for lv in sorted(score.count)}
    return m


def measure_speed(model, cfg, vocab_size: int, seed: int = 0) -> dict[str, float]:
    """{prompt_tps_b<B>, gen_tps_b<B>} for each of cfg.batch_sizes (cfg: raykd.config.compress.SpeedConfig).

    Prefill: one forward of (B, prompt_tokens) that fills the KV cache. Decode: `gen_tokens` greedy steps of
    one token each on that cache, timed on their own (no subtraction of two noisy timings)."""
    import torch

    from raykd.models import torch_threads

    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch_threads(cfg.threads), torch.inference_mode():
        for b in cfg.batch_sizes:
            ids = torch.randint(0, vocab_size, (b, cfg.prompt_tokens), generator=g)
            prefill, decode = [], []
            for _ in range(cfg.repeats + 1):  # the first is a warm-up (lazy kernels, allocator)
                t0 = time.perf_counter()
                step = model(input_ids=ids, use_cache=True)
                t1 = time.perf_counter()
                for _ in range(cfg.gen_tokens):
                    nxt = step.logits[:, -1:].argmax(-1)  # (B, 1)
                    step = model(input_ids=nxt, past_key_values=step.past_key_values, use_cache=True)
                t2 = time.perf_counter()
                prefill.append(t1 - t0)
                decode.append(t2 - t1)
            out[f"prompt_tps_b{b}"] = b * cfg.prompt_tokens / statistics.median(prefill[1:])
            out[f"gen_tps_b{b}"] = b * cfg.gen_tokens / statistics.median(decode[1:])
    return out


