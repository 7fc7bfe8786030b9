"""On-policy rollouts in the worker (raykd/train/rollouts.py) and their training steps, without Ray: prompts,
sampling with the KV cache, staleness, the teacher bypassed for on-policy data, and lambda = 0 == off-policy
training bit for bit.

    pytest tests/train/test_rollouts.py
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest
import torch

from raykd.train.batches import StepBatch
from raykd.train.rollouts import OnPolicyRollouts, rollout_batch, rollout_prompts, sample_continuations


def test_prompts_from_blocks_and_from_records():
    ids = np.arange(40).reshape(4, 10)
    mask = np.zeros((4, 10), np.uint8)
    mask[0, 6:] = 1  # a completion starts at 6
    mask[1, 1:3] = 1  # starts before P (ignored), again at 8
    mask[1, 8:] = 1
    mask[2, :] = 1  # all trained (no start at >= P): the block's start
    np.testing.assert_array_equal(rollout_prompts(ids, mask, "block", 3), ids[:, :3])
    out = rollout_prompts(ids, mask, "records", 3)
    np.testing.assert_array_equal(out[0], ids[0, 3:6])
    np.testing.assert_array_equal(out[1], ids[1, 5:8])
    np.testing.assert_array_equal(out[2], ids[2, :3])
    np.testing.assert_array_equal(out[3], ids[3, :3])  # nothing trained
    with pytest.raises(ValueError):
        rollout_prompts(ids, mask, "block", 10)


def test_rollout_batch_trains_the_generated_tokens_only():
    weight = np.arange(18, dtype=np.float32).reshape(2, 9)
    data = StepBatch(np.zeros((2, 9), np.int32), np.ones((2, 9), np.uint8), weight, np.array([5, 7]))
    batch = rollout_batch(np.ones((2, 3), np.int64), np.full((2, 4), 2), data)
    assert batch.ids.shape == (2, 7) and batch.mask[:, :3].sum() == 0 and batch.mask[:, 3:].all()
    np.testing.assert_array_equal(batch.weight, np.repeat([[2.0], [11.0]], 7, 1))  # the prompt's last token's
    np.testing.assert_array_equal(batch.index, data.index)


def _tiny_lm(vocab=50):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=64)).eval()


def test_sampling_with_the_cache_matches_full_forwards():
    """Greedy with the KV cache == argmax of full forwards; a seeded sample is reproducible and follows the
    full-forward distribution token by token; top_p -> 0 is greedy."""
    model = _tiny_lm()
    prompts = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(1))
    greedy = sample_continuations(model, prompts, 6, temperature=0.0)
    seq = prompts
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    torch.testing.assert_close(greedy, seq[:, 5:])
    a = sample_continuations(model, prompts, 6, 1.0, generator=torch.Generator().manual_seed(7))
    b = sample_continuations(model, prompts, 6, 1.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert model.training is False
    tiny_p = sample_continuations(model, prompts, 6, 1.0, top_p=1e-6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(tiny_p, greedy)


# ---------------------------------------------------------------------------------------------- training
SEQ, ROWS = 32, 8


def _setup(tiny_teacher, **on_policy):
    from transformers import AutoTokenizer

    from raykd.config import DistillConfig
    from raykd.data.corpus import generate_corpus
    from raykd.models import build_student, model_fingerprint
    from raykd.signals.format import pack, sequence_hash, to_ipc
    from raykd.teacher.hf_backend import HFTeacherBackend

    cfg = DistillConfig.model_validate({
        "teacher": {"path": str(tiny_teacher)}, "student": {"num_layers": 1, "hidden_size": 64},
        "data": {"seq_len": SEQ}, "loss": {"alpha": 0.5, "temperature": 2.0, "top_k": 8, "divergence": "jsd",
                                           **({"on_policy": on_policy} if on_policy else {})},
        "train": {"num_workers": 1, "lr": 3e-3, "warmup_steps": 1, "max_steps": 4},
    })
    student, _ = build_student(str(tiny_teacher), cfg.student, cfg.seed)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    ids = np.asarray(tok(generate_corpus(20_000, seed=5)).input_ids, np.int32)[: 4 * ROWS * SEQ].reshape(4, ROWS, SEQ)
    hf = HFTeacherBackend(str(tiny_teacher), device="cpu")
    fp = model_fingerprint(str(tiny_teacher))
    calls = []

    def score(seqs, k):  # the deployment's score_packed, in-process
        calls.append((len(seqs), len(seqs[0]), k))
        fut = Future()
        fut.set_result(to_ipc(pack(hf.score(seqs, k), vocab_size=hf.vocab_size, teacher_fingerprint=fp,
                                   seq_hashes=[sequence_hash(s) for s in seqs])))
        return fut

    batches = [StepBatch(ids[s], np.ones_like(ids[s], np.uint8), None, np.arange(ROWS) + s * ROWS) for s in range(4)]
    return cfg, student, hf, score, fp, batches, calls


def _train(cfg, student, hf, batches, rollouts=None):
    """The worker loop's per-step path (raykd/train/loop.py) on one worker, 4 steps; the final weights."""
    from raykd.loss.objective import Objective
    from raykd.train.student import MicroBatch, StudentTrainer

    state = {k: v.detach().numpy() for k, v in student.state_dict().items()}
    trainer = StudentTrainer(cfg, student.config, state, Objective(cfg, student.config, use_teacher=True),
                             device=torch.device("cpu"))
    if rollouts is not None:
        rollouts.student = trainer.placed.student
    submit = (lambda b: hf.score(list(b.ids), cfg.loss.top_k))
    if rollouts is not None:
        submit = rollouts.data_submit(submit, 0)
    metrics = []
    for step, data in enumerate(batches):
        signals = submit(data)
        on = False
        if rollouts is not None:
            data, signals, on = rollouts.step_batch(step, data, signals)
        metrics.append(trainer.step(step, [MicroBatch(data.ids, signals, data.weight, data.mask, on)]))
    return {k: v.detach().clone() for k, v in trainer.placed.student.state_dict().items()}, metrics


