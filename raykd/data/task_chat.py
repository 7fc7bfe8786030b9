"""The task suite as chat records, scored through the chat template (spec: ../shared/specs/task-suite.md).

Each problem is one conversation: the user turn is the problem's line up to "=", the assistant turn its
answer, and the record keeps the difficulty level beside the messages:

    {"messages": [{"role": "user", "content": "99999999-00004719="},
                  {"role": "assistant", "content": "99995280"}], "level": 2}

    python -m raykd.data.task_chat --out data/ --train 20000 --test 200   # tasks_train.jsonl, tasks_test.jsonl
    raykd distill --config jobs/configs/tasks_chat.yaml                   # trains on one, scores the other

A ChatTask is asked as a chat model is: the conversation without its last assistant turn, rendered with the
chat template and its generation prompt; greedy decoding stops at EOS (where the template ends an assistant
turn); the completion is right when it equals the last assistant turn, whitespace at the ends aside. The
generated suite's problems are asked the same way when the training data is chat (`eval.tasks.format`,
raykd/eval/tasks.py), so a student taught in chat form is examined in chat form. Train and test records
come from the suite's salted split (raykd/data/task_suite.py), so they never share a prompt.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from raykd.config import ConfigError
from raykd.data.task_suite import END, Problem, TaskSuite

__all__ = ["ChatTask", "as_chat", "chat_record", "load_chat_tasks", "write_task_records"]


@dataclass(frozen=True)
class ChatTask:
    """A conversation whose last assistant turn is the answer to reach by exact match.

    `messages`: the turns before that answer, ((role, content), ...)."""

    level: int
    messages: tuple[tuple[str, str], ...]
    answer: str

    def is_correct(self, completion: str) -> bool:
        return completion.strip() == self.answer.strip()


def as_chat(p: Problem) -> ChatTask:
    """The generated problem as a one-turn conversation (its prompt line without the leading break)."""
    return ChatTask(p.level, (("user", p.prompt[len(END):]),), p.answer)


def chat_record(p: Problem) -> dict:
    t = as_chat(p)
    return {"messages": [{"role": r, "content": c} for r, c in t.messages] + [{"role": "assistant", "content": t.answer}],
            "level": t.level}


def write_task_records(out: str | Path, train: int, test_per_level: int, seed: int = 0,
                       suite: TaskSuite | None = None) -> tuple[Path, Path]:
    """`<out>/tasks_train.jsonl` (`train` train-split problems, levels by the suite's weights, seeded) and
    `<out>/tasks_test.jsonl` (the suite's test items, `test_per_level` per level), written atomically."""
    from raykd.data.tasks import write_jsonl

    suite = suite or TaskSuite()
    rnd = random.Random(f"{suite.family}|chat-records|{seed}")
    out = Path(out)
    train_path = write_jsonl([chat_record(suite.train_problem(rnd)) for _ in range(train)], out / "tasks_train.jsonl")
    test_path = write_jsonl([chat_record(p) for p in suite.test_items(test_per_level, seed=0)], out / "tasks_test.jsonl")
    return train_path, test_path


def load_chat_tasks(path: str | Path, levels: list[int] | None = None, per_level: int | None = None,
                    field: str = "eval.tasks.records") -> list[ChatTask]:
    """ChatTasks from a .jsonl of chat records (`messages` ending with the assistant's answer; `level`, a
    positive integer, defaults to 1), in file order, the first `per_level` of each of `levels`. A missing
    file or a malformed record is one ConfigError naming `field`, the file and the line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{field}: file not found: {p}")
    out: list[ChatTask] = []
    taken: dict[int, int] = {}
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{field}: {p}:{n}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: not JSON ({e.msg})") from None
            task = _task_of(raw, where)
            if (levels is None or task.level in levels) and (per_level is None or taken.get(task.level, 0) < per_level):
                taken[task.level] = taken.get(task.level, 0) + 1
                out.append(task)
    if not out:
        raise ConfigError(f"{field}: {p} has no record" + (f" at levels {levels}" if levels else ""))
    return out


def _task_of(raw, where: str) -> ChatTask:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a record must be a JSON object")
    msgs = raw.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise ConfigError(f"{where}: 'messages' must list the turns before the answer and the answer")
    for i, m in enumerate(msgs):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ConfigError(f"{where}: message {i} needs 'role' and 'content' strings")
    if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
        raise ConfigError(f"{where}: the last message must be the assistant's (non-empty) answer")
    level = raw.get("level", 1)
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ConfigError(f"{where}: 'level' must be a positive integer, got {level!r}")
    return ChatTask(level, tuple((m["role"], m["content"]) for m in msgs[:-1]), msgs[-1]["content"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raykd.data.task_chat", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for tasks_train.jsonl and tasks_test.jsonl")
    parser.add_argument("--train", type=int, default=20000, help="training records (train-split problems)")
    parser.add_argument("--test", type=int, default=200, help="test records per level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="complement", help="complement | arith (raykd/data/task_suite.py)")
    args = parser.parse_args(argv)
    for path in write_task_records(args.out, args.train, args.test, args.seed, TaskSuite(family=args.family)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
