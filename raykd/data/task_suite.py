"""The exact-match task suite: generated arithmetic with a difficulty knob (spec: ../shared/specs/task-suite.md).

A problem is one line of text: prompt (a line break, the operands, "="), answer, end-of-answer marker "\\n".
Two families share the generator interface, the split and the scorer:

``complement`` (default; the one the tiny offline teacher learns within its build budget)
    99999999-00004719=99995280\\n
    The nines' complement of an 8-digit zero-padded number (a subtraction with no borrows). Level L (1..4)
    has 2L-1 or 2L significant digits, so a level-L answer has 2L digits that must all be right; the
    padding keeps every answer digit at the same distance from its operand digit at every level.
``arith``
    347+589=639\\n            (347 + 589 = 936, answer written least-significant digit first)
    L-digit operands at level L; `+` and `-` (a >= b) at every level, `*` (L-digit x 1-digit, 2..9) up to
    `max_mul_level`. Reversed answers (a documented formatting trick) let a left-to-right model carry.
    Measured: a 1M-parameter teacher does not learn it in ~1k steps (docs/quickstart.md); bigger teachers can.

Splits: every distinct prompt belongs to exactly one of train / val / test, decided by a salted hash of the
prompt text, so the split never depends on the generator seed and the sets never share a prompt. The
smallest level (<= 255 distinct prompts) tests a larger share (`TEST_FRACTION`). The leading line break
is part of the prompt: in training text every problem follows one (the previous answer's end marker, or
a paragraph break).

Pure Python except `greedy_complete` / `score_model` (torch + an HF causal LM, imported inside). Scoring
is separate from decoding so a teacher behind Ray Serve can be scored from its own generations
(raykd/eval/tasks.py). `mix_with_tasks` interleaves task paragraphs with general text (the offline
teacher's corpus and the quickstart's data, raykd/data/sources.py):

    suite = TaskSuite()                                   # family="complement", levels 1..4
    text = suite.training_text(200_000, seed=0)           # train-split problems, paragraphs of lines
    items = suite.test_items(per_level=200)               # never a prompt training_text can produce
    score = score_model(model, tokenizer, items)          # TaskScore: exact match per level + overall
    print(format_task_table({"teacher": t, "kd student": s}))  # raykd/eval/table.py: + retention
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "END", "FAMILIES", "LEVELS", "Problem", "TaskScore", "TaskSuite", "ask_text", "chat_prompt", "end_marker_ids",
    "greedy_complete", "is_chat", "max_new_tokens", "mix_with_tasks", "model_completions", "parse_answer", "retention",
    "score_completions", "score_model", "split_of",
]

LEVELS = (1, 2, 3, 4)
FAMILIES = ("complement", "arith")
END = "\n"  # end-of-answer marker, also the line break before the next problem
SPLITS = ("train", "val", "test")
SPLIT_SALT = "raykd-task-suite-v1"  # changing it re-deals every prompt: bump with the format only
VAL_FRACTION = {1: 0.1}  # other levels: DEFAULT_FRACTION
TEST_FRACTION = {1: 0.4}
DEFAULT_FRACTION = 0.05
WIDTH = 8  # digits of a complement operand / answer
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Problem:
    """`a op b`; `width` > 0 zero-pads operands and answer to that many digits; `reverse` writes the
    answer's digits least-significant first."""

    level: int
    op: str
    a: int
    b: int
    width: int = 0
    reverse: bool = False

    @property
    def result(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b if self.op == "-" else self.a * self.b

    def _num(self, x: int) -> str:
        return str(x).zfill(self.width) if self.width else str(x)

    @property
    def prompt(self) -> str:
        return f"{END}{self._num(self.a)}{self.op}{self._num(self.b)}="

    @property
    def answer(self) -> str:
        """The answer as training text writes it (without the end marker)."""
        s = self._num(self.result)
        return s[::-1] if self.reverse else s

    @property
    def line(self) -> str:
        """One training line: the prompt without its leading break, the answer, the end marker."""
        return f"{self.prompt[len(END):]}{self.answer}{END}"

    def is_correct(self, completion: str) -> bool:
        """Whether `completion` (the text generated after the prompt) states the right answer."""
        return parse_answer(completion, self.reverse) == self.result


def parse_answer(completion: str, reverse: bool = False) -> int | None:
    """The integer a completion states, or None when it is not a well-formed answer: the text before the
    first end marker (all of it when the token budget ran out first), ASCII digits only."""
    text = completion.split(END, 1)[0]
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text[::-1] if reverse else text)


def split_of(prompt: str, level: int) -> str:
    """'train', 'val' or 'test': a salted hash of the prompt against the level's fractions."""
    u = int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}|{prompt}".encode()).digest()[:8], "big") / 2**64
    test = TEST_FRACTION.get(level, DEFAULT_FRACTION)
    if u < test:
        return "test"
    return "val" if u < test + VAL_FRACTION.get(level, DEFAULT_FRACTION) else "train"


