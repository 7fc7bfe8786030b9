"""Test-vector generator (not a benchmark, not run by the tests): TRL's GKD loss on fixed logits, for
tests/loss/test_on_policy.py's parity test. TRL is a benchmark extra, never a runtime dependency of raykd.

    pip install 'trl==1.16.0'                       # in the venv: pip install -e '.[bench]'
    python benchmarks/trl_gkd_vectors.py            # writes tests/loss/data/trl_gkd_jsd.json

Student-generated sequences: B = 2 sequences of L = 6 tokens over a vocabulary of 7, the first 2 (resp. 3)
tokens a prompt (labels -100), the rest generated. Student and teacher logits are seeded float64 normals
(teacher x3: a peaked distribution). For every (beta, T) the file holds TRL's
`GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels, beta, T)` (reduction batchmean, which
with labels is the mean over unmasked tokens) and its gradient w.r.t. the student logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "loss" / "data" / "trl_gkd_jsd.json"
BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)
TEMPERATURES = (1.0, 2.0)


def main() -> None:
    import trl
    from trl.experimental.gkd import GKDTrainer

    g = torch.Generator().manual_seed(16)
    b, width, vocab = 2, 6, 7
    student = torch.randn(b, width - 1, vocab, generator=g, dtype=torch.float64)  # (B, L-1, V): rows 0..L-2
    teacher = 3.0 * torch.randn(b, width - 1, vocab, generator=g, dtype=torch.float64)
    sampled = torch.randint(0, vocab, (b, width - 1), generator=g)  # tokens 1..L-1 (what the student drew)
    prompt = [2, 3]  # tokens of each sequence's prompt; labels of rows predicting prompt tokens are -100
    labels = sampled.clone()
    for i, p in enumerate(prompt):
        labels[i, : p - 1] = -100
    cases = []
    for beta in BETAS:
        for temperature in TEMPERATURES:
            s = student.clone().requires_grad_(True)
            loss = GKDTrainer.generalized_jsd_loss(s, teacher, labels=labels, beta=beta, temperature=temperature)
            loss.backward()
            cases.append({"beta": beta, "temperature": temperature, "loss": float(loss.detach()),
                          "grad": s.grad.tolist()})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "generator": "benchmarks/trl_gkd_vectors.py", "trl_version": trl.__version__,
        "student_logits": student.tolist(), "teacher_logits": teacher.tolist(), "labels": labels.tolist(),
        "cases": cases,
    }) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases, trl {trl.__version__})")


if __name__ == "__main__":
    main()
