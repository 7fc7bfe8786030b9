"""Evaluating models: the numbers raykd reports about a teacher and its students.

Owns: the held-out next-token loss and top-1 agreement of an in-process model (heldout.py, the one used by
every table, sweep and teacher build) and the comparison table of `raykd distill` (table.py). Generation
speed is measured with the same code the hf teacher backend runs (raykd/teacher/hf_backend.py). The
pipeline's per-stage evaluation (raykd/pipeline/eval.py) builds on these.

May import: torch, numpy, raykd.signals, raykd.models, raykd.teacher.hf_backend. heldout.py imports torch only.
"""
