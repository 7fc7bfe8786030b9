"""`raykd pipeline`: distillation stages in order (e.g. general → instruction → domain), one MLflow tree.

    raykd pipeline --config jobs/configs/pipeline_three_stage.yaml [key=value ...]
    from raykd.pipeline.run import run_pipeline

Owns: planning with every check up front (plan.py), running and resuming the stages (run.py), domain
teachers and teacher-written answers (teachers.py), the per-stage evaluation and its tables (eval.py), and
the MLflow side: resume state, plots, the registered final student (tracking.py). The config is
raykd/config/pipeline.py.

May import: raykd.train (each stage is a `raykd distill` run), raykd.eval, raykd.teacher, raykd.data,
raykd.config, raykd.models, raykd.tracking, raykd.plots, raykd.cluster, raykd.files, raykd.console,
raykd.preflight.
"""
