"""The vLLM backend's pure parts, without an engine: FlatLogprobs and the engine top-k's packed rows →
TeacherSignals, the tail mass, the choice of scoring path, and the checks that run before any engine starts
(teacher path, head size, top-k, lengths).

    pytest tests/teacher/test_vllm_backend.py

The real engine is exercised in tests/e2e/test_vllm_engine.py (slow).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from raykd.config import ConfigError, TeacherConfig, TinyTeacherConfig
from raykd.signals import signals_from_logprobs
from raykd.teacher.logprob_arrays import rows_from_flat, signals_from_packed, signals_from_rows, split_packed, tail_logprob
from raykd.teacher.vllm_backend import CPU_HEAD_SIZES, check_vllm_teacher


@dataclass
class Flat:
    """The fields of vllm.logprobs.FlatLogprobs that the backend reads (the boundary; no vLLM import here)."""

    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def append(self, ids: list[int], lps: list[float]) -> None:
        self.start_indices.append(len(self.token_ids))
        self.token_ids += ids
        self.logprobs += lps
        self.end_indices.append(len(self.token_ids))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def vllm_layout(lp: np.ndarray, targets: np.ndarray, k: int, prompt: bool) -> Flat:
    """What vLLM's prompt (or sample) log-probs hold for these rows: [actual token, top-1..top-k] per position,
    float32 values, and for prompts an empty first position."""
    flat = Flat()
    if prompt:
        flat.append([], [])
    lp32 = lp.astype(np.float32)
    for row, t in zip(lp32, targets):
        top = np.argsort(-row, kind="stable")[:k]
        flat.append([int(t)] + top.tolist(), [float(row[t])] + row[top].tolist())
    return flat


@pytest.mark.parametrize("k", [1, 5, 64])
def test_prompt_rows_match_the_reference_builder(k):
    rng = np.random.default_rng(0)
    vocab, lengths = 300, [7, 2, 12]
    lp = log_softmax(rng.normal(0, 3, (sum(n - 1 for n in lengths), vocab)))
    targets = rng.integers(0, vocab, len(lp))
    parts, row = [], 0
    for n in lengths:
        flat = vllm_layout(lp[row : row + n - 1], targets[row : row + n - 1], k, prompt=True)
        parts.append(rows_from_flat(flat, n - 1, k, prompt=True))
        row += n - 1
    got = signals_from_rows(parts, vocab)
    offsets = np.concatenate([[0], np.cumsum([n - 1 for n in lengths])])
    ref = signals_from_logprobs(lp, targets, offsets, k)
    np.testing.assert_array_equal(got.offsets, ref.offsets)
    np.testing.assert_array_equal(got.topk_ids, ref.topk_ids)
    np.testing.assert_allclose(got.topk_logprobs, ref.topk_logprobs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.target_logprob, ref.target_logprob, rtol=0, atol=1e-6)
    # The tail is derived from float32 top-k values: good to ~1e-6 in probability, so compare in probability.
    np.testing.assert_allclose(np.exp(got.tail_logprob), np.exp(ref.tail_logprob), rtol=1e-4, atol=k * 2.0**-23 * 2)
    assert got.topk_ids.dtype == np.int32 and got.topk_logprobs.dtype == np.float32
    assert got.topk_ids.flags.c_contiguous and got.target_logprob.flags.c_contiguous


def test_sample_rows_have_no_empty_first_position():
    rng = np.random.default_rng(1)
    lp = log_softmax(rng.normal(0, 2, (4, 50)))
    sampled = np.array([3, 7, 7, 1])
    ids, lps = rows_from_flat(vllm_layout(lp, sampled, 3, prompt=False), 4, 3, prompt=False)
    assert ids.shape == (4, 4) and ids[:, 0].tolist() == sampled.tolist()
    np.testing.assert_allclose(lps[:, 0], lp[np.arange(4), sampled], atol=1e-6)


def test_unexpected_layout_is_an_error_not_garbage():
    flat = Flat()
    flat.append([], [])
    flat.append([1, 2], [-0.1, -0.1])  # a de-duplicated position: 2 entries where 1 + k = 3 are expected
    with pytest.raises(RuntimeError, match="layout"):
        rows_from_flat(flat, 1, 2, prompt=True)


def test_tail_invariants():
    rng = np.random.default_rng(2)
    lp = log_softmax(rng.normal(0, 1, (6, 40)))
    top = -np.sort(-lp, axis=1)
    for k in (1, 10, 39):
        tail = tail_logprob(top[:, :k].astype(np.float32), 40)
        total = np.logaddexp(np.logaddexp.reduce(top[:, :k], axis=1), tail)  # top-k mass + tail = 1
        np.testing.assert_allclose(total, 0.0, atol=1e-5)
    assert np.all(np.isneginf(tail_logprob(top.astype(np.float32), 40)))  # k = V: no tail
    # A top-1 mass that rounds to 1 (or above) in float32 gives the floor, never NaN or -inf.
    peaked = np.array([[0.0, -30.0], [1e-7, -40.0]], np.float32)
    t = tail_logprob(peaked, 100)
    assert np.all(np.isfinite(t)) and np.all(t == np.float32(np.log(2 * 2.0**-23)))


# --------------------------------------------------------------------------------------------- engine top-k path
def packed_rows(lp: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """What the engine-side top-k returns per request: [k log-probs | k ids as int32 bits | target log-prob]."""
    lp32 = lp.astype(np.float32)
    top = np.argsort(-lp32, axis=1, kind="stable")[:, :k].astype(np.int32)
    target = lp32[np.arange(len(lp32)), targets]
    return np.concatenate([np.take_along_axis(lp32, top, 1), top.view(np.float32), target[:, None]], 1)


@pytest.mark.parametrize("k", [1, 5, 64])
def test_packed_rows_give_the_signals_of_the_prompt_logprobs_rows(k):
    rng = np.random.default_rng(4)
    vocab, lengths = 300, [7, 2, 12]
    lp = log_softmax(rng.normal(0, 3, (sum(n - 1 for n in lengths), vocab)))
    targets = rng.integers(0, vocab, len(lp))
    flat_parts, packed_parts, row = [], [], 0
    for n in lengths:
        rows = slice(row, row + n - 1)
        flat_parts.append(rows_from_flat(vllm_layout(lp[rows], targets[rows], k, prompt=True), n - 1, k, prompt=True))
        packed_parts.append(split_packed(packed_rows(lp[rows], targets[rows], k), k, n - 1))
        row += n - 1
    ref, got = signals_from_rows(flat_parts, vocab), signals_from_packed(packed_parts, k, vocab)
    for name in ("offsets", "topk_ids", "topk_logprobs", "tail_logprob", "target_logprob"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)  # same floats in, same out
    assert got.topk_ids.dtype == np.int32 and got.topk_ids.flags.c_contiguous and got.target_logprob.flags.c_contiguous


def test_a_packed_reply_of_the_wrong_shape_is_an_error_naming_the_switch():
    with pytest.raises(RuntimeError, match=r"returned nothing .*\(teacher.vllm.scoring: prompt_logprobs avoids this path\)"):
        split_packed(None, 5, 3)
    with pytest.raises(RuntimeError, match=r"expected \(3, 11\) float32"):
        split_packed(np.zeros((3, 9), np.float32), 5, 3)


class FakeEngine:
    def __init__(self, error: Exception | None = None):
        self.error, self.calls = error, 0

    async def collective_rpc(self, method: str):
        self.calls += 1
        assert method == "raykd_enable_topk"
        if self.error:
            raise self.error
        return [{"kernel": "numba", "device": "cpu"}]


def backend_with(engine: FakeEngine, scoring: str = "auto", importable: bool = True):
    """A VllmTeacherBackend whose engine is `engine` (the path choice only; no vLLM)."""
    from raykd.config import VllmConfig
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    b = VllmTeacherBackend.__new__(VllmTeacherBackend)
    b.cfg, b.engine, b._started = VllmConfig(scoring=scoring), engine, None
    b._no_topk = "" if importable else "cannot import the worker extension (No module named 'numba')"
    if scoring == "prompt_logprobs":
        b._no_topk = "teacher.vllm.scoring=prompt_logprobs"
    return b


def test_scoring_path_is_chosen_once_and_a_fallback_is_logged_with_its_reason(caplog):
    import asyncio

    ok = backend_with(FakeEngine())
    asyncio.run(ok.start())
    asyncio.run(ok.start())
    assert (ok.scoring, ok.engine.calls) == ("engine-topk", 1) and "numba" in ok.scoring_note

    refused = backend_with(FakeEngine(RuntimeError("Traceback...\nTopkUnavailable: tensor_parallel_size=2, ...")))
    with caplog.at_level("WARNING", logger="raykd.teacher.vllm_backend"):
        asyncio.run(refused.start())
    assert refused.scoring == "prompt_logprobs" and refused.scoring_note == "TopkUnavailable: tensor_parallel_size=2, ..."
    assert "teacher scoring: vLLM prompt_logprobs path (fast top-k unavailable: TopkUnavailable: tensor_parallel_size=2" \
        in caplog.text

    for b, reason in ((backend_with(FakeEngine(), importable=False), "No module named 'numba'"),
                      (backend_with(FakeEngine(), scoring="prompt_logprobs"), "teacher.vllm.scoring=prompt_logprobs")):
        asyncio.run(b.start())
        assert b.scoring == "prompt_logprobs" and reason in b.scoring_note and b.engine.calls == 0

    forced = backend_with(FakeEngine(RuntimeError("no sample_tokens")), scoring="engine-topk")
    with pytest.raises(ConfigError, match="teacher.vllm.scoring=engine-topk: the engine top-k cannot run here: no sample"):
        asyncio.run(forced.start())


# --------------------------------------------------------------------------------------------- checks
def write_model_dir(path: Path, *, hidden: int = 64, heads: int = 1, max_pos: int = 64, weights: str = "model.safetensors",
                    arch: str = "LlamaForCausalLM") -> Path:
    path.mkdir(parents=True)
    cfg = dict(architectures=[arch], model_type="llama", vocab_size=300, hidden_size=hidden, num_attention_heads=heads,
               num_key_value_heads=heads, num_hidden_layers=1, intermediate_size=32, max_position_embeddings=max_pos)
    (path / "config.json").write_text(json.dumps(cfg))
    if weights:
        (path / weights).write_bytes(b"")  # only its presence is checked before the engine
    return path


def check(path: Path, **kw):
    teacher = TeacherConfig(backend="vllm", **kw.pop("teacher", {}))
    return check_vllm_teacher(str(path), teacher, architecture=False, **kw)


def test_checks_pass_and_report_facts(tmp_path):
    facts = check(write_model_dir(tmp_path / "m"), top_k=20, seq_len=63)
    assert (facts.vocab_size, facts.head_dim, facts.engine_max_model_len, facts.max_score_len) == (300, 64, 64, 63)


@pytest.mark.parametrize(
    "setup, kw, message",
    [
        (lambda p: p, {}, "vLLM cannot load .*: its config does not load"),
        (lambda p: (p.mkdir(), p)[1], {}, "no config.json"),
        (lambda p: write_model_dir(p, weights="pytorch_model.bin"), {}, "no \\*.safetensors weights"),
        (lambda p: write_model_dir(p, hidden=72), {}, "head size 72 .* CPU attention"),
        (lambda p: write_model_dir(p), {"top_k": 65}, "loss.top_k=65 exceeds .*max_logprobs=64"),
        (lambda p: write_model_dir(p), {"seq_len": 64}, "data.seq_len=64 exceeds .* 63"),
        (lambda p: write_model_dir(p), {"teacher": {"vllm": {"max_model_len": 128}}}, "max_model_len=128 exceeds"),
    ],
    ids=["missing", "no-config", "bin-only", "head-size", "top-k", "seq-len", "max-model-len"],
)
def test_bad_input_fails_with_one_line(tmp_path, setup, kw, message):
    path = setup(tmp_path / "m")
    with pytest.raises(ConfigError, match=message) as err:
        check(path, **kw)
    assert "\n" not in str(err.value)


def test_head_size_is_a_cpu_limit_only(tmp_path):
    path = write_model_dir(tmp_path / "m", hidden=72)
    check(path, teacher={"num_gpus": 1})  # GPU replicas: vLLM's GPU attention decides, not the CPU list
    assert 72 not in CPU_HEAD_SIZES


# --------------------------------------------------------------------------------------------- config
def test_teacher_config_vllm_rules():
    with pytest.raises(ValueError, match="num_gpus=1 must equal vllm.tensor_parallel_size=2"):
        TeacherConfig(backend="vllm", num_gpus=1, vllm={"tensor_parallel_size": 2})
    TeacherConfig(backend="vllm", num_gpus=2, vllm={"tensor_parallel_size": 2})
    with pytest.raises(ValueError, match="min_replicas 3 exceeds max_replicas 2"):
        TeacherConfig(autoscaling={"min_replicas": 3, "max_replicas": 2})


def test_moe_field_keeps_dense_fingerprints():
    import hashlib

    from raykd.teacher.build import TEACHER_FORMAT, teacher_fingerprint

    dense = TinyTeacherConfig()
    later = ("moe", "num_kv_heads", "chat_template", "chat_data", "chat_fields", "corpus", "task_fraction")  # added later
    legacy = json.dumps({"format": TEACHER_FORMAT, "cfg": {k: v for k, v in dense.model_dump(mode="json").items()
                                                           if k not in later}}, sort_keys=True, separators=(",", ":"))
    assert teacher_fingerprint(dense) == hashlib.sha256(legacy.encode()).hexdigest()[:16]
    assert teacher_fingerprint(TinyTeacherConfig(moe={})) != teacher_fingerprint(dense)
    assert teacher_fingerprint(TinyTeacherConfig(chat_template=True)) != teacher_fingerprint(dense)
    assert teacher_fingerprint(TinyTeacherConfig(num_kv_heads=1)) != teacher_fingerprint(dense)
    with pytest.raises(ValueError, match="num_heads 2 is not divisible by num_kv_heads 3"):
        TinyTeacherConfig(num_kv_heads=3)
    with pytest.raises(ValueError, match="num_experts_per_tok 9 exceeds num_experts 8"):
        TinyTeacherConfig(moe={"num_experts": 8, "num_experts_per_tok": 9})


def test_gpu_replicas_config_is_consistent():
    from raykd.config import DistillConfig, load_config

    path = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "gpu_vllm.yaml"
    cfg = load_config(DistillConfig, path)
    t = cfg.teacher
    assert t.backend == "vllm" and t.num_gpus == t.vllm.tensor_parallel_size and t.autoscaling is not None
    assert cfg.loss.top_k <= t.vllm.max_logprobs and cfg.data.seq_len < t.vllm.max_model_len
    assert load_config(DistillConfig, path, ["teacher.vllm.tensor_parallel_size=2", "teacher.num_gpus=2"])
    with pytest.raises(ConfigError, match="num_gpus=1 must equal vllm.tensor_parallel_size=2"):
        load_config(DistillConfig, path, ["teacher.vllm.tensor_parallel_size=2"])


def test_compare_signals_measures_disagreement():
    from raykd.teacher.logprob_arrays import compare_signals

    rng = np.random.default_rng(3)
    lp = log_softmax(rng.normal(0, 2, (40, 100)))
    targets, offsets = rng.integers(0, 100, 40), np.array([0, 15, 40])
    ref = signals_from_logprobs(lp, targets, offsets, 10)
    same = compare_signals(ref, ref)
    assert same["top1"] == 1 and same["shared"] == 1 and same["max"] == 0 and same["target_max"] == 0
    noisy = compare_signals(ref, signals_from_logprobs(lp + rng.normal(0, 1e-3, lp.shape), targets, offsets, 10))
    assert 0 < noisy["median"] < noisy["max"] < 0.01 and noisy["shared"] > 0.9
    shifted = signals_from_logprobs(np.roll(lp, 1, axis=0), targets, offsets, 10)  # rows misaligned by one
    assert compare_signals(ref, shifted)["top1"] < 0.5