@dataclass
class TaskSuite:
    """Generator of problems of one family. `level_weights`: how often each level appears in training
    text; `op_weights` (arith only): how often each operation does."""

    family: str = "complement"
    levels: tuple[int, ...] = LEVELS
    ops: tuple[str, ...] = OPS
    max_mul_level: int = 2
    level_weights: dict[int, float] = field(default_factory=lambda: {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0})
    op_weights: dict[str, float] = field(default_factory=lambda: {"+": 0.4, "-": 0.3, "*": 0.3})

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {self.levels}")
        if not self.ops or any(op not in OPS for op in self.ops):
            raise ValueError(f"ops must be a non-empty subset of {OPS}, got {self.ops}")

    # ----------------------------------------------------------------------------------- generation
    def ops_at(self, level: int) -> tuple[str, ...]:
        ops = tuple(op for op in self.ops if op != "*" or level <= self.max_mul_level)
        return ops or ("+",)

    def sample(self, rnd: random.Random, level: int) -> Problem:
        """One problem of `level`, uniform over its operands (any split)."""
        if self.family == "complement":
            lo = 0 if level == 1 else 10 ** (2 * level - 2)
            return Problem(level, "-", 10**WIDTH - 1, rnd.randint(lo, 10 ** (2 * level) - 1), width=WIDTH)
        ops = self.ops_at(level)
        op = rnd.choices(ops, weights=[self.op_weights.get(o, 1.0) for o in ops])[0]
        lo, hi = (0, 9) if level == 1 else (10 ** (level - 1), 10**level - 1)
        a = rnd.randint(lo, hi)
        b = rnd.randint(2, 9) if op == "*" else rnd.randint(lo, a) if op == "-" else rnd.randint(lo, hi)
        return Problem(level, op, a, b, reverse=True)

    def space(self, level: int) -> list[Problem] | None:
        """Every problem of a level when there are few (level 1), else None (sampled instead)."""
        if level != 1:
            return None
        if self.family == "complement":
            return [Problem(1, "-", 10**WIDTH - 1, b, width=WIDTH) for b in range(100)]
        out = []
        for op in self.ops_at(1):
            for a in range(10):
                bs = range(2, 10) if op == "*" else range(a + 1) if op == "-" else range(10)
                out.extend(Problem(1, op, a, b, reverse=True) for b in bs)
        return out

    def items(self, split: str, level: int, n: int, seed: int = 0) -> list[Problem]:
        """Up to `n` distinct problems of one split and level, deterministic in `seed` (all of the
        split's problems when the level is enumerable and has <= n of them)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rnd = random.Random(f"{self.family}|{seed}|{split}|{level}")
        pool = self.space(level)
        if pool is not None:
            pool = [p for p in pool if split_of(p.prompt, level) == split]
            return pool if len(pool) <= n else rnd.sample(pool, n)
        seen: dict[str, Problem] = {}
        for _ in range(200 * n):
            if len(seen) >= n:
                break
            p = self.sample(rnd, level)
            if p.prompt not in seen and split_of(p.prompt, level) == split:
                seen[p.prompt] = p
        return list(seen.values())

    def test_items(self, per_level: int, seed: int = 0, split: str = "test") -> list[Problem]:
        """`per_level` test problems of every level (fewer where the level's test split is smaller)."""
        return [p for lv in self.levels for p in self.items(split, lv, per_level, seed)]

    def training_text(self, num_chars: int, seed: int, lines_per_paragraph: tuple[int, int] = (4, 12)) -> str:
        """`num_chars` of train-split problems in paragraphs of lines, a blank line between paragraphs.

        Levels are drawn by `level_weights`; deterministic in (`num_chars`, `seed`).
        """
        rnd = random.Random(f"{self.family}|train-text|{seed}")
        paras: list[str] = []
        total = 0
        while total < num_chars:
            paras.append("".join(self.train_problem(rnd).line for _ in range(rnd.randint(*lines_per_paragraph))))
            total += len(paras[-1]) + len(END)
        return END.join(paras)[:num_chars]

    def train_problem(self, rnd: random.Random) -> Problem:
        """One train-split problem, its level drawn by `level_weights` (training text and chat records)."""
        levels = list(self.levels)
        weights = [self.level_weights.get(lv, 1.0) for lv in levels]
        while True:
            level = rnd.choices(levels, weights=weights)[0]
            p = self.sample(rnd, level)
            if split_of(p.prompt, level) == "train":
                return p


def _paragraphs(text: str, target: int = 800) -> list[str]:
    """Chunks of about `target` characters cut at blank lines (or at a line break past 3x `target`)."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= target and line.strip() == "" or n >= 3 * target:
            out.append("".join(cur))
            cur, n = [], 0
    if cur:
        out.append("".join(cur))
    return out


def mix_with_tasks(general: str, suite: "TaskSuite", task_fraction: float, seed: int) -> str:
    """`general` text with train-split task paragraphs interleaved (a seeded order), so that the task text
    is `task_fraction` of the result's characters. Every paragraph ends with a blank line, so every problem
    follows a line break, as its prompt says."""
    if not 0 <= task_fraction < 1:
        raise ValueError(f"task_fraction must be in [0, 1), got {task_fraction}")
    if task_fraction == 0:
        return general
    task_text = suite.training_text(int(len(general) * task_fraction / (1 - task_fraction)), seed)
    g = [p if p.endswith(END) else p + END for p in _paragraphs(general)]
    t = [p.rstrip(END) + END + END for p in task_text.split(END + END) if p.strip()]
    tags = [0] * len(g) + [1] * len(t)
    random.Random(seed).shuffle(tags)
    parts, gi, ti = [], iter(g), iter(t)
    for tag in tags:
        parts.append(next(ti) if tag else next(gi))
    return "".join(parts)


# --------------------------------------------------------------------------------------------- scoring
@dataclass
class TaskScore:
    """Exact match per level: `correct[level]` of `count[level]` test prompts."""

    correct: dict[int, int]
    count: dict[int, int]

    def exact_match(self, level: int | None = None) -> float:
        n = sum(self.count.values()) if level is None else self.count.get(level, 0)
        c = sum(self.correct.values()) if level is None else self.correct.get(level, 0)
        return c / n if n else float("nan")

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_em_L{lv}": self.exact_match(lv) for lv in sorted(self.count)}
        out[f"{prefix}_em"] = self.exact_match()
        return out


def retention(student: TaskScore, teacher: TaskScore, level: int | None = None) -> float:
    """Student exact match / teacher exact match; nan where the teacher scores 0 (nothing to retain)."""
    t = teacher.exact_match(level)
    return student.exact_match(level) / t if t > 0 else float("nan")


def score_completions(items: Sequence, completions: Sequence[str]) -> TaskScore:
    """Exact match of each completion (the text generated after the prompt) against its item (a Problem, or
    a ChatTask of raykd/data/task_chat.py: anything with `level` and `is_correct`)."""
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} problems but {len(completions)} completions")
    correct: dict[int, int] = {}
    count: dict[int, int] = {}
    for p, c in zip(items, completions):
        count[p.level] = count.get(p.level, 0) + 1
        correct[p.level] = correct.get(p.level, 0) + int(p.is_correct(c))
    return TaskScore(correct, count)


def max_new_tokens(p) -> int:
    """Token budget: the answer's characters + the end marker (one token per character at worst) + 1."""
    return len(p.answer) + 2


def end_marker_ids(tokenizer) -> list[int]:
    """Every token whose text contains the end-of-answer marker (a plain-text answer stops at the first)."""
    return sorted(i for t, i in tokenizer.get_vocab().items() if END in tokenizer.convert_tokens_to_string([t]))


def greedy_complete(model, tokenizer, prompts: Sequence[str], max_new: int, batch_size: int = 128,
                    stop_ids: list[int] | None = None) -> list[str]:
    """Greedy continuations (text after each prompt), batched: left padding + KV cache (HF generate).

    A row stops at the first of `stop_ids` (default: a token containing the end marker), or after `max_new`
    tokens.
    """
    import torch

    if stop_ids is None:
        stop_ids = end_marker_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            enc = [tokenizer.encode(p, add_special_tokens=False) for p in prompts[i : i + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])  # (b, width), left-padded
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=stop_ids or None, pad_token_id=pad)
            out.extend(tokenizer.decode(row, skip_special_tokens=True) for row in gen[:, width:].tolist())
    model.train(was_training)
    return out


