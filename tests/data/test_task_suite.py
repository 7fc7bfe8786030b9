"""Tests of raykd/data/task_suite.py: formats, parsing, splits, determinism, scoring, batched greedy decoding."""

from __future__ import annotations

import math
import random

import pytest

from raykd.data.task_suite import (
    END,
    LEVELS,
    Problem,
    TaskScore,
    TaskSuite,
    mix_with_tasks,
    parse_answer,
    retention,
    score_completions,
    split_of,
)


def test_complement_format():
    p = Problem(2, "-", 99_999_999, 4719, width=8)
    assert p.prompt == "\n99999999-00004719=" and p.answer == "99995280" and p.result == 99_995_280
    assert p.line == "99999999-00004719=99995280\n"
    assert parse_answer(p.answer + END) == p.result


def test_arith_format_reversed():
    p = Problem(3, "+", 347, 589, reverse=True)
    assert p.prompt == "\n347+589=" and p.answer == "639" and p.line == "347+589=639\n"
    assert parse_answer("639\n", reverse=True) == 936
    assert Problem(2, "-", 40, 13).result == 27 and Problem(2, "*", 47, 8).result == 376


def test_parse_answer_rejects_malformed():
    assert parse_answer("936\nnext") == 936
    assert parse_answer("936") == 936  # the token budget ran out before the marker
    assert parse_answer("01", reverse=True) == 10
    for bad in ("", "\n936", "93a\n", " 936\n", "-1\n", "٣\n", "9 3\n"):
        assert parse_answer(bad) is None, bad


@pytest.mark.parametrize("family", ["complement", "arith"])
@pytest.mark.parametrize("level", LEVELS)
def test_levels_are_what_they_say(family, level):
    suite = TaskSuite(family=family)
    rnd = random.Random(0)
    for _ in range(300):
        p = suite.sample(rnd, level)
        assert p.result >= 0 and parse_answer(p.answer + END, p.reverse) == p.result
        if family == "complement":
            assert len(p.answer) == 8 and len(str(p.b)) <= 2 * level
            assert level == 1 or len(str(p.b)) >= 2 * level - 1
            assert all(int(x) + int(y) == 9 for x, y in zip(str(p.b).zfill(8), p.answer))
        else:
            assert len(str(p.a)) == level
            assert (2 <= p.b <= 9 and level <= suite.max_mul_level) if p.op == "*" else len(str(p.b)) == level


@pytest.mark.parametrize("family", ["complement", "arith"])
def test_level1_is_enumerated_and_split_three_ways(family):
    suite = TaskSuite(family=family)
    space = suite.space(1)
    assert len({p.prompt for p in space}) == len(space) == (100 if family == "complement" else 235)
    parts = {s: {p.prompt for p in suite.items(s, 1, 10_000)} for s in ("train", "val", "test")}
    assert set().union(*parts.values()) == {p.prompt for p in space}
    assert not parts["train"] & parts["test"] and not parts["train"] & parts["val"] and not parts["val"] & parts["test"]
    assert len(parts["test"]) >= 0.3 * len(space)


@pytest.mark.parametrize("family", ["complement", "arith"])
@pytest.mark.parametrize("level", [2, 3, 4])
def test_sampled_items_are_in_their_split_distinct_and_seeded(family, level):
    suite = TaskSuite(family=family)
    a = suite.items("test", level, 150, seed=3)
    assert len(a) == 150 and len({p.prompt for p in a}) == 150
    assert all(split_of(p.prompt, level) == "test" for p in a)
    assert [p.prompt for p in a] == [p.prompt for p in suite.items("test", level, 150, seed=3)]
    assert [p.prompt for p in a] != [p.prompt for p in suite.items("test", level, 150, seed=4)]


