"""Per-stage evaluation of a pipeline: general vs domain held-out loss, agreement, exact match, speed.

    sets = build_eval_sets(cfg.eval, tokenizer, data_configs, trained_on={"general", "math_train"}, records=em_records)
    teacher = evaluate_teacher(handle, sets, "teacher (domain)", stage="domain", params=n, tokenizer=tok)
    student = evaluate_student(student_dir, sets, teacher_top1=teacher_top1, ..., stage="domain")
    print(progress_table([init, *students, *teachers]))
    print(retention_table(final_teacher, final_student))

Metrics of one model (`ModelEval`):
* held-out loss / perplexity on the *general* set (forgetting shows as a rise across stages) and on the
  *domain* set (domain gain shows as a fall). A data set some stage trains on is scored on its held-out
  tail only: the blocks are packed here exactly as the Ray Data ingest packs them (raykd/data/blocks.py
  `pack_in_process`, at `eval.seq_len`), and the same `val_fraction` split the stages hold out is taken; a
  set no stage trains on (a test file) is scored from its start.
* top-1 agreement with the stage's teacher on both sets (positions where argmax equals the teacher's).
* exact match on problems whose answers end in GSM8K's `#### <number>`: greedy answer to the question,
  number after the first `####` compared numerically. Tiny models score near zero; that is reported as is.
* parameter count and greedy generation throughput. Teachers are measured in their Serve replica; the
  student in the driver with as many torch threads as a teacher replica has CPUs, so the speeds compare.

Retention = final student as a fraction of the final stage's teacher, per metric: value ratio for
higher-is-better metrics (agreement, exact match, speed), teacher/student for losses and perplexities
(1.0 = as good as the teacher), student/teacher for parameters (the size kept).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from raykd.config.pipeline import PipelineEvalConfig
from raykd.data.blocks import held_out_count
from raykd.eval.heldout import heldout_loss

_ANSWER_RE = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")


def extract_answer(text: str) -> str | None:
    """The number after the first `####` (commas and a leading `$` dropped), else None."""
    m = _ANSWER_RE.search(text)
    if not m:
        return None
    num = m.group(1).replace(",", "")
    return num or None


def answers_match(pred: str | None, gold: str | None) -> bool:
    if pred is None or gold is None:
        return False
    try:
        return math.isclose(float(pred), float(gold), rel_tol=0, abs_tol=1e-6)
    except ValueError:
        return pred.strip() == gold.strip()


@dataclass
class EvalSets:
    general: np.ndarray  # (Mg, L) int32 held-out blocks
    domain: np.ndarray  # (Md, L) int32
    em_prompts: list[np.ndarray] = field(default_factory=list)  # token ids of "<question>\n\n"
    em_gold: list[str | None] = field(default_factory=list)
    gen_prompts: list[np.ndarray] = field(default_factory=list)


@dataclass
class ModelEval:
    model: str
    role: str  # "student" | "teacher"
    stage: str  # the stage after which (students) or in which (teachers) it was measured
    params: int
    general_loss: float
    domain_loss: float
    general_top1: float  # agreement with the stage's teacher (1.0 for the teacher itself)
    domain_top1: float
    exact_match: float | None  # None when the pipeline has no exact-match set
    gen_tokens_per_s: float

    @property
    def general_ppl(self) -> float:
        return math.exp(min(self.general_loss, 50.0))

    @property
    def domain_ppl(self) -> float:
        return math.exp(min(self.domain_loss, 50.0))

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_{k}": float(v) for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None}
        out[f"{prefix}_general_ppl"] = self.general_ppl
        out[f"{prefix}_domain_ppl"] = self.domain_ppl
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "ModelEval":
        return ModelEval(**d)


def _blocks(data, tokenizer, seq_len: int, val_fraction: float | None, field: str) -> np.ndarray:
    """The data set packed as training packs it (at seq_len); with val_fraction its held-out tail only."""
    from raykd.data.blocks import pack_in_process
    from raykd.data.ingest import pad_id
    from raykd.data.records import RecordEncoder, load_chat_template
    from raykd.data.sources import plan_chunks

    dc = data.model_copy(update={"seq_len": seq_len})
    encoder = RecordEncoder(tokenizer, dc, load_chat_template(dc, tokenizer))
    blocks = pack_in_process(dc, encoder, pad_id(tokenizer), plan_chunks(dc, field, validate=False))[0].ids
    if val_fraction is None or len(blocks) < 2:
        return blocks
    return blocks[len(blocks) - held_out_count(len(blocks), val_fraction, seq_len, field):]


def build_eval_sets(
    cfg: PipelineEvalConfig,
    tokenizer,
    data: dict,  # data set name -> its DataConfig
    val_fractions: dict[str, float],  # data set name -> its val_fraction
    trained_on: set[str],  # data sets some stage (or teacher adaptation) trains on
    em_records: list[dict] | None,
) -> EvalSets:
    def held_out(name: str) -> np.ndarray:
        frac = val_fractions[name] if name in trained_on else None
        return _blocks(data[name], tokenizer, cfg.seq_len, frac, f"datasets.{name}")[: cfg.max_sequences]

    general, domain = held_out(cfg.general), held_out(cfg.domain)
    prompts, gold = [], []
    for r in (em_records or [])[-cfg.em_problems :]:  # from the end: the part a training stage never sees
        q = str(r[cfg.question_field]) + "\n\n"
        prompts.append(np.asarray(tokenizer.encode(q, add_special_tokens=False), np.int32))
        gold.append(extract_answer(str(r[cfg.answer_field])))
    gen_prompts = [row[:16] for row in general[: cfg.gen_prompts]]
    return EvalSets(general, domain, prompts, gold, gen_prompts)


def _decode_until_eos(tokenizer, tokens) -> str:
    toks = [int(t) for t in np.asarray(tokens)]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in toks:
        toks = toks[: toks.index(eos)]
    return tokenizer.decode(toks, skip_special_tokens=True)


def _em(tokenizer, generated: list, gold: list[str | None]) -> float | None:
    if not gold:
        return None
    hits = [answers_match(extract_answer(_decode_until_eos(tokenizer, g)), y) for g, y in zip(generated, gold)]
    return float(np.mean(hits))


def evaluate_teacher(handle, sets: EvalSets, name: str, stage: str, params: int, tokenizer,
                     em_max_new_tokens: int, gen_tokens: int) -> tuple[ModelEval, dict[str, np.ndarray]]:
    """Scores through the Serve deployment; returns the row and the teacher's top-1 ids per set."""
    top1, losses = {}, {}
    for key, blocks in (("general", sets.general), ("domain", sets.domain)):
        sig = handle.score.remote(list(blocks), 1).result()
        losses[key] = float(-np.mean(sig.target_logprob.astype(np.float64)))
        top1[key] = np.asarray(sig.topk_ids[:, 0])
    em = None
    if sets.em_prompts:
        gen = handle.generate.remote(sets.em_prompts, em_max_new_tokens).result()
        em = _em(tokenizer, gen.tokens, sets.em_gold)
    speed = handle.generate.remote(sets.gen_prompts, gen_tokens).result().tokens_per_second
    row = ModelEval(name, "teacher", stage, params, losses["general"], losses["domain"], 1.0, 1.0, em, speed)
    return row, top1


