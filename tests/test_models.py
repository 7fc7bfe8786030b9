"""Student derivation from a teacher: depth, width, layer selection, weight initialisation; model directory checks
and fingerprints."""

from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.config import ConfigError, StudentConfig
from raykd.models import build_student, count_parameters, derive_student_config, init_from_teacher, select_layers


def test_select_layers():
    assert select_layers("uniform", 12, 4) == [0, 4, 7, 11]
    assert select_layers("uniform", 4, 1) == [3]
    assert select_layers("first", 6, 2) == [0, 1]
    assert select_layers("last", 6, 2) == [4, 5]
    assert select_layers([5, 0], 6, 2) == [5, 0]
    with pytest.raises(ConfigError, match="outside the teacher's layers"):
        select_layers([0, 6], 6, 2)
    with pytest.raises(ConfigError, match="exceeds the teacher's 6 layers"):
        select_layers("uniform", 6, 7)
    with pytest.raises(ConfigError, match="lists 1 layers"):
        select_layers([1], 6, 2)


def _llama(layers=4, hidden=128, heads=4, kv=2, inter=256, vocab=100):
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab)


def test_derive_student_config_keeps_head_dim_and_gqa_ratio():
    sc = derive_student_config(_llama(), StudentConfig(num_layers=2, hidden_size=64))
    assert (sc.num_hidden_layers, sc.hidden_size, sc.num_attention_heads, sc.num_key_value_heads) == (2, 64, 2, 1)
    assert sc.intermediate_size == 128 and sc.vocab_size == 100
    with pytest.raises(ConfigError, match="exceeds the teacher's 128"):
        derive_student_config(_llama(), StudentConfig(hidden_size=256))


def test_init_from_teacher_copies_mapped_layers_and_slices_width():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(_llama())
    sc = derive_student_config(teacher.config, StudentConfig(num_layers=2, hidden_size=64))
    student = AutoModelForCausalLM.from_config(sc)
    layer_map = select_layers("uniform", 4, 2)
    skipped = init_from_teacher(student, teacher.state_dict(), layer_map)
    assert skipped == []
    t, s = teacher.state_dict(), student.state_dict()
    torch.testing.assert_close(s["model.layers.1.mlp.up_proj.weight"], t["model.layers.3.mlp.up_proj.weight"][:128, :64])
    torch.testing.assert_close(s["model.layers.0.self_attn.q_proj.weight"], t["model.layers.0.self_attn.q_proj.weight"][:64, :64])
    torch.testing.assert_close(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"][:, :64])
    assert count_parameters(student) < count_parameters(teacher) / 3


def test_depth_only_student_reproduces_teacher_layers(tiny_teacher):
    """Full width and all layers: the student is the teacher, logits identical."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    student, t_cfg = build_student(str(tiny_teacher), StudentConfig(num_layers=None, hidden_size=None))
    ids = torch.randint(0, t_cfg.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits)
    small, _ = build_student(str(tiny_teacher), StudentConfig(num_layers=1, hidden_size=64))
    assert small.config.num_hidden_layers == 1
    out = small.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


def _copy(model_dir, dest):
    import shutil

    return Path(shutil.copytree(model_dir, dest))


def test_check_model_dir_refuses_what_a_run_could_not_load(tiny_teacher, tmp_path):
    """Each in one line naming the field and the file, before any cluster (a replica would fail on each)."""
    import json

    from raykd.models import check_model_dir

    good = _copy(tiny_teacher, tmp_path / "good")
    check_model_dir(str(good), "teacher.path")

    cut = _copy(tiny_teacher, tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy that stopped early
    with pytest.raises(ConfigError, match=r"^teacher.path: .*cut/model.safetensors: truncated or damaged: \d+ bytes"):
        check_model_dir(str(cut), "teacher.path")
    weights.write_bytes(b"\x05")
    with pytest.raises(ConfigError, match=r"model.safetensors: truncated: 1 bytes, not even its header"):
        check_model_dir(str(cut), "teacher.path")

    no_tok = _copy(tiny_teacher, tmp_path / "no_tok")
    for f in no_tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    with pytest.raises(ConfigError, match=r"^student.path: .*no_tok has no tokenizer the installed libraries can load"):
        check_model_dir(str(no_tok), "student.path")
    check_model_dir(str(no_tok), "student.path", tokenizer=False)

    odd = _copy(tiny_teacher, tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    with pytest.raises(ConfigError, match=r"^teacher.path: .*odd/config.json cannot be read by the installed transformers"):
        check_model_dir(str(odd), "teacher.path")

    sharded = _copy(tiny_teacher, tmp_path / "sharded")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ConfigError, match=r"lacks 1 weight shard\(s\) of its index, e.g. model-00002-of-00002"):
        check_model_dir(str(sharded), "teacher.path")
    with pytest.raises(ConfigError, match=r"is a file, not a model directory"):
        check_model_dir(str(good / "config.json"), "teacher.path")


def test_fingerprint_keys_by_whole_content_hashed_once(tmp_path, monkeypatch):
    """Two fine-tunes of one base differing only in the middle of a weight file get different keys; each file
    is hashed once and remembered by path, size and mtime (a rewrite is hashed again)."""
    import os

    import raykd.models as models

    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_digests", {})
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()  # 8 MiB: the old first/last-MiB key saw neither
    a, b = tmp_path / "a", tmp_path / "b"
    for d, blob in ((a, base), (b, base[: 4 << 20] + bytes([base[4 << 20] ^ 1]) + base[(4 << 20) + 1:])):
        d.mkdir()
        (d / "config.json").write_text('{"model_type": "llama"}')
        (d / "model.safetensors").write_bytes(blob)
    assert models.model_fingerprint(str(a)) != models.model_fingerprint(str(b))
    assert models.model_fingerprint(str(a)) == models.model_fingerprint(str(a))

    memos = sorted((tmp_path / "cache" / "file-digests").glob("*.json"))
    assert len(memos) == 2  # one per weight file, on disk for the next process
    calls = []
    real = models.hashlib.file_digest
    monkeypatch.setattr(models.hashlib, "file_digest", lambda *x: calls.append(1) or real(*x))
    monkeypatch.setattr(models, "_digests", {})  # a new process: only the on-disk memo
    before = models.model_fingerprint(str(a))
    assert calls == []  # not read again
    (a / "model.safetensors").write_bytes(base[::-1])  # same size, new content, new mtime
    os.utime(a / "model.safetensors", ns=(1, 10**18))
    assert models.model_fingerprint(str(a)) != before and calls == [1]
