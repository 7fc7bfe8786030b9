"""Hidden-state and attention-map distillation: pure math against references, the teacher's extras, config errors."""

import asyncio
import types

import numpy as np
import pytest
import torch

from raykd.config import ConfigError, DistillConfig, load_config
from raykd.loss.features import HiddenProjector, attention_loss, gather_rows, hidden_loss, match_heads

torch.set_num_threads(1)  # tiny tensors: more threads only contend on the shared cores


# ------------------------------------------------------------------ pure math
def test_projector_starts_as_the_width_embedding():
    proj = HiddenProjector({1: 2, 2: 4}, student_hidden=3, teacher_hidden=5)
    h = torch.randn(7, 2, 3)
    out = proj(h)
    assert out.shape == (7, 2, 5)
    assert torch.allclose(out[..., :3], h) and (out[..., 3:] == 0).all()


def test_hidden_loss_reference_masks_weights_and_gradients():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 2, 5, generator=g)
    s = torch.randn(6, 2, 3, generator=g, requires_grad=True)
    proj = HiddenProjector({1: 1, 2: 2}, 3, 5)
    with torch.no_grad():
        for lin in proj.proj:
            lin.weight.copy_(torch.randn(5, 3, generator=g))
    mask = torch.tensor([1, 1, 1, 1, 0, 0.0])
    w = torch.tensor([1, 2, 0, 1, 5, 5.0])
    loss = hidden_loss(t, s, proj, mask, w)
    W = [lin.weight.detach().double().numpy() for lin in proj.proj]
    sn, tn = s.detach().double().numpy(), t.double().numpy()
    per_row = sum(((sn[:, p] @ W[p].T - tn[:, p]) ** 2).mean(-1) for p in range(2))
    expected = (per_row * w.numpy() * mask.numpy()).sum() / mask.numpy().sum()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert s.grad.abs().sum() > 0 and all(lin.weight.grad.abs().sum() > 0 for lin in proj.proj)
    assert s.grad[4:].abs().sum() == 0  # masked rows get no gradient
    # A student that equals the teacher (same width, identity W) has zero loss.
    same = HiddenProjector({1: 1}, 5, 5)
    assert hidden_loss(t[:, :1], t[:, :1], same).item() == pytest.approx(0.0, abs=1e-7)


def test_head_matching_mean_and_group():
    a = torch.rand(4, 1, 6, 9)
    assert torch.allclose(match_heads(a, 3, "mean")[:, :, 0], a.mean(2))
    grouped = match_heads(a, 3, "group")
    assert grouped.shape == (4, 1, 3, 9)
    assert torch.allclose(grouped[:, :, 1], a[:, :, 2:4].mean(2))
    with pytest.raises(ValueError, match="multiple"):
        match_heads(a, 4, "group")


def test_attention_loss_reference():
    g = torch.Generator().manual_seed(1)
    t = torch.softmax(torch.randn(5, 2, 4, 7, generator=g), -1)
    s = torch.softmax(torch.randn(5, 2, 2, 7, generator=g), -1)
    tn, sn = t.double().numpy(), s.double().numpy()
    # group: teacher heads (0,1)->0, (2,3)->1
    tg = np.stack([tn[:, :, 0:2].mean(2), tn[:, :, 2:4].mean(2)], 2)
    expected_group = ((tg - sn) ** 2).sum(-1).mean(-1).sum(-1).mean()
    assert attention_loss(t, s, "group").item() == pytest.approx(expected_group, rel=1e-5)
    expected_mean = ((tn.mean(2) - sn.mean(2)) ** 2).sum(-1).sum(-1).mean()
    assert attention_loss(t, s, "mean").item() == pytest.approx(expected_mean, rel=1e-5)
    assert attention_loss(t, t, "group").item() == pytest.approx(0.0, abs=1e-8)


def test_gather_rows_follows_signal_rows():
    x = torch.arange(2 * 4 * 3).reshape(2, 4, 3).float()  # (B, L, H)
    rows = gather_rows([x, x + 100])  # (N, P, H), positions 0..L-2
    assert rows.shape == (6, 2, 3)
    assert torch.equal(rows[3, 0], x[1, 0]) and torch.equal(rows[2, 1], x[0, 2] + 100)


