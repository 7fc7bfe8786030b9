"""Sequence-level KD: the teacher's continuations become the training data (real HF teacher, local handle)."""

import types

import numpy as np
import pytest

from raykd.config import ConfigError, DistillConfig, SeqKDConfig, load_config
from raykd.data.blocks import TokenBlocks
from raykd.train.seqkd import prompts_of, teacher_sequences


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def local_handle(backend, cut: int | None = None):
    """The deployment handle's `.generate.remote(...).result()` surface over an in-process backend."""
    def remote(prompts, n, temperature):
        gen = backend.generate(prompts, n, temperature)
        if cut is not None:
            gen.tokens[cut] = gen.tokens[cut][:-1]  # as a backend that stopped early at EOS
        return _Done(gen)

    return types.SimpleNamespace(generate=types.SimpleNamespace(remote=remote))


@pytest.fixture(scope="module")
def backend(tiny_teacher):
    import torch

    from raykd.teacher.hf_backend import HFTeacherBackend

    torch.set_num_threads(1)
    return HFTeacherBackend(str(tiny_teacher), device="cpu")


def test_teacher_writes_the_training_sequences(backend):
    ids = np.random.default_rng(0).integers(0, backend.vocab_size, (5, 24)).astype(np.int32)
    weights = np.repeat(np.array([[1.0], [2.0], [0.0], [0.5], [3.0]], np.float32), 24, 1)
    data_mask = np.ones((5, 24), np.uint8)
    cfg = SeqKDConfig(enabled=True, prompt_tokens=6, max_new_tokens=10, max_prompts=4, request_prompts=3)
    lines = []
    out = teacher_sequences(local_handle(backend), TokenBlocks(ids, data_mask, weights), cfg, lines.append)
    tokens, w = out.ids, out.weight
    assert tokens.shape == (4, 16) and tokens.dtype == np.int32
    assert (tokens[:, :6] == ids[:4, :6]).all()  # prompts kept
    greedy = backend.generate([ids[2, :6]], 10).tokens[0]
    assert (tokens[2, 6:] == greedy).all()  # continuation = the teacher's greedy text
    assert w.shape == (4, 16) and (w[:, 0] == [1.0, 2.0, 0.0, 0.5]).all() and (w == w[:, :1]).all()
    # The one loss mask: the continuation is trained, the prompt is not (loss_on_prompt keeps the data's mask).
    assert (out.mask[:, :6] == 0).all() and (out.mask[:, 6:] == 1).all()
    on_prompt = teacher_sequences(local_handle(backend), TokenBlocks(ids, data_mask, None),
                                  cfg.model_copy(update={"loss_on_prompt": True}), lines.append)
    assert on_prompt.mask[:, 0].sum() == 0 and on_prompt.mask[:, 1:].all()
    assert any("prompts/s" in line and "eta" in line for line in lines)  # progress with rate and ETA


def test_short_continuations_are_dropped_and_reported(backend):
    ids = np.random.default_rng(1).integers(0, backend.vocab_size, (3, 12)).astype(np.int32)
    cfg = SeqKDConfig(enabled=True, prompt_tokens=4, max_new_tokens=5, request_prompts=8)
    lines = []
    out = teacher_sequences(local_handle(backend, cut=1), TokenBlocks(ids, np.ones_like(ids, np.uint8)), cfg,
                            lines.append)
    assert out.ids.shape == (2, 9) and out.weight is None
    assert (out.ids[:, :4] == ids[[0, 2], :4]).all()
    assert any("dropped 1 of 3" in line for line in lines)


def test_config_and_errors():
    cfg = load_config(DistillConfig, None, ["seqkd.enabled=true", "seqkd.prompt_tokens=16", "seqkd.max_new_tokens=48",
                                            "seqkd.temperature=0.7", "seqkd.loss_on_prompt=true"])
    assert cfg.seqkd.max_new_tokens == 48 and cfg.seqkd.loss_on_prompt
    with pytest.raises(ConfigError, match="seqkd.prompt_tokens=200 must be < data.seq_len=128"):
        load_config(DistillConfig, None, ["seqkd.enabled=true", "seqkd.prompt_tokens=200"])
    with pytest.raises(ConfigError, match="must be < the sequence length"):
        prompts_of(TokenBlocks(np.zeros((2, 8), np.int32), np.ones((2, 8), np.uint8)), SeqKDConfig(prompt_tokens=8))


def test_seqkd_longer_than_the_teacher_fails_up_front(tiny_teacher):
    from transformers import AutoConfig

    from raykd.train.prepare import check_methods

    cfg = load_config(DistillConfig, None, ["seqkd.enabled=true", "seqkd.max_new_tokens=1000", "student.num_layers=1"])
    with pytest.raises(ConfigError, match="exceeds the teacher's max_position_embeddings"):
        check_methods(cfg, AutoConfig.from_pretrained(tiny_teacher))
