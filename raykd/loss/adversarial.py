"""Adversarial distillation: a small discriminator D tells teacher rows from student rows; the student is
also trained to fool it. Pure torch (the training loop calls it through raykd/loss/objective.py).

    adv = AdversarialDistiller(in_dim=21, hidden=64, lr=1e-3, label_smoothing=0.1)
    d_metrics = adv.train_discriminator(teacher_x, student_x.detach())   # D steps, its own Adam
    loss_adv = student_adversarial_loss(adv.disc, student_x)             # the student's term

Inputs are rows `(N, F)`: the compared output distribution at T = 1 as log-probs floored at -20 (teacher
top-k + tail bucket, the student's log-probs of the same outcomes), or hidden states (teacher vs projected
student). Log-probs rather than probabilities: a Lipschitz-bounded D needs the input range to separate rows.

Losses (the standard non-saturating GAN, Goodfellow et al. 2014; as in adversarial KD, Wang et al. 2018):

    L_D       = BCE(D(x_teacher), 1 - s) + BCE(D(x_student), 0)      s = one-sided label smoothing
    L_student = BCE(D(x_student), 1)                                  = -log sigmoid(D(x_student))

Stability measures, each a known GAN remedy: spectral normalisation on every linear layer of D
(bounded Lipschitz constant, Miyato et al. 2018), one-sided label smoothing (Salimans et al. 2016),
Adam with beta1 = 0.5, a small D, and a warm-up of the student's term (raykd/loss/objective.py) so the
student first learns from the KD terms while D calibrates. `disc_accuracy` near 0.5 means D cannot tell
the two apart; near 1.0 it wins; both losses are logged so the balance can be watched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """MLP `F -> hidden -> hidden -> 1` (logit), LeakyReLU, spectral-normalised linears."""

    def __init__(self, in_dim: int, hidden: int = 64):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Linear(in_dim, hidden)), nn.LeakyReLU(0.2),
            sn(nn.Linear(hidden, hidden)), nn.LeakyReLU(0.2),
            sn(nn.Linear(hidden, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float()).squeeze(-1)  # (N,)


def discriminator_loss(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, label_smoothing: float = 0.0):
    """(L_D, accuracy) for teacher rows `real (N, F)` and detached student rows `fake (M, F)`."""
    real_logit, fake_logit = d(real.detach()), d(fake.detach())
    loss = F.binary_cross_entropy_with_logits(real_logit, torch.full_like(real_logit, 1.0 - label_smoothing)) + \
        F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    accuracy = 0.5 * ((real_logit > 0).float().mean() + (fake_logit < 0).float().mean())
    return loss, accuracy


def student_adversarial_loss(d: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -log sigmoid(D(x_student)), mean over rows."""
    logit = d(fake)
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


class AdversarialDistiller(nn.Module):
    """The discriminator with its own optimizer; `all_reduce` (optional) averages D's gradients over workers.

    The student's term backpropagates through D too; those gradients land in D's .grad and are discarded
    (D's optimizer zeroes them before each of its own updates), so only the student learns from it.
    """

    def __init__(self, in_dim: int, hidden: int = 64, lr: float = 1e-3, label_smoothing: float = 0.1,
                 steps: int = 1, all_reduce=None):
        super().__init__()
        self.disc = Discriminator(in_dim, hidden)
        self.label_smoothing, self.steps = label_smoothing, steps
        self.optimizer = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.999))
        self.all_reduce = all_reduce

    def train_discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """`steps` updates of D on teacher rows `real` and (detached) student rows `fake`."""
        for _ in range(self.steps):
            loss, acc = discriminator_loss(self.disc, real, fake, self.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.all_reduce is not None:
                self.all_reduce(self.disc.parameters())
            self.optimizer.step()
        return {"adv_disc_loss": float(loss.detach()), "adv_disc_accuracy": float(acc)}
