"""Generated GSM8K-style math word problems: an instruction format and a math domain with no downloads.

Each record has the two fields of GSM8K (`question`, `answer`), and the answer ends, like GSM8K's, with a
line `#### <number>` after worked steps written as `a + b = <<a+b=c>>c`:

    {"question": "Mia had 9 apples. She ate 4 of them. How many apples does Mia have now?",
     "answer": "Mia had 9 apples and ate 4.\\n9 - 4 = <<9-4=5>>5\\n#### 5"}

The names, objects and places come from raykd's story grammar (raykd/data/corpus.py), so a teacher built on
that corpus already knows the words and has to learn only the format and the arithmetic: a small, real
domain shift for the pipeline example (jobs/configs/pipeline_three_stage.yaml). Deterministic in
(`num_records`, `seed`); different seeds give disjoint-looking sets from the same distribution.

    python -m raykd.data.tasks --out data/ --train 2000 --test 200     # math_train.jsonl, math_test.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from raykd.files import write_text

__all__ = ["generate_math_problems", "write_jsonl", "ensure_math_problems"]

_GIRLS = ["Anna", "Mia", "Lily", "Emma", "Sara", "Nora", "Lucy", "Ella", "Rosa", "Ivy"]
_BOYS = ["Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Noah", "Finn", "Owen", "Luke"]
_THINGS = ["apples", "oranges", "pears", "plums", "shells", "coins", "stones", "stickers", "cookies", "books"]
_PLACES = ["the park", "the beach", "the market", "the garden", "the river", "the farm", "the forest", "the school"]
_CONTAINERS = [("bag", "bags"), ("box", "boxes"), ("basket", "baskets"), ("jar", "jars")]


def _person(rnd: random.Random) -> tuple[str, str, str]:
    """(name, subject pronoun, possessive pronoun)."""
    if rnd.random() < 0.5:
        return rnd.choice(_GIRLS), "she", "her"
    return rnd.choice(_BOYS), "he", "his"


def _eq(a: int, op: str, b: int, c: int) -> str:
    return f"{a} {op} {b} = <<{a}{op}{b}={c}>>{c}"


def _problem(rnd: random.Random) -> dict[str, str]:
    name, he, his = _person(rnd)
    He = he.capitalize()
    thing = rnd.choice(_THINGS)
    kind = rnd.randrange(6)
    if kind == 0:  # subtraction
        a = rnd.randint(5, 40)
        b = rnd.randint(1, a - 1)
        q = f"{name} had {a} {thing}. {He} gave {b} of them to a friend. How many {thing} does {name} have now?"
        steps = [f"{name} had {a} {thing} and gave away {b}.", _eq(a, "-", b, a - b)]
        ans = a - b
    elif kind == 1:  # addition across places
        a, b = rnd.randint(2, 50), rnd.randint(2, 50)
        p1, p2 = rnd.sample(_PLACES, 2)
        q = f"{name} found {a} {thing} at {p1} and {b} {thing} at {p2}. How many {thing} did {he} find in all?"
        steps = [_eq(a, "+", b, a + b)]
        ans = a + b
    elif kind == 2:  # multiplication
        one, many = rnd.choice(_CONTAINERS)
        a, b = rnd.randint(2, 9), rnd.randint(2, 12)
        q = f"{name} bought {a} {many} of {thing}. Each {one} holds {b} {thing}. How many {thing} did {he} buy?"
        steps = [f"Each {one} holds {b} {thing}, so {a} {many} hold:", _eq(a, "*", b, a * b)]
        ans = a * b
    elif kind == 3:  # division
        a, b = rnd.randint(2, 12), rnd.randint(2, 8)
        total = a * b
        q = f"{name} shared {total} {thing} equally among {b} friends. How many {thing} did each friend get?"
        steps = [_eq(total, "/", b, a)]
        ans = a
    elif kind == 4:  # two steps: add then subtract
        a, b = rnd.randint(5, 30), rnd.randint(2, 20)
        c = rnd.randint(1, a + b - 1)
        q = (f"{name} had {a} {thing}. {He} found {b} more at {rnd.choice(_PLACES)} and then lost {c} on the way "
             f"home. How many {thing} does {he} have now?")
        steps = [f"After finding more, {he} had {_eq(a, '+', b, a + b)} {thing}.", _eq(a + b, "-", c, a + b - c)]
        ans = a + b - c
    else:  # two steps: multiply then add
        one, many = rnd.choice(_CONTAINERS)
        a, b, c = rnd.randint(2, 6), rnd.randint(2, 10), rnd.randint(1, 15)
        q = (f"{name} has {a} {many} with {b} {thing} in each {one}, and {c} loose {thing} in {his} pocket. "
             f"How many {thing} does {he} have altogether?")
        steps = [f"In the {many}: {_eq(a, '*', b, a * b)} {thing}.", _eq(a * b, "+", c, a * b + c)]
        ans = a * b + c
    return {"question": q, "answer": "\n".join([*steps, f"#### {ans}"])}


def generate_math_problems(num_records: int, seed: int) -> list[dict[str, str]]:
    """`num_records` GSM8K-style records `{"question", "answer"}`; deterministic in (num_records, seed)."""
    if num_records < 0:
        raise ValueError(f"num_records must be >= 0, got {num_records}")
    rnd = random.Random(seed)
    return [_problem(rnd) for _ in range(num_records)]


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Write one JSON object per line, atomically (a killed write never leaves a partial file)."""
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def ensure_math_problems(directory: str | Path, num_records: int, seed: int) -> Path:
    """`<directory>/math-<num_records>-<seed>.jsonl`, generated once (same arguments ⇒ same file)."""
    path = Path(directory) / f"math-{num_records}-{seed}.jsonl"
    if not path.is_file():
        write_jsonl(generate_math_problems(num_records, seed), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raykd.data.tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for math_train.jsonl and math_test.jsonl")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11, help="train seed; the test set uses seed + 1")
    args = parser.parse_args(argv)
    write_jsonl(generate_math_problems(args.train, args.seed), args.out / "math_train.jsonl")
    write_jsonl(generate_math_problems(args.test, args.seed + 1), args.out / "math_test.jsonl")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
