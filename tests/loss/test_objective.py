"""The training objective: default == the original KD loss, weights, prompt masks, schedules per step, state."""

import numpy as np
import pytest
import torch

from raykd.config import DistillConfig, load_config
from raykd.loss.kd import distill_loss
from raykd.loss.objective import Objective, needs_teacher
from raykd.signals import signals_from_logprobs

torch.set_num_threads(1)  # tiny tensors: more threads only contend on the shared cores
V = 60


@pytest.fixture(scope="module")
def student():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=32)
    return LlamaForCausalLM(cfg)


def _batch(b=3, length=10, seed=0, k=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, length), generator=g)
    n = b * (length - 1)
    t_lp = torch.log_softmax(torch.randn(n, V, generator=g) * 2, -1).numpy()
    sig = signals_from_logprobs(t_lp, ids[:, 1:].reshape(-1).numpy(), np.arange(b + 1) * (length - 1), k)
    return ids, sig


def test_default_config_is_exactly_the_original_kd_loss(student):
    cfg = load_config(DistillConfig, None, ["loss.top_k=8"])
    ids, sig = _batch()
    obj = Objective(cfg, student.config, use_teacher=True)
    assert obj.teacher_extras() is None and obj.model_kwargs() == {}
    out = student(input_ids=ids)
    loss, m = obj.compute_loss(0, out, ids, sig)
    flat = out.logits[:, :-1].reshape(-1, V)
    ref, soft, hard = distill_loss(flat, ids[:, 1:].reshape(-1), alpha=0.5, temperature=2.0,
                                   topk_ids=torch.as_tensor(sig.topk_ids), topk_logprobs=torch.as_tensor(sig.topk_logprobs),
                                   tail_logprob=torch.as_tensor(sig.tail_logprob))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert m["loss_soft"] == pytest.approx(soft.item(), rel=1e-6) and m["loss_hard"] == pytest.approx(hard.item(), rel=1e-6)
    base = Objective(cfg, student.config, use_teacher=False)  # the hard-label baseline
    loss0, m0 = base.compute_loss(0, out, ids, None)
    assert loss0.item() == pytest.approx(hard.item(), rel=1e-6) and m0["loss_soft"] == 0.0


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"])
def test_divergence_option_reaches_the_loss(student, divergence):
    from raykd.loss.kd import soft_loss

    cfg = load_config(DistillConfig, None, ["loss.top_k=8", f"loss.divergence={divergence}", "loss.beta=0.3",
                                            "loss.skew_lambda=0.2", "loss.tail=renormalize"])
    ids, sig = _batch(seed=1)
    out = student(input_ids=ids)
    _, m = Objective(cfg, student.config, use_teacher=True).compute_loss(0, out, ids, sig)
    expected = soft_loss(out.logits[:, :-1].reshape(-1, V), topk_ids=torch.as_tensor(sig.topk_ids),
                         topk_logprobs=torch.as_tensor(sig.topk_logprobs), tail_logprob=torch.as_tensor(sig.tail_logprob),
                         divergence=divergence, temperature=2.0, beta=0.3, skew_lambda=0.2, tail="renormalize")
    assert m["loss_soft"] == pytest.approx(expected.item(), rel=1e-6)


def test_feedback_weights_scale_each_samples_loss(student):
    cfg = load_config(DistillConfig, None, ["loss.top_k=8"])
    ids, sig = _batch(seed=2)
    obj = Objective(cfg, student.config, use_teacher=True)
    out = student(input_ids=ids)
    ones = np.ones(ids.shape, np.float32)
    base, _ = obj.compute_loss(0, out, ids, sig, ones)
    assert base.item() == pytest.approx(obj.compute_loss(0, out, ids, sig)[0].item(), rel=1e-6)
    doubled, _ = obj.compute_loss(0, out, ids, sig, 2 * ones)
    assert doubled.item() == pytest.approx(2 * base.item(), rel=1e-5)
    w = ones.copy()
    w[1:] = 0  # only sequence 0 counts, but the mean is still over all rows (weights are not renormalised)
    only0, _ = obj.compute_loss(0, out, ids, sig, w)
    assert 0 < only0.item() < base.item()
    part, _ = obj.compute_loss(0, out, ids, sig, np.where(np.arange(3)[:, None] == 0, 3.0, 0.0) * ones)
    assert part.item() == pytest.approx(3 * only0.item(), rel=1e-5)
    # weight of row j is the weight of its label token (position j + 1)
    w = ones.copy()
    w[:, 0] = 0.0  # position 0 is never a label: no effect
    assert obj.compute_loss(0, out, ids, sig, w)[0].item() == pytest.approx(base.item(), rel=1e-6)


def test_the_data_loss_mask_keeps_prompt_tokens_out_of_every_term(student):
    """Row j is trained iff token j + 1 is (mask[:, 1:]): prompt / user tokens get no loss, hard or soft."""
    cfg = load_config(DistillConfig, None, ["loss.top_k=8"])
    ids, sig = _batch(length=10, seed=3)
    mask = np.zeros(ids.shape, np.uint8)
    mask[:, 4:] = 1  # tokens 0..3 are the prompt: rows 3..8 predict the answer tokens 4..9
    obj = Objective(cfg, student.config, use_teacher=True)
    out = student(input_ids=ids)
    loss, m = obj.compute_loss(0, out, ids, sig, None, mask)
    rows = np.ones((3, 9), bool)
    rows[:, :3] = False
    keep = torch.as_tensor(rows.reshape(-1))
    flat = out.logits[:, :-1].reshape(-1, V)
    ref, soft, hard = distill_loss(flat[keep], ids[:, 1:].reshape(-1)[keep], alpha=0.5, temperature=2.0,
                                   topk_ids=torch.as_tensor(sig.topk_ids)[keep],
                                   topk_logprobs=torch.as_tensor(sig.topk_logprobs)[keep],
                                   tail_logprob=torch.as_tensor(sig.tail_logprob)[keep])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6) and m["loss_hard"] == pytest.approx(hard.item(), rel=1e-6)
    # No gradient reaches a prompt position's logits.
    logits = out.logits.detach().requires_grad_(True)
    obj.compute_loss(0, type(out)(logits=logits), ids, sig, None, mask)[0].backward()
    assert logits.grad[:, :3].abs().sum() == 0 and logits.grad[:, 3:-1].abs().sum() > 0
    # Mask and weights combine: a zero-weight record still counts in the mean (weights are not renormalised).
    w = np.ones(ids.shape, np.float32)
    w[0] = 0
    part, _ = obj.compute_loss(0, out, ids, sig, w, mask)
    assert 0 < part.item() < loss.item()


