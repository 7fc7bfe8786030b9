"""`raykd sweep`: Ray Tune over distillation runs (temperature, alpha, their schedules, divergence, top-k, lr),
every trial querying one shared teacher, each trial an MLflow child run of the sweep's run.

    raykd sweep --config jobs/configs/sweep_asha.yaml [key=value ...]
    raykd sweep --config jobs/configs/sweep_asha.yaml --resume      # continue an interrupted sweep
    raykd distill --config outputs/<name>/best.yaml                 # re-run the best trial as is

The driver checks everything it can first (raykd/config/sweep.py: space, metric, scheduler vs search; then
the base config's data and teacher, then every extreme value of the space against the deployed teacher),
deploys the teacher once, puts the tokenised data and the student's initial weights in the object store
once, and runs a Tuner whose trials (raykd/sweep/trial.py) are Ray Train runs of raykd/train/loop.py. Teacher
memory is therefore one teacher, whatever the number of trials (benchmarks/sweep_teacher_memory.py).

Outputs in <base.output_dir>/<name>/: best.yaml (a complete DistillConfig), results.md (one row per trial),
curves.png (val_loss, temperature and alpha of every trial), and for PBT pbt_schedule.md (the values the
best trial's weights were trained with, step by step; raykd/sweep/results.py). All are artifacts of the MLflow
parent run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from raykd.config import ConfigError, DistillConfig, default_cache_dir, flatten
from raykd.config.sweep import SweepConfig, with_values
from raykd.console import say
from raykd.sweep.results import SweepOutcome, finish_child_runs, summarize, trial_row
from raykd.sweep.space import clip_to_space, pbt_mutations, range_bounds, tune_space

TRIAL_ACTOR_CPUS = 0.01  # the trial actor only waits on its Train run; its workers reserve their own CPUs


class SweepInterrupted(KeyboardInterrupt):
    """Tune stopped on SIGINT with trials left; `raykd sweep --resume` continues them."""


def experiment_dir(sweep: SweepConfig) -> Path:
    root = Path(sweep.storage_path).expanduser() if sweep.storage_path else default_cache_dir() / "sweeps"
    return (root / sweep.name).resolve()


def logical_cpus(sweep: SweepConfig, base: DistillConfig) -> float:
    """Logical CPUs for an embedded cluster: the teacher, `max_concurrent_trials` trials, and slack.

    The slack is for the Train workers' placement groups of trials that Tune stopped (ASHA at a rung, a PBT
    exploit): Ray Train's cleaner actor removes them, but it can be late, or fail where several Ray clusters
    share a machine (it finds its cluster by address lookup). Logical CPUs cost nothing; concurrency is bounded
    by `max_concurrent_trials`, so a leaked reservation must not be what stalls the next trial.
    """
    t, tc = base.teacher, base.train
    replicas = t.autoscaling.max_replicas if t.autoscaling else t.num_replicas
    teacher = replicas * t.num_cpus
    workers = tc.num_workers * tc.cpus_per_worker
    per_trial = workers + TRIAL_ACTOR_CPUS + (teacher if sweep.teacher_per_trial else 0)
    restarts = total_trials(sweep)
    if sweep.scheduler == "pbt":  # at most every trial at every interval
        restarts += sweep.num_samples * (tc.max_steps // sweep.pbt.perturbation_interval)
    from raykd.train.teachers import teacher_cpus

    teacher += teacher_cpus(base)  # the other apps of `teachers` (routing or ensemble)
    return teacher + sweep.max_concurrent_trials * per_trial + restarts * workers


def total_trials(sweep: SweepConfig) -> int:
    if sweep.search == "grid":
        return sweep.num_samples * math.prod(len(d.choice) for d in sweep.space.values())
    return sweep.num_samples


def run_sweep(sweep: SweepConfig, base: DistillConfig, resume: bool = False) -> SweepOutcome:
    from ray import tune

    from raykd.cluster import init_ray, shutdown_ray
    from raykd.sweep.trial import TrialShared, run_trial
    from raykd.tracking import resolve_tracking_uri, tracked_run
    from raykd.train.prepare import prepare

    exp_dir = experiment_dir(sweep)
    if resume and not tune.Tuner.can_restore(str(exp_dir)):
        raise ConfigError(f"--resume: no sweep '{sweep.name}' to resume at {exp_dir}")
    if not resume and exp_dir.exists():
        raise ConfigError(f"sweep '{sweep.name}' already exists at {exp_dir}: pass --resume to continue it, "
                          "or choose another name")
    from raykd.preflight import distill_write_dirs, preflight

    preflight({**distill_write_dirs(base), "storage_path": exp_dir.parent,
               "export_path": Path(sweep.export_path).parent if sweep.export_path else None}, base.mlflow)
    prep = prepare(base)
    check_space_against_models(sweep, base, prep.teacher_path)
    say(f"sweep {sweep.name}: {total_trials(sweep)} trial(s), search {sweep.search}, scheduler {sweep.scheduler}, "
        f"metric {sweep.metric} ({sweep.mode}); data {base.data.source} in {len(prep.chunks)} chunk(s)")
    uri = resolve_tracking_uri(base.mlflow)
    params = {k: v for k, v in flatten(sweep).items() if not k.startswith("base")}
    params.update(flatten(base, "base."))
    train_storage = exp_dir.parent / f"{sweep.name}.train-runs"
    # Train workers wait for their CPUs while other trials hold them; Ray Train's 60 s default would fail them.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")
    # An embedded cluster gets many logical CPUs (see logical_cpus): without this Ray would prestart as many
    # idle Python workers when the driver connects.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # Every trial checkpoint forces an experiment snapshot (num_to_keep): expected here, not worth a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not resume:
        retire_unfinished_runs(uri, base.mlflow.experiment, sweep.name)
    started = False
    with tracked_run(uri, base.mlflow.experiment, sweep.name, params, {"raykd.job": "sweep"}) as parent_id:
        try:
            started = init_ray(logical_cpus(sweep, base))
            refs = _shared_inputs(sweep, base, prep)
            shared = TrialShared(
                sweep=sweep.model_dump(), base=base.model_dump(), teacher_path=prep.teacher_path,
                fingerprint=prep.fingerprint, tracking_uri=uri, parent_run_id=parent_id,
                train_storage=str(train_storage), extra={"teacher_per_trial": sweep.teacher_per_trial}, **refs,
            )
            trainable = tune.with_resources(tune.with_parameters(run_trial, shared=shared), {"CPU": TRIAL_ACTOR_CPUS})
            if resume:
                say(f"resuming sweep {sweep.name} from {exp_dir}")
                tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
            else:
                tuner = _new_tuner(sweep, base, trainable, exp_dir)
            tuner.fit()
            from raykd.sweep.progress import ACTIVE

            progress = ACTIVE.get(sweep.name)
            rows = [trial_row(sweep, t, progress.final_status(t)) for t in progress.trials] if progress else []
            finish_child_runs(uri, base.mlflow.experiment, parent_id, rows, base.train.max_steps)
            unfinished = [r for r in rows if r.status not in ("TERMINATED", "ERROR")]
            if unfinished:
                raise SweepInterrupted(f"sweep {sweep.name} interrupted with {len(unfinished)} trial(s) unfinished")
            outcome = summarize(sweep, base, rows, uri, parent_id)
            shutil.rmtree(train_storage, ignore_errors=True)
            return outcome
        finally:
            shutdown_ray(started)


def retire_unfinished_runs(uri: str, experiment: str, name: str) -> None:
    """A new sweep must not continue the MLflow run of an interrupted one whose Tune state is gone (tracked_run
    continues any unfinished run of the same name): rename those runs out of the way."""
    from mlflow.tracking import MlflowClient

    from raykd.tracking import RUN_NAME_TAG

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    for run in client.search_runs([exp.experiment_id], f"tags.`{RUN_NAME_TAG}` = '{name}'", max_results=1000):
        if run.info.status != "FINISHED" and "mlflow.parentRunId" not in run.data.tags:
            client.set_tag(run.info.run_id, RUN_NAME_TAG, f"{name}~abandoned")
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")


def _shared_inputs(sweep: SweepConfig, base: DistillConfig, prep) -> dict[str, Any]:
    """Ingest the data and deploy the teacher once, check every extreme value of the space against it, share
    the data (Ray Data blocks in the object store), the held-out blocks and the student's initialisation."""
    import ray

    from raykd.teacher.service import launch_teacher
    from raykd.train.fit import student_init_ref
    from raykd.train.prepare import check_offline_coverage, check_teacher_info, ingest_data

    data = ingest_data(base, prep)
    if base.signals.offline_path:
        check_offline_coverage(base, prep, data)
    student_ref, n_params = student_init_ref(base, prep.teacher_path)
    say(f"deploying the shared teacher ({base.teacher.backend}) as Serve app '{base.teacher.app_name}'")
    handle = launch_teacher(base.teacher, prep.teacher_path, prep.fingerprint)
    if base.teachers is not None and len(base.teachers.apps) > 1:  # every trial shares the other apps too
        from raykd.train.teachers import launch_teachers

        say(f"deploying the shared teachers {', '.join(base.teachers.names[1:])}")
        launch_teachers(base, list(prep.teachers))
    info = handle.info.remote().result()
    vocab = ray.get(student_ref)[0].vocab_size
    for key, cfg in _corner_configs(sweep, base):  # e.g. top-k against a vLLM teacher's max_logprobs
        _named(key, cfg, lambda c: check_teacher_info(c, info, student_vocab=vocab))
    val = data.take(data.val_start, data.val_start + base.eval.max_sequences)
    train = data
    if base.seqkd.enabled:  # the teacher writes the training text once, for every trial
        from raykd.data.ingest import BlockData
        from raykd.train.seqkd import teacher_sequences

        prompts = data.take(0, min(data.n_train, base.seqkd.max_prompts or data.n_train))
        train = BlockData.from_arrays(teacher_sequences(handle, prompts, base.seqkd))
    if sweep.teacher_per_trial:
        from ray import serve

        serve.delete(base.teacher.app_name)  # comparison mode: each trial deploys its own
    say(f"student: {n_params:,} params, one initialisation shared by all trials")
    return dict(val_ref=ray.put(val), student_ref=student_ref, data=train)