# ------------------------------------------------------------------ the teacher returns extras
@pytest.fixture(scope="module")
def teacher4(tmp_path_factory):
    """A random 4-layer, 4-head Llama directory (no training needed to check shapes and values)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, head_dim=16, max_position_embeddings=64)
    d = tmp_path_factory.mktemp("t4")
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def test_hf_backend_returns_row_aligned_hidden_states_and_attentions(teacher4):
    from raykd.teacher.hf_backend import HFTeacherBackend

    backend = HFTeacherBackend(str(teacher4), max_batch_tokens=20)  # forces several forward batches
    seqs = [np.arange(5) + 3, np.arange(9) + 10, np.arange(7) + 30]
    sig = backend.score(seqs, 5, {"hidden_states": [0, 4], "attentions": [1]})
    n = sum(len(s) - 1 for s in seqs)
    assert sig.extras["hidden_states"].shape == (n, 2, 64)
    assert sig.extras["attentions"].shape == (n, 1, 4, 9)  # keys padded to the longest sequence
    model = backend.model
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(seqs[1])[None], output_hidden_states=True, output_attentions=True)
    rows = slice(4, 12)  # sequence 1's rows
    np.testing.assert_allclose(sig.extras["hidden_states"][rows, 1], out.hidden_states[4][0, :8].numpy(), atol=1e-4)
    np.testing.assert_allclose(sig.extras["attentions"][rows, 0], out.attentions[1][0, :, :8].transpose(0, 1).numpy(),
                               atol=1e-5)
    assert np.allclose(sig.extras["attentions"][:4, 0].sum(-1), 1.0, atol=1e-5)  # rows are distributions
    assert backend.model.config._attn_implementation == "eager"  # (the test set it; score restores what it found)
    plain = HFTeacherBackend(str(teacher4))
    plain.score(seqs, 5, {"attentions": [0]})
    assert plain.model.config._attn_implementation != "eager"
    np.testing.assert_allclose(plain.score(seqs, 5).topk_logprobs, sig.topk_logprobs, atol=1e-4)
    with pytest.raises(ValueError, match="unknown extras"):
        plain.score(seqs, 5, {"logits": [0]})


def test_vllm_backend_refuses_extras_with_a_clear_error():
    from raykd.teacher.service import Teacher
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    fake = types.SimpleNamespace(info_=types.SimpleNamespace(backend="vllm", max_top_k=20),
                                 backend=types.SimpleNamespace(returns_extras=VllmTeacherBackend.returns_extras))
    with pytest.raises(ValueError, match="vLLM gives log-probs only"):
        asyncio.run(Teacher.score(fake, [np.arange(4)], 5, {"attentions": [0]}))


# ------------------------------------------------------------------ config: reachable and validated up front
def test_yaml_options_and_errors(teacher4):
    from transformers import AutoConfig

    from raykd.loss.objective import teacher_extras_request
    from raykd.train.prepare import check_methods

    cfg = load_config(DistillConfig, None, [
        "student.num_layers=2", "loss.hidden.weight=1", "loss.hidden.layer_map={1: 2, 2: 4}",
        "loss.attention.weight=0.5", "loss.attention.layer_map={2: 4}", "loss.attention.heads=group"])
    assert teacher_extras_request(cfg.loss) == {"hidden_states": [2, 4], "attentions": [3]}
    t_config = AutoConfig.from_pretrained(teacher4)
    check_methods(cfg, t_config)  # student: 2 layers, 2 heads (head_dim kept) -> 4 % 2 == 0
    errors = {
        ("teacher.backend=vllm", "loss.attention.weight=1", "loss.attention.layer_map={1: 1}"): "cannot|needs teacher.backend: hf",
        ("teacher.backend=vllm", "loss.hidden.weight=1", "loss.hidden.layer_map={1: 1}"): "no hidden states",
        ("student.num_layers=2", "loss.hidden.weight=1", "loss.hidden.layer_map={3: 4}"): "outside the student's 0..2",
        ("loss.attention.weight=1", "loss.attention.layer_map={0: 1}"): "1-based",
        ("loss.hidden.weight=1",): "layer_map is empty",
    }
    for overrides, msg in errors.items():
        with pytest.raises(ConfigError, match=msg) as e:
            load_config(DistillConfig, None, list(overrides))
        assert "\n" not in str(e.value)
    model_errors = {
        ("loss.hidden.weight=1", "loss.hidden.layer_map={2: 5}"): "teacher layer 5 outside the teacher's 0..4",
        ("student.hidden_size=48", "loss.attention.weight=1", "loss.attention.layer_map={1: 1}",
         "loss.attention.heads=group"): "multiple of student heads",
        ("student.layer_selection=[0, 7]",): "outside the teacher's layers",
    }
    for overrides, msg in model_errors.items():
        with pytest.raises(ConfigError, match=msg):
            check_methods(load_config(DistillConfig, None, list(overrides)), t_config)