def test_fraction_zero_is_off_policy_training_bit_for_bit(tiny_teacher):
    """loss.on_policy.fraction 0, with the rollout machinery in the loop and other on-policy knobs set: the same
    weights, bit for bit, as a config without on-policy; no teacher request for a rollout."""
    cfg0, student, hf, score, fp, batches, calls = _setup(tiny_teacher)
    plain, _ = _train(cfg0, student, hf, batches)
    cfg, *_ = _setup(tiny_teacher, fraction=0.0, max_new_tokens=4, prompt_tokens=8, max_staleness=2)
    rollouts = OnPolicyRollouts(cfg, None, score, fp)
    zero, _ = _train(cfg, student, hf, batches, rollouts)
    assert calls == [] and rollouts.metrics()["on_policy_fraction"] == 0.0
    assert plain.keys() == zero.keys() and all(torch.equal(plain[k], zero[k]) for k in plain)


@pytest.mark.parametrize("objective, staleness", [("divergence", 0), ("divergence", 1), ("sampled_reverse_kl", 1)])
def test_on_policy_steps_train_on_student_tokens(tiny_teacher, staleness, objective):
    """fraction 0.5: steps 1 and 3 are on-policy; their batches are prompt (8) + 6 student tokens, scored by the
    teacher (top-k, or k = 1 for the estimator); with staleness 1 they were written one step earlier, before that
    step trained. The off-policy data of on-policy steps is never sent to the teacher; the weights move."""
    cfg, student, hf, score, fp, batches, calls = _setup(
        tiny_teacher, fraction=0.5, max_new_tokens=6, prompt_tokens=8, max_staleness=staleness, objective=objective)
    rollouts = OnPolicyRollouts(cfg, None, score, fp)
    data_scored = []
    hf_score = hf.score
    hf.score = lambda seqs, k, *a: (data_scored.append(len(seqs[0])), hf_score(seqs, k, *a))[1]
    weights, metrics = _train(cfg, student, hf, batches, rollouts)
    k = 1 if objective == "sampled_reverse_kl" else 8
    assert calls == [(ROWS, 14, k), (ROWS, 14, k)]
    assert data_scored.count(SEQ) == 2  # steps 0 and 2: the data batches; steps 1 and 3: rollouts only
    assert "loss_on_policy" in metrics[1] and "loss_on_policy" in metrics[3] and "loss_hard" in metrics[0]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    m = rollouts.metrics()
    assert m["on_policy_fraction"] == 0.5 and m["rollout_tokens_per_s"] > 0
    assert m["rollout_staleness"] == staleness  # staleness 1: step 1's rollouts written at step 0, step 3's at 2
    assert m["rollout_teacher_tokens"] == 2 * ROWS * 14
    plain, _ = _train(_setup(tiny_teacher)[0], student, hf, batches)
    assert any(not torch.equal(plain[n], weights[n]) for n in plain)


class _FakeRolloutDeployment:
    """The rollout deployment's two methods (raykd/teacher/service.py `generate`, `load_weights`) on an HF copy of
    the student: a boundary fake for the worker-side sync logic (the vLLM engine side: tests/e2e/test_on_policy.py)."""

    def __init__(self, model):
        import copy

        self.model, self.versions = copy.deepcopy(model), []
        me = self

        class _Method:
            def __init__(self, fn):
                self.remote = lambda *a, **kw: _done(fn(*a, **kw))

        self.generate = _Method(lambda prompts, g, t, top_p=1.0, seed=None: type("G", (), {"tokens": list(
            sample_continuations(me.model, torch.as_tensor(np.stack(prompts)), g, 0.0).numpy())}))
        self.load_weights = _Method(self._load)

    def _load(self, weights, version):
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
        self.versions.append(version)
        return version


def _done(value):
    fut = Future()
    fut.set_result(value)
    return fut


