"""Evaluating models: the numbers raykd reports about a teacher and its students.

Owns: the held-out next-token loss and top-1 agreement of an in-process model (heldout.py, the one used by
every table, sweep and teacher build) and the rows and format of `raykd distill`'s comparison table
(table.py). Generation speed is measured by the callers with the code the hf teacher backend runs
(raykd/distill.py, raykd/pipeline/eval.py), so that eval/ stays below teacher/ (whose build uses heldout.py).

May import: torch, numpy, raykd.signals, raykd.data.task_suite (task exact match, tasks.py). heldout.py imports
torch and numpy only.
"""