def is_chat(item) -> bool:
    """A ChatTask (raykd/data/task_chat.py: turns before the answer) rather than a plain-text Problem."""
    return hasattr(item, "messages")


def chat_prompt(task, tokenizer, template: str | None = None) -> str:
    """What a chat model answers from: the turns before the answer + the template's generation prompt."""
    from raykd.data.chat import render_prompt

    return render_prompt(tokenizer, [{"role": r, "content": c} for r, c in task.messages], template)


def ask_text(item, tokenizer, chat_template: str | None = None) -> str:
    """The text a model continues to answer `item`: a Problem's prompt line, or a ChatTask's chat prompt."""
    return chat_prompt(item, tokenizer, chat_template) if is_chat(item) else item.prompt


def model_completions(model, tokenizer, items: Sequence, batch_size: int = 128,
                      chat_template: str | None = None) -> list[str]:
    """Greedy completions of every item, batched by answer length (so each batch's budget is tight).

    A Problem is asked as plain text and stops at the end marker; a ChatTask (raykd/data/task_chat.py) through
    the chat template (`chat_template`, None: the tokenizer's) and stops at EOS."""
    completions = [""] * len(items)
    groups: dict[tuple[int, bool], list[int]] = {}
    for j, p in enumerate(items):
        groups.setdefault((max_new_tokens(p), is_chat(p)), []).append(j)
    for (budget, chat), idx in sorted(groups.items()):
        prompts = [ask_text(items[j], tokenizer, chat_template) for j in idx]
        stop = [tokenizer.eos_token_id] if chat else None
        for j, t in zip(idx, greedy_complete(model, tokenizer, prompts, budget, batch_size, stop)):
            completions[j] = t
    return completions


def score_model(model, tokenizer, items: Sequence, batch_size: int = 128, chat_template: str | None = None) -> TaskScore:
    """Greedy-decode every item in-process and score it."""
    return score_completions(items, model_completions(model, tokenizer, items, batch_size, chat_template))