def _corner_configs(sweep: SweepConfig, base: DistillConfig):
    for key, dim in sweep.space.items():
        for value in dim.corners():
            yield f"space.{key}={json.dumps(value)}", with_values(base, {key: value}, f"space.{key}")


def _named(where: str, cfg: DistillConfig, check) -> None:
    try:
        check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def check_space_against_models(sweep: SweepConfig, base: DistillConfig, teacher_path: str) -> None:
    """What `prepare` checks for the base config (top-k vs vocabulary, layer maps vs the models), for every
    extreme value of the space: before the MLflow run and the cluster start."""
    from transformers import AutoConfig

    from raykd.train.prepare import check_methods

    t_config = AutoConfig.from_pretrained(teacher_path)

    def check(cfg: DistillConfig) -> None:
        if cfg.loss.top_k > t_config.vocab_size:
            raise ConfigError(f"loss.top_k={cfg.loss.top_k} exceeds the teacher's vocab_size={t_config.vocab_size}")
        check_methods(cfg, t_config)

    for where, cfg in _corner_configs(sweep, base):
        _named(where, cfg, check)


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _new_tuner(sweep: SweepConfig, base: DistillConfig, trainable, exp_dir: Path):
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raykd.sweep.progress import SweepProgress

    tc = base.train
    # Concurrency: Tune wraps a Searcher (Optuna) in a ConcurrencyLimiter; the variant generator of random and
    # grid search ignores TuneConfig.max_concurrent_trials and takes its own limit.
    limit = sweep.max_concurrent_trials
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=sweep.seed)
    else:
        search_alg, limit = BasicVariantGenerator(random_state=sweep.seed, max_concurrent=limit), None
    scheduler = None
    if sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="step", max_t=tc.max_steps, grace_period=sweep.asha.grace_period,
                                  reduction_factor=sweep.asha.reduction_factor)
    elif sweep.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        scheduler = PopulationBasedTraining(
            time_attr="step", perturbation_interval=sweep.pbt.perturbation_interval,
            hyperparam_mutations=pbt_mutations(sweep), quantile_fraction=sweep.pbt.quantile_fraction,
            resample_probability=sweep.pbt.resample_probability, synch=sweep.pbt.synch,
            custom_explore_fn=partial(clip_to_space, bounds=range_bounds(sweep)),
        )
    return tune.Tuner(
        trainable,
        param_space=tune_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, search_alg=search_alg, scheduler=scheduler,
            num_samples=sweep.num_samples, max_concurrent_trials=limit,
            reuse_actors=False,  # a reused actor would keep the previous trial's Train run alive
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=str(exp_dir.parent), verbose=0,
            callbacks=[SweepProgress(sweep.name, sweep.metric, sweep.mode, total_trials(sweep), tc.max_steps)],
            # PBT restores a trial from another's checkpoint, which must still exist when the (slow) restart
            # reads it: keep every checkpoint then (a student's are small); else the last two.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if sweep.scheduler == "pbt" else 2),
        ),
    )
