"""Distillation losses: pure torch, tested against reference formulas and invariants.

Owns: the compared distributions (distributions.py: full logits or top-k + tail, temperature), the divergences
and the row reduction (divergences.py), the one row-level KD loss `distill_loss` (kd.py), its chunked form
without (tokens x vocab) logits (chunked.py), the schedules of T, alpha and the learning rate (schedules.py),
dynamic temperature (dynamic_temperature.py), hidden-state and attention-map terms (features.py), the
adversarial term (adversarial.py), the configured row loss of a step (row_loss.py) and the whole training
objective of `raykd distill` (objective.py).

May import: torch, numpy and raykd.config. Never Ray, MLflow, transformers or files (tests/test_imports.py
checks): the training loop (raykd/train/) hands tensors in and logs what comes out.
"""
