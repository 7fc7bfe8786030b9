"""Teacher signals: what the teacher sends the student, in memory, on the wire and on disk.

Owns: the `TeacherSignals` type (teacher_signals.py: top-k log-probs, tail and target log-probs of every
scored position, as numpy arrays), its versioned Arrow format (format.py: pack/unpack, IPC bytes, sequence
hashes) and the Parquet shard stores that make a teacher score a sequence only once (store.py: the signal
cache and offline captures).

May import: numpy, pyarrow, raykd.config, raykd.files. teacher_signals.py and format.py import no Ray, torch,
MLflow or transformers (tests/test_imports.py checks), so any process can read signals.
"""

from raykd.signals.teacher_signals import TeacherSignals, signals_from_logprobs

__all__ = ["TeacherSignals", "signals_from_logprobs"]
