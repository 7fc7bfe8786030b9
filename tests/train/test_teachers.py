"""Several teachers behind one signal source (raykd/train/teachers.py): routed per block, or ensembled."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest

from raykd.signals.ensemble import mix_signals
from raykd.signals.format import pack, sequence_hash, to_ipc, unpack
from raykd.signals.store import SignalStore
from raykd.train.signal_source import SignalSource
from raykd.train.teachers import MultiSignalSource
from tests.signals.fakes import FP, K, VOCAB, CountingTeacher, assert_same, batches, score

FP_MATH = "bbbbbbbbbbbbbbbb"


class MathTeacher(CountingTeacher):
    """Another deterministic teacher (other weights: another distribution and fingerprint)."""

    def __call__(self, sequences, top_k):
        self.calls += 1
        self.sequences += len(sequences)
        f: Future = Future()
        f.set_result(to_ipc(pack(math_score(sequences, top_k), vocab_size=VOCAB, teacher_fingerprint=FP_MATH,
                                 seq_hashes=[sequence_hash(s) for s in sequences])))
        return f


def math_score(sequences, top_k=K):
    return score([(np.asarray(s, np.int64) * 7 + 3) % VOCAB for s in sequences], top_k)


def _reference(fn, fp, sequences):
    """What the live teacher's packed reply unpacks to (float16 on the wire)."""
    return unpack(pack(fn(sequences), vocab_size=VOCAB, teacher_fingerprint=fp,
                       seq_hashes=[sequence_hash(s) for s in sequences]))


def _sources(tmp_path, cache=True):
    general, math = CountingTeacher(), MathTeacher()
    stores = [SignalStore(tmp_path / name, fingerprint=fp, top_k=K, vocab_size=VOCAB) if cache else None
              for name, fp in (("general", FP), ("math", FP_MATH))]
    return (general, math), [SignalSource(general, top_k=K, fingerprint=FP, cache=stores[0]),
                             SignalSource(math, top_k=K, fingerprint=FP_MATH, cache=stores[1])]


def test_routed_blocks_are_scored_by_their_teacher_only(tmp_path):
    data = batches(12)
    routes = np.array([0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0], np.int8)  # teacher of every global block
    (general, math), sources = _sources(tmp_path)
    multi = MultiSignalSource(["general", "math"], sources, routes=routes)
    index = np.array([5, 0, 8, 3, 1, 11])  # one worker's step: blocks in stream order, not block order
    got = multi.submit_step(SimpleNamespace(ids=data[index], index=index)).result()
    for row, block in enumerate(index):  # each row carries its own teacher's signals, in batch order
        ref = (_reference(math_score, FP_MATH, data[[block]]) if routes[block] else
               _reference(score, FP, data[[block]]))
        assert_same(got.take_sequences([row]), ref)
    assert (general.sequences, math.sequences) == (3, 3) and (general.calls, math.calls) == (1, 1)
    c = multi.counters()
    assert c["signal_teacher_sequences.math"] == 3 and c["signal_teacher_sequences.general"] == 3
    assert c["signal_teacher_requests"] == 2 and c["signal_cache_misses"] == 6
    # A step whose blocks are all the math teacher's never reaches the general teacher.
    only_math = np.flatnonzero(routes == 1)
    multi.submit_step(SimpleNamespace(ids=data[only_math], index=only_math)).result()
    assert general.calls == 1 and math.sequences == 3 + 2  # 1 and 8 were cached: only 2 and 9 are new
    with pytest.raises(ValueError, match="submit_step"):
        multi.submit(data[:2])


