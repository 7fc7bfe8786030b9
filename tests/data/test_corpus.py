"""The generated corpus: deterministic, seed-dependent, and genuinely uncertain where it should be."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

from raykd.data.corpus import generate_corpus

_WORD = re.compile(r"[A-Za-z]+|[^\sA-Za-z]")


def _bigram_next(text: str) -> dict[str, Counter]:
    words = _WORD.findall(text)
    nxt: dict[str, Counter] = defaultdict(Counter)
    for a, b in zip(words, words[1:]):
        nxt[a][b] += 1
    return nxt


def test_exact_length_and_determinism() -> None:
    a = generate_corpus(50_000, seed=0)
    assert len(a) == 50_000
    assert a == generate_corpus(50_000, seed=0)
    # A shorter corpus is a prefix of a longer one with the same seed.
    assert generate_corpus(20_000, seed=0) == a[:20_000]
    assert generate_corpus(0, seed=0) == ""


def test_seeds_differ_but_share_the_distribution() -> None:
    a, b = generate_corpus(200_000, seed=0), generate_corpus(200_000, seed=1)
    assert a != b
    assert a[:2000] != b[:2000]
    ca, cb = Counter(_WORD.findall(a)), Counter(_WORD.findall(b))
    # Same vocabulary (the frequent words) and similar frequencies.
    top = [w for w, _ in ca.most_common(50)]
    assert set(top) <= set(cb)
    na, nb = sum(ca.values()), sum(cb.values())
    for w in top[:20]:
        assert abs(ca[w] / na - cb[w] / nb) < 0.01, w


def test_small_vocabulary_and_layout() -> None:
    text = generate_corpus(300_000, seed=3)
    vocab = {w for w in _WORD.findall(text) if w.isalpha()}
    assert 150 <= len(vocab) <= 600
    assert "\n\n" in text and "Lesson:\n" in text
    assert '"' in text  # dialogue


def test_soft_targets_carry_information() -> None:
    """Several word bigrams have two or more continuations with substantial probability."""
    nxt = _bigram_next(generate_corpus(300_000, seed=0))
    uncertain = []
    for word, counts in nxt.items():
        total = sum(counts.values())
        if total < 200:
            continue
        probs = sorted((c / total for c in counts.values()), reverse=True)
        if len(probs) >= 2 and probs[1] >= 0.2:
            uncertain.append(word)
    assert len(uncertain) >= 10, uncertain
    # A designed choice: the sky is blue / grey / dark at 50 / 30 / 20 %.
    sky = Counter()
    words = _WORD.findall(generate_corpus(300_000, seed=0))
    for i in range(len(words) - 3):
        if words[i] == "sky" and words[i + 1] == "was":
            sky[words[i + 2]] += 1
    total = sum(sky.values())
    assert set(sky) == {"blue", "grey", "dark"}
    assert abs(sky["blue"] / total - 0.5) < 0.08 and abs(sky["dark"] / total - 0.2) < 0.08


def test_structure_is_learnable() -> None:
    """Context lowers entropy a lot (there is something to learn) but not to zero (KD has signal)."""
    text = generate_corpus(300_000, seed=0)
    words = _WORD.findall(text)
    uni = Counter(words)
    n = len(words)
    h_uni = -sum(c / n * math.log2(c / n) for c in uni.values())
    nxt = _bigram_next(text)
    h_bi = 0.0
    for counts in nxt.values():
        t = sum(counts.values())
        h_bi -= sum(c / n * math.log2(c / t) for c in counts.values())
    assert h_bi < 0.6 * h_uni
    assert h_bi > 0.5


def test_agreement() -> None:
    text = generate_corpus(200_000, seed=2)
    # a / an agree with the next word.
    assert not re.search(r"\ba [aeiou]", text)
    assert not re.search(r"\ban [^aeiou]", text)
    # The ending's pronoun agrees with the main character.
    for m in re.finditer(r"(\w+) went home\. (He|She) was", text):
        name, pron = m.groups()
        girls = {"Anna", "Mia", "Lily", "Emma", "Sara", "Nora", "Lucy", "Ella", "Rosa", "Ivy"}
        assert (pron == "She") == (name in girls), m.group(0)
    # Arithmetic is right.
    nums = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    facts = re.findall(r"^(\w+) (plus|minus) (\w+) is (\w+)\.$", text, flags=re.M)
    assert len(facts) > 100
    for a, op, b, c in facts:
        ia, ib, ic = nums.index(a), nums.index(b), nums.index(c)
        assert ic == (ia + ib if op == "plus" else ia - ib)
