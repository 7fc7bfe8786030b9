"""Adversarial distillation: the discriminator learns, the student term pulls towards the teacher, it stays stable."""

import numpy as np
import pytest
import torch

from raykd.loss.adversarial import AdversarialDistiller, discriminator_loss, student_adversarial_loss
from raykd.config import ConfigError, DistillConfig, load_config

torch.set_num_threads(1)  # tiny tensors: more threads only contend on the shared cores


def _dists(n, c, seed, sharp):
    """Log-probs floored at -20: the discriminator's input form (raykd/loss/objective.py)."""
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, c, generator=g) * sharp, -1).clamp_min(-20)


def test_discriminator_separates_different_distributions():
    torch.manual_seed(0)
    adv = AdversarialDistiller(in_dim=11, hidden=32, lr=3e-3, label_smoothing=0.0)
    real, fake = _dists(256, 11, 0, sharp=4.0), _dists(256, 11, 1, sharp=0.2)
    for _ in range(100):
        m = adv.train_discriminator(real, fake)
    assert m["adv_disc_accuracy"] > 0.95 and m["adv_disc_loss"] < 0.5


def test_losses_match_their_formulas():
    torch.manual_seed(0)
    adv = AdversarialDistiller(in_dim=5, hidden=8)
    real, fake = _dists(10, 5, 2, 1.0), _dists(10, 5, 3, 1.0)
    loss, acc = discriminator_loss(adv.disc, real, fake, label_smoothing=0.1)
    adv.disc.eval()  # fixed spectral-norm estimate for the reference
    lr, lf = adv.disc(real).double(), adv.disc(fake).double()
    sig = torch.sigmoid
    expected = -(0.9 * torch.log(sig(lr)) + 0.1 * torch.log(1 - sig(lr))).mean() - torch.log(1 - sig(lf)).mean()
    loss_eval, _ = discriminator_loss(adv.disc, real, fake, label_smoothing=0.1)
    assert loss_eval.item() == pytest.approx(expected.item(), rel=1e-5)
    assert student_adversarial_loss(adv.disc, fake).item() == pytest.approx(-torch.log(sig(lf)).mean().item(), rel=1e-5)
    assert 0 <= acc.item() <= 1


def test_student_term_moves_a_toy_student_towards_the_teacher_and_stays_stable():
    """A free student distribution trained only by the adversarial term approaches the teacher's, with finite,
    bounded losses throughout (spectral norm + label smoothing keep D from running away)."""
    torch.manual_seed(0)
    teacher = _dists(1, 6, 4, sharp=2.5).expand(128, -1)
    logits = torch.zeros(128, 6, requires_grad=True)  # uniform student
    opt = torch.optim.Adam([logits], lr=0.05)
    adv = AdversarialDistiller(in_dim=6, hidden=32, lr=2e-3, label_smoothing=0.1)
    tvd0 = 0.5 * (torch.softmax(logits, -1) - teacher.exp()).abs().sum(-1).mean().item()
    for _ in range(300):
        student = torch.log_softmax(logits, -1)
        d = adv.train_discriminator(teacher, student.detach())
        g = student_adversarial_loss(adv.disc, student)
        opt.zero_grad()
        g.backward()
        opt.step()
        assert np.isfinite(d["adv_disc_loss"]) and np.isfinite(g.item()) and g.item() < 10
    tvd = 0.5 * (torch.softmax(logits, -1) - teacher.exp()).abs().sum(-1).mean().item()
    assert tvd < 0.5 * tvd0


