"""Training the student on Ray Train: the driver side and the worker side, apart.

Owns, on the driver side (where `raykd distill` runs, before and around the Train run): every check that
needs no cluster (prepare.py), the student's first weights, the TorchTrainer and the exported student
(fit.py), sequence-level KD's teacher-written data (seqkd.py), and the typed contract sent to the workers
(loop_config.py). On the worker side (inside each Train worker): the loop (loop.py), where its teacher
signals come from (signal_source.py: cache, offline shards, live teacher), the window of requests in flight
(prefetch.py) and the memory-lean chunked loss (chunked_objective.py). Both sides use checkpoint.py.

May import: raykd.config, raykd.loss, raykd.signals, raykd.data, raykd.models, raykd.eval, raykd.teacher (the
deployment's handle), raykd.tracking, raykd.plots, raykd.files, raykd.console; Ray and transformers inside
functions. Not the commands (raykd/distill.py ...), pipeline/ or sweep/: those build on this.
"""