def test_engine_vllm_worker_side_syncs_every_n_steps_and_logs_the_staleness(tiny_teacher):
    """engine vllm, sync_every 2, max_staleness 1, every step on-policy: rank 0 pushes the weights after steps 1
    and 3 (versions 2 and 4); a rollout's staleness counts from the last sync before it was written (0, 1, 2, 1);
    after a sync the deployment generates exactly what the trainer's current weights generate."""
    from raykd.train.rollout_engine import VllmRolloutEngine

    cfg, student, hf, score, fp, batches, calls = _setup(tiny_teacher, fraction=1.0, max_new_tokens=4, prompt_tokens=8,
                                                        engine="vllm", sync_every=2, temperature=0.0)
    fake = _FakeRolloutDeployment(student)
    engine = VllmRolloutEngine(fake)
    rollouts = OnPolicyRollouts(cfg, None, score, fp, engine=engine)
    from raykd.loss.objective import Objective
    from raykd.train.student import MicroBatch, StudentTrainer

    state = {k: v.detach().numpy() for k, v in student.state_dict().items()}
    trainer = StudentTrainer(cfg, student.config, state, Objective(cfg, student.config, use_teacher=True),
                             device=torch.device("cpu"))
    for step, data in enumerate(batches):
        data, signals, on = rollouts.step_batch(step, data, None)
        trainer.step(step, [MicroBatch(data.ids, signals, data.weight, data.mask, on)])
        rollouts.after_step(step, trainer.placed)
    assert fake.versions == [2, 4] and engine.version == 4 and len(calls) == 4
    assert rollouts.metrics()["rollout_staleness"] == 1.0  # (0 + 1 + 2 + 1) / 4
    prompts = torch.as_tensor(batches[0].ids[:, :8], dtype=torch.long)
    mine = sample_continuations(trainer.placed.student, prompts, 6, 0.0)
    np.testing.assert_array_equal(engine.generate(prompts.numpy(), 6, 0.0, 1.0, 0), mine.numpy())


def test_rollouts_written_ahead_are_generated_while_the_step_trains(tiny_teacher, monkeypatch):
    """max_staleness 1, every step on-policy: step n + 1's continuations are sampled on the background thread while
    step n trains (the sampler, there, starts only once step n's training began), from a copy of step n's weights
    that no later write overwrites before it is done, so the run trains bit for bit as one whose writer runs each
    write at once on the main thread."""
    import threading

    import raykd.train.rollouts as rollouts_mod
    from raykd.loss.objective import Objective
    from raykd.train.student import MicroBatch, StudentTrainer

    cfg, student, hf, score, fp, batches, calls = _setup(tiny_teacher, fraction=1.0, max_new_tokens=6, prompt_tokens=8,
                                                        max_staleness=1)
    real_sample = rollouts_mod.sample_continuations
    training = {s: threading.Event() for s in range(len(batches))}
    seen = []  # (thread name, the training step that had begun when the sampler returned)

    def sample(*a, **kw):
        name = threading.current_thread().name
        began = None
        if name != "MainThread":  # the k-th write ahead was made at step k: wait for that step to begin training
            now = sum(1 for n, _ in seen if n != "MainThread")  # (the main thread cannot pass step k + 1 without us)
            assert training[now].wait(60), "the step never began training while its successor's rollouts were written"
            began = max(s for s, e in training.items() if e.is_set())
        seen.append((name, began))
        return real_sample(*a, **kw)  # sampled while step `began` trains, from the copy of the weights before it

    monkeypatch.setattr(rollouts_mod, "sample_continuations", sample)

    def run(synchronous: bool):
        state = {k: v.detach().numpy() for k, v in student.state_dict().items()}
        trainer = StudentTrainer(cfg, student.config, state, Objective(cfg, student.config, use_teacher=True),
                                 device=torch.device("cpu"))
        rollouts = OnPolicyRollouts(cfg, trainer.placed.student, score, fp)
        if synchronous:  # the writer runs each write at once, on this thread
            rollouts._pool = type("Now", (), {"submit": staticmethod(lambda fn, *a: _done(fn(*a)))})()
        for step, data in enumerate(batches):
            data, signals, on = rollouts.step_batch(step, data, None)
            training[step].set()
            trainer.step(step, [MicroBatch(data.ids, signals, data.weight, data.mask, on)])
        for e in training.values():
            e.clear()
        return {k: v.detach().clone() for k, v in trainer.placed.student.state_dict().items()}, rollouts.metrics()

    threaded, m = run(synchronous=False)
    assert [name.split("_")[0] for name, _ in seen] == ["MainThread"] + ["raykd-rollouts"] * 3
    assert [s for _, s in seen[1:]] == [0, 1, 2]  # the rollouts of step n + 1 sampled after step n began training
    assert m["rollout_staleness"] == 0.75 and "rollout_generation_wait_s" in m  # (0 + 1 + 1 + 1) / 4
    seen.clear()
    sync, _ = run(synchronous=True)
    assert [name for name, _ in seen] == ["MainThread"] * 4
    assert threaded.keys() == sync.keys() and all(torch.equal(threaded[k], sync[k]) for k in sync)