def test_objective_adversarial_term_state_and_curves(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from raykd.loss.objective import Objective
    from raykd.signals import signals_from_logprobs

    torch.manual_seed(0)
    sc = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                     num_key_value_heads=1, head_dim=32)
    student = LlamaForCausalLM(sc)
    cfg = load_config(DistillConfig, None, ["loss.top_k=5", "loss.adversarial.weight=0.2",
                                            "loss.adversarial.warmup_steps=4", "loss.adversarial.max_rows=16"])
    obj = Objective(cfg, sc, use_teacher=True)
    ids = torch.randint(0, 50, (2, 12))
    t_lp = torch.log_softmax(torch.randn(22, 50) * 3, -1).numpy()
    sig = signals_from_logprobs(t_lp, ids[:, 1:].reshape(-1).numpy(), np.array([0, 11, 22]), 5)
    weights = []
    for step in range(6):
        out = student(input_ids=ids)
        loss, m = obj.compute_loss(step, out, ids, sig)
        loss.backward()
        weights.append(m["adv_weight"])
        assert {"adv_disc_loss", "adv_disc_accuracy", "loss_adv"} <= set(m) and np.isfinite(m["loss"])
    assert weights == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])  # warm-up ramp
    assert obj.adversary.disc.net[0].parametrizations.weight.original.shape == (64, 6)  # k + 1 inputs
    from raykd.train.checkpoint import load_checkpoint, save_checkpoint
    from raykd.train.parallel import PlacedStudent

    placed = PlacedStudent(student, student, "ddp", rank=0, world=1)  # one DDP worker's student
    opt = torch.optim.AdamW(student.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path, placed, opt, sched, 6, obj)  # what a Train worker writes, objective.pt included
    again = Objective(cfg, sc, use_teacher=True)
    assert load_checkpoint(tmp_path, placed, opt, sched, again) == 6
    for a, b in zip(obj.adversary.disc.state_dict().values(), again.adversary.disc.state_dict().values()):
        assert torch.equal(a, b)
    assert again.curves == obj.curves  # a resumed run still draws its whole history
    assert len(obj.curves["adv_disc_loss"]) == 6

    from raykd.plots import adversarial_figure

    fig = adversarial_figure(obj.curves)
    fig.savefig(tmp_path / "adv.png")
    assert (tmp_path / "adv.png").stat().st_size > 1000


def test_config():
    cfg = load_config(DistillConfig, None, ["loss.adversarial.weight=0.1", "loss.adversarial.input=hidden",
                                            "loss.hidden.layer_map={2: 4}"])
    assert cfg.loss.adversarial.input == "hidden"
    from raykd.loss.objective import teacher_extras_request

    assert teacher_extras_request(cfg.loss) == {"hidden_states": [4]}  # hidden weight 0: only for D's input
    with pytest.raises(ConfigError, match="hidden.layer_map pair"):
        load_config(DistillConfig, None, ["loss.adversarial.weight=0.1", "loss.adversarial.input=hidden"])
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(DistillConfig, None, ["loss.adversarial.label_smoothing=0.7"])


def test_objective_adversarial_on_hidden_states():
    from transformers import LlamaConfig, LlamaForCausalLM

    from raykd.loss.objective import Objective
    from raykd.signals import signals_from_logprobs

    torch.manual_seed(0)
    sc = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1,
                     num_key_value_heads=1, head_dim=32)
    student = LlamaForCausalLM(sc)
    cfg = load_config(DistillConfig, None, ["loss.top_k=5", "loss.adversarial.weight=0.2", "loss.adversarial.input=hidden",
                                            "loss.hidden.layer_map={2: 3}", "loss.adversarial.disc_steps=2"])
    obj = Objective(cfg, sc, use_teacher=True)
    assert obj.teacher_extras() == {"hidden_states": [3]} and obj.model_kwargs() == {"output_hidden_states": True}
    ids = torch.randint(0, 50, (2, 9))
    sig = signals_from_logprobs(torch.log_softmax(torch.randn(16, 50), -1).numpy(), ids[:, 1:].reshape(-1).numpy(),
                                np.array([0, 8, 16]), 5)
    sig.extras["hidden_states"] = np.random.default_rng(0).normal(size=(16, 1, 48)).astype(np.float32)
    out = student(input_ids=ids, **obj.model_kwargs())
    loss, m = obj.compute_loss(0, out, ids, sig)
    loss.backward()
    assert "loss_hidden" not in m and np.isfinite(m["loss_adv"])  # hidden weight 0: states feed D only
    assert obj.adversary.disc.net[0].parametrizations.weight.original.shape == (64, 48)  # D sees teacher width
    assert obj.projector.proj[0].weight.grad is not None  # the student side goes through W
