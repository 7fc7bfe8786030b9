"""`raykd sweep`: Ray Tune over distillation runs, every trial querying one shared teacher.

    raykd sweep --config jobs/configs/sweep_asha.yaml [--resume] [key=value ...]
    from raykd.sweep.run import run_sweep

Owns: the driver (run.py: checks, the shared teacher and data, the Tuner), one trial (trial.py: a Ray Train
run of raykd/train/loop.py that forwards its reports and checkpoints to Tune), the Tune side of the search
space (space.py), the console progress callback (progress.py) and what a sweep leaves behind (results.py:
best config, tables, PBT schedules). The config is raykd/config/sweep.py.

May import: raykd.train, raykd.config, raykd.teacher, raykd.tracking, raykd.plots, raykd.cluster, raykd.files,
raykd.console, raykd.preflight; Ray Tune.
"""