@pytest.mark.parametrize("family", ["complement", "arith"])
def test_training_text_holds_only_train_problems(family):
    suite = TaskSuite(family=family)
    text = suite.training_text(60_000, seed=1)
    assert len(text) == 60_000 and text == suite.training_text(60_000, seed=1)
    assert text != suite.training_text(60_000, seed=2)
    lines = [ln for ln in text.split(END) if ln][:-1]  # the last line may be cut
    prompts = {END + ln.split("=")[0] + "=" for ln in lines}
    assert len(lines) > 2000
    test = {p.prompt for p in suite.test_items(300)} | {p.prompt for p in suite.test_items(300, split="val")}
    assert not prompts & test
    # every line is a correct problem
    for ln in lines[:500]:
        q, ans = ln.split("=")
        op = next(c for c in q[1:] if not c.isdigit())
        a, b = (int(x) for x in q.split(op, 1))
        rev = family == "arith"
        assert parse_answer(ans, rev) == Problem(1, op, a, b).result


def test_score_completions_counts_and_retention():
    items = [Problem(1, "+", 3, 4, reverse=True), Problem(1, "+", 7, 8, reverse=True),
             Problem(2, "-", 40, 13, reverse=True), Problem(2, "*", 12, 3, reverse=True)]
    teacher = score_completions(items, ["7\n", "51\n", "72\n", "63\n"])
    student = score_completions(items, ["7\n", "15\n", "72", "6"])
    assert teacher.count == {1: 2, 2: 2} and teacher.correct == {1: 2, 2: 2}
    assert student.correct == {1: 1, 2: 1} and student.exact_match() == 0.5
    assert retention(student, teacher, 1) == 0.5 and retention(student, teacher) == 0.5
    assert math.isnan(retention(student, TaskScore({1: 0}, {1: 2}), 1))
    assert student.as_metrics("kd") == {"kd_em_L1": 0.5, "kd_em_L2": 0.5, "kd_em": 0.5}
    with pytest.raises(ValueError):
        score_completions(items, ["7\n"])


def test_mix_with_tasks_keeps_the_text_and_adds_train_problems_in_the_asked_share():
    suite = TaskSuite()
    general = "".join(f"Line {i} of some prose, with words.\n" + ("\n" if i % 7 == 6 else "") for i in range(3000))
    mixed = mix_with_tasks(general, suite, 0.2, seed=3)
    assert mixed == mix_with_tasks(general, suite, 0.2, seed=3) and mixed != mix_with_tasks(general, suite, 0.2, seed=4)
    prose = [ln for ln in mixed.splitlines() if ln.startswith("Line ")]
    assert prose == [ln for ln in general.splitlines() if ln]  # all of it, in order
    problems = [ln for ln in mixed.splitlines() if ln and not ln.startswith("Line ")]
    task_chars = sum(len(ln) + 1 for ln in problems)
    assert 0.17 < task_chars / len(mixed) < 0.23
    whole = [ln for ln in problems if len(ln) == 2 * 8 + 2 + 8]
    assert len(problems) - len(whole) <= 1  # training_text cuts its last problem at the character budget
    for ln in whole:  # well-formed and from the train split only
        prompt, answer = ln.split("=")
        a, b = (int(x) for x in prompt.split("-"))
        assert a - b == int(answer)
        assert split_of(f"{END}{prompt}=", 1 if b < 100 else (len(str(b)) + 1) // 2) == "train"
    assert mix_with_tasks(general, suite, 0.0, seed=3) == general
    with pytest.raises(ValueError):
        mix_with_tasks(general, suite, 1.0, seed=3)


def test_bad_arguments():
    with pytest.raises(ValueError):
        TaskSuite(family="poetry")
    with pytest.raises(ValueError):
        TaskSuite(levels=(0, 1))
    with pytest.raises(ValueError):
        TaskSuite().items("holdout", 1, 5)


def test_greedy_complete_batched_equals_one_by_one():
    """Left-padded batched decoding gives what one-prompt-at-a-time decoding gives, and stops at END."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from raykd.data.task_suite import greedy_complete, score_model

    suite = TaskSuite(family="arith")  # prompts of different lengths: real padding
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([suite.training_text(20_000, 0)], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64))
    items = suite.test_items(4)
    prompts = [p.prompt for p in items]
    batched = greedy_complete(model, tokenizer, prompts, max_new=6, batch_size=16)
    single = [greedy_complete(model, tokenizer, [p], max_new=6)[0] for p in prompts]
    assert batched == single
    assert all(END not in c[:-1] for c in batched)
    score = score_model(model, tokenizer, items)
    assert score.count == {lv: 4 for lv in LEVELS}
