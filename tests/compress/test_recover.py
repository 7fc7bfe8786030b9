import numpy as np
import torch

from raykd.compress.prune import decoder_linears, magnitude_prune, make_permanent
from raykd.compress.recover import recover
from raykd.config.compress import RecoveryConfig
from tests.compress.tiny import tiny_llama, tokens


def test_recovery_moves_a_pruned_student_toward_the_teacher_and_keeps_its_zeros():
    teacher = tiny_llama(seed=0)
    with torch.no_grad():  # a random model predicts near-uniformly: sharpen it so there is something to learn
        teacher.lm_head.weight.mul_(30)
    student = tiny_llama(seed=0)
    student.load_state_dict(teacher.state_dict())
    magnitude_prune(student, 0.7)
    make_permanent(student)
    zeros = {n: (m.weight == 0) for n, m in decoder_linears(student).items()}
    blocks = tokens(32, 24, seed=1).numpy()
    x = torch.tensor(blocks[:8])  # random tokens: only what it trained on is learnable

    def kl() -> float:
        with torch.no_grad():
            t = teacher(x).logits.log_softmax(-1)
            s = student(x).logits.log_softmax(-1)
        return float((t.exp() * (t - s)).sum(-1).mean())

    before = kl()
    losses = recover(student, teacher, blocks, RecoveryConfig(steps=20, batch_size=8, lr=1e-3, alpha=1.0), sparse=True)
    assert len(losses) == 20 and np.isfinite(losses).all()
    assert kl() < 0.5 * before
    for name, m in decoder_linears(student).items():
        assert torch.equal(m.weight == 0, zeros[name]), name  # exactly the pruned weights are zero
    assert not any(k.endswith(("_orig", "_mask")) for k in student.state_dict())