def test_schedules_are_applied_per_step_and_logged(student):
    cfg = load_config(DistillConfig, None, [
        "loss.top_k=8", "train.max_steps=5", "loss.alpha_schedule.kind=linear", "loss.alpha_schedule.start=0.0",
        "loss.alpha_schedule.end=1.0", "loss.temperature_schedule.kind=step", "loss.temperature_schedule.milestones=[2]",
        "loss.temperature_schedule.gamma=0.5"])
    ids, sig = _batch(seed=4)
    obj = Objective(cfg, student.config, use_teacher=True)
    out = student(input_ids=ids)
    for step in range(5):
        loss, m = obj.compute_loss(step, out, ids, sig)
        alpha = step / 4
        assert loss.item() == pytest.approx(alpha * m["loss_soft"] + (1 - alpha) * m["loss_hard"], rel=1e-5)
    # Flat lists: pytest >= 9 rejects nested data (tuples in a list) in pytest.approx.
    expected = [(1, 0.0, 2.0), (2, 0.25, 2.0), (3, 0.5, 1.0), (4, 0.75, 1.0), (5, 1.0, 1.0)]
    assert [s for s, _, _ in obj.step_values] == [s for s, _, _ in expected]
    assert [a for _, a, _ in obj.step_values] == pytest.approx([a for _, a, _ in expected])
    assert [t for _, _, t in obj.step_values] == pytest.approx([t for _, _, t in expected])
    assert needs_teacher(cfg) and not needs_teacher(load_config(DistillConfig, None, ["loss.alpha=0"]))


class _Client:
    """The MlflowClient surface MetricLogger uses (log_batch / log_figure), recording calls."""

    def __init__(self):
        self.batches, self.figures = [], []

    def log_batch(self, run_id, metrics):
        self.batches.extend((m.key, m.step, m.value) for m in metrics)

    def log_figure(self, run_id, fig, name):
        self.figures.append(name)


def test_dynamic_temperature_histogram_and_state_roundtrip(student, tmp_path):
    cfg = load_config(DistillConfig, None, ["loss.top_k=8", "loss.dynamic_temperature.rule=disagreement",
                                            "loss.hidden.weight=1", "loss.hidden.layer_map={1: 0}"])
    ids, sig = _batch(seed=5)
    sig.extras["hidden_states"] = np.random.default_rng(0).normal(size=(sig.num_rows, 1, 40)).astype(np.float32)
    obj = Objective(cfg, student.config, use_teacher=True)
    out = student(input_ids=ids, **obj.model_kwargs())
    loss, m = obj.compute_loss(0, out, ids, sig)
    loss.backward()
    obj.step()
    assert 1.0 <= m["dyn_temperature_p05"] <= m["dyn_temperature_p50"] <= m["dyn_temperature_p95"] <= 4.0
    assert obj.hist.sum() == sig.num_rows and obj.projector.proj[0].weight.shape == (40, 32)
    # What the training loop logs at the end (raykd/train/loop.py), through MetricLogger.
    from raykd.plots import objective_figures
    from raykd.tracking import MetricLogger

    logger, client = MetricLogger(None, None), _Client()
    logger.client, logger.run_id = client, "r"
    logger.log_per_step({s: {"alpha": a, "temperature": t} for s, a, t in obj.pop_step_values()})
    for name, fig in objective_figures(obj).items():
        logger.log_figure(fig, name)
    assert client.figures == ["dynamic_temperature_hist.png"] and obj.pop_step_values() == []
    assert ("alpha", 1, 0.5) in client.batches and any(k == "temperature" for k, _, _ in client.batches)
    torch.save(obj.state_dict(), tmp_path / "objective.pt")  # as raykd/train/checkpoint.py does
    again = Objective(cfg, student.config, use_teacher=True)
    again.load_state_dict(torch.load(tmp_path / "objective.pt", weights_only=True))
    assert torch.equal(again.projector.proj[0].weight, obj.projector.proj[0].weight)
    assert (again.hist == obj.hist).all()
    assert again.projector_opt.state_dict()["state"]  # Adam moments came back too


def test_student_layer_selection_options_from_yaml():
    from raykd.config import ConfigError
    from raykd.models import select_layers

    for selection, expected in (("uniform", [0, 2, 5]), ("first", [0, 1, 2]), ("last", [3, 4, 5]), ("[1, 3, 4]", [1, 3, 4])):
        cfg = load_config(DistillConfig, None, ["student.num_layers=3", f"student.layer_selection={selection}"])
        assert select_layers(cfg.student.layer_selection, 6, 3) == expected
    for overrides, msg in ((["student.num_layers=2", "student.layer_selection=[0, 1, 2]"], "lists 3 layers"),
                           (["student.num_layers=2", "student.layer_selection=[-1, 2]"], "0-based teacher layers")):
        with pytest.raises(ConfigError, match=msg):
            load_config(DistillConfig, None, overrides)