def evaluate_student(model_dir: str | Path, sets: EvalSets, teacher_top1: dict[str, np.ndarray], name: str,
                     stage: str, tokenizer, em_max_new_tokens: int, gen_tokens: int, threads: int) -> ModelEval:
    from raykd.models import count_parameters, torch_threads
    from raykd.teacher.hf_backend import HFTeacherBackend

    with torch_threads(threads):
        backend = HFTeacherBackend(str(model_dir), device="cpu")
        g_loss, g_agree = heldout_loss(backend.model, sets.general, teacher_top1["general"])
        d_loss, d_agree = heldout_loss(backend.model, sets.domain, teacher_top1["domain"])
        em = None
        if sets.em_prompts:
            em = _em(tokenizer, backend.generate(sets.em_prompts, em_max_new_tokens).tokens, sets.em_gold)
        speed = backend.generate(sets.gen_prompts, gen_tokens).tokens_per_second
        return ModelEval(name, "student", stage, count_parameters(backend.model), g_loss, d_loss, g_agree, d_agree,
                         em, speed)


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def progress_table(rows: list[ModelEval]) -> str:
    """Markdown: every evaluated model in order; students get Δ columns against the previous student.

    domain gain = previous domain loss − this one (> 0: learnt the domain);
    general forgetting = this general loss − previous one (> 0: forgot general text).
    """
    head = ("| model | params | general loss (ppl) | domain loss (ppl) | top-1 agree gen / dom | exact match "
            "| gen tok/s | domain gain | general forgetting |")
    lines = [head, "|" + "---|" * 9]
    prev: ModelEval | None = None
    for r in rows:
        gain = forget = "—"
        if r.role == "student" and prev is not None:
            gain, forget = f"{prev.domain_loss - r.domain_loss:+.3f}", f"{r.general_loss - prev.general_loss:+.3f}"
        lines.append(
            f"| {r.model} | {r.params:,} | {r.general_loss:.3f} ({r.general_ppl:.1f}) | {r.domain_loss:.3f} "
            f"({r.domain_ppl:.1f}) | {r.general_top1:.3f} / {r.domain_top1:.3f} | {_fmt(r.exact_match, '.3f')} "
            f"| {r.gen_tokens_per_s:.0f} | {gain} | {forget} |"
        )
        if r.role == "student":
            prev = r
    return "\n".join(lines)


def retention(teacher: ModelEval, student: ModelEval) -> list[tuple[str, float | None, float | None, float | None]]:
    """(metric, teacher value, student value, retention) rows; retention as documented in the module."""

    def ratio(num: float | None, den: float | None) -> float | None:
        if num is None or den is None or den == 0:
            return None
        return num / den

    return [
        ("general perplexity", teacher.general_ppl, student.general_ppl, ratio(teacher.general_ppl, student.general_ppl)),
        ("domain perplexity", teacher.domain_ppl, student.domain_ppl, ratio(teacher.domain_ppl, student.domain_ppl)),
        ("general loss", teacher.general_loss, student.general_loss, ratio(teacher.general_loss, student.general_loss)),
        ("domain loss", teacher.domain_loss, student.domain_loss, ratio(teacher.domain_loss, student.domain_loss)),
        ("top-1 agreement (domain)", 1.0, student.domain_top1, student.domain_top1),
        ("exact match", teacher.exact_match, student.exact_match, ratio(student.exact_match, teacher.exact_match)),
        ("parameters", float(teacher.params), float(student.params), ratio(student.params, teacher.params)),
        ("generation tok/s", teacher.gen_tokens_per_s, student.gen_tokens_per_s,
         ratio(student.gen_tokens_per_s, teacher.gen_tokens_per_s)),
    ]


def retention_table(teacher: ModelEval, student: ModelEval) -> str:
    lines = [f"| metric | {teacher.model} | {student.model} | student / teacher |", "|---|---|---|---|"]
    for name, t, s, r in retention(teacher, student):
        spec = ",.0f" if name == "parameters" else ".3f"
        lines.append(f"| {name} | {_fmt(t, spec)} | {_fmt(s, spec)} | {_fmt(r, '.3f')} |")
    return "\n".join(lines)