def test_ensemble_mixes_every_teacher_and_reuses_their_caches_for_other_weights(tmp_path):
    data = batches(6)
    (general, math), sources = _sources(tmp_path)
    multi = MultiSignalSource(["general", "math"], sources, weights=[0.7, 0.3], vocab_size=VOCAB)
    got = multi.submit_step(SimpleNamespace(ids=data, index=np.arange(6))).result()
    ref = mix_signals([_reference(score, FP, data), _reference(math_score, FP_MATH, data)], [0.7, 0.3], VOCAB)
    assert got.top_k == 2 * K
    assert_same(got, ref)
    total = np.exp(got.topk_logprobs.astype(np.float64)).sum(1) + np.exp(got.tail_logprob.astype(np.float64))
    np.testing.assert_allclose(total, 1.0, atol=2e-3)  # float16 on the wire: each teacher's mass within ~1e-3
    assert (general.sequences, math.sequences) == (6, 6)
    # Other weights (a sweep trial): the teachers' own signals come from their caches, mixed anew.
    _, sources2 = _sources(tmp_path)
    other = MultiSignalSource(["general", "math"], sources2, weights=[0.2, 0.8], vocab_size=VOCAB)
    again = other.submit(data).result()
    assert sources2[0].teacher_requests == 0 and sources2[1].teacher_requests == 0
    assert_same(again, mix_signals([_reference(score, FP, data), _reference(math_score, FP_MATH, data)],
                                   [0.2, 0.8], VOCAB))


def test_source_needs_routes_or_weights(tmp_path):
    _, sources = _sources(tmp_path, cache=False)
    with pytest.raises(ValueError, match="routes"):
        MultiSignalSource(["a", "b"], sources)
    with pytest.raises(ValueError, match="routes"):
        MultiSignalSource(["a", "b"], sources, routes=np.zeros(3, np.int8), weights=[0.5, 0.5])


def test_prepare_teachers_resolves_every_app_and_refuses_another_tokenizer(tiny_teacher, other_vocab_teacher):
    from raykd.config import ConfigError, DistillConfig
    from raykd.models import model_fingerprint
    from raykd.train.prepare import check_same_vocab
    from raykd.train.teachers import prepare_teachers, teacher_cpus

    def cfg(second_path, **more):
        return DistillConfig.model_validate({"teachers": {
            "apps": [{"name": "general", "path": str(tiny_teacher)},
                     {"name": "math", "path": str(second_path), "num_replicas": 2, "num_cpus": 1.5}],
            "ensemble": {"general": 0.5, "math": 0.5}, **more}})

    fp = model_fingerprint(str(tiny_teacher))
    with pytest.raises(ConfigError, match=r"teachers.apps.1 \(math\): vocab_size 320 differs from the teacher's 384"):
        prepare_teachers(cfg(other_vocab_teacher), str(tiny_teacher), fp, check_same_vocab)
    with pytest.raises(ConfigError, match="teachers.apps.1.path: model path not found"):
        prepare_teachers(cfg("/nonexistent/math"), str(tiny_teacher), fp, check_same_vocab)
    with pytest.raises(ConfigError, match="two apps serve the same weights"):
        prepare_teachers(cfg(tiny_teacher), str(tiny_teacher), fp, check_same_vocab)
    wide = DistillConfig.model_validate({**cfg(tiny_teacher).model_dump(exclude={"teacher"}), "loss": {"top_k": 200}})
    with pytest.raises(ConfigError, match=r"2 teachers x loss.top_k=200 outcomes exceed the vocabulary \(384\)"):
        prepare_teachers(wide, str(tiny_teacher), fp, check_same_vocab)
    routed = DistillConfig.model_validate({"teachers": {
        "apps": [{"name": "general", "path": str(tiny_teacher)}, {"name": "math", "path": str(tiny_teacher)}],
        "routing": {"by": "file", "rules": {"*math*": "math"}}}})
    resolved = prepare_teachers(routed, str(tiny_teacher), fp, check_same_vocab)  # routing to the same weights is allowed
    assert [(r.name, r.fingerprint) for r in resolved] == [("general", fp), ("math", fp)]
    assert teacher_cpus(cfg(tiny_teacher)) == 3.0 and teacher_cpus(DistillConfig()) == 0.0
