"""One sweep trial: the Tune trainable that runs raykd's Ray Train loop with the trial's config.

With Ray Train V2 a Tune trial is a function that calls `TorchTrainer(...).fit()`. Ray's own bridge
(`ray.tune.integration.ray_train.TuneReportCallback`) forwards metrics only, but PBT must copy checkpoints
between trials, and every scheduler needs a checkpoint to pause, resume or restore a trial. So:

    trial actor (this function)                      Train controller (callback)       Train worker(s)
    fit() in a thread ───────────────────────────▶   ForwardReports.after_report ◀──── ray.train.report(
    main thread: queue.get() ◀── {metrics, ckpt} ────┘                                    metrics, ckpt)
      → tune.report(metrics, checkpoint = Train checkpoint + sweep_state.json)

A restored trial (resume, PBT exploit, synchronous-PBT pause) gets that Tune checkpoint back from
`tune.get_checkpoint()` and hands it to the loop as `init_checkpoint`: student weights, optimizer, LR
schedule, step and data order continue; temperature/alpha come from the trial's (possibly mutated) config.
`sweep_state.json` carries the history of values the checkpoint's weights were trained with, so the
schedule PBT found can be read off the best trial. When Tune stops a trial, this actor exits and the Train
controller and workers it owns go with it.

The teacher is not deployed here: the loop reaches the sweep's one Serve app by `cfg.teacher.app_name`
(unless `teacher_per_trial`, the comparison mode of benchmarks/sweep_teacher_memory.py).

    tune.with_parameters(run_trial, shared=TrialShared(...))       # raykd/sweep/run.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raykd.config import DistillConfig, flatten
from raykd.config.sweep import REPORTED_METRICS, SweepConfig, decode_params, trial_config
from raykd.train.checkpoint import checkpoint_step
from raykd.train.loop_config import LoopConfig

STATE_FILE = "sweep_state.json"
TRIAL_TAG = "raykd.sweep.trial_id"


@dataclass
class TrialShared:
    """What every trial receives (through `tune.with_parameters`, i.e. the object store, once)."""

    sweep: dict[str, Any]  # SweepConfig dump
    base: dict[str, Any]  # DistillConfig dump
    data: Any  # BlockData (raykd/data/ingest.py): the packed training blocks in the object store
    val_ref: Any  # ObjectRef of held-out TokenBlocks (val_loss)
    student_ref: Any  # ObjectRef of (HF config, state dict): one initialisation for all trials
    teacher_path: str
    fingerprint: str
    tracking_uri: str
    parent_run_id: str
    train_storage: str  # scratch root of the trials' Ray Train runs
    extra: dict[str, Any] = field(default_factory=dict)


def _forward_reports_cls():
    from ray.train.v2.api.callback import UserCallback

    class ForwardReports(UserCallback):
        """Runs in the Train controller: hands each report (rank 0's metrics + checkpoint path) to the trial."""

        def __init__(self, queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint):
            # Blocks while the trial still handles the previous report (queue of 1): a trial is never more
            # than one checkpoint ahead of what Tune has seen, and older Train checkpoints can be deleted.
            self.queue.put({"metrics": dict(metrics[0]), "checkpoint": checkpoint.path if checkpoint else None})

    return ForwardReports


def _read_state(directory: Path | None) -> dict[str, Any]:
    if directory is None or not (directory / STATE_FILE).exists():
        return {"history": []}
    return json.loads((directory / STATE_FILE).read_text())


def run_trial(params: dict[str, Any], shared: TrialShared) -> None:
    """Tune trainable (function API). `params`: Tune's sampled config (dotted keys, see tune_space)."""
    from ray import tune
    from ray.util.queue import Queue

    from raykd.tracking import MetricLogger, tracked_run

    sweep = SweepConfig.model_validate(shared.sweep)
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(DistillConfig.model_validate(shared.base), sweep, params, run_name=f"{sweep.name}-{trial_id}")
    values = decode_params(sweep, params)

    # Copy the checkpoint we start from out of Tune's storage at once: under PBT it is another trial's, and
    # that trial keeps writing (and pruning) its checkpoints while our workers start.
    scratch = Path(tempfile.mkdtemp(prefix=f"raykd-{trial_id}-"))
    restored = tune.get_checkpoint()
    start_dir = None
    if restored is not None:
        start_dir = Path(restored.to_directory(str(scratch / "start")))
    state = _read_state(start_dir)
    start_step = checkpoint_step(start_dir) or 0
    history = state["history"]
    if not history or history[-1]["values"] != values:  # new trial, or PBT changed the values at this step
        history = history + [{"step": start_step, "values": values, "trial_id": trial_id}]

    teacher_app = None
    if shared.extra.get("teacher_per_trial"):
        from raykd.teacher.service import launch_teacher

        cfg.teacher.app_name = teacher_app = f"{cfg.teacher.app_name}-{trial_id}"
        launch_teacher(cfg.teacher, shared.teacher_path, shared.fingerprint)

    params_flat = flatten(cfg)
    tags = {"raykd.job": "sweep-trial", "raykd.sweep": sweep.name, TRIAL_TAG: trial_id,
            "raykd.sweep.values": json.dumps(values)}
    train_name = f"{trial_id}-{time.time_ns()}"  # fresh each start: the start checkpoint comes from Tune
    try:
        with tracked_run(shared.tracking_uri, cfg.mlflow.experiment, cfg.run_name, params_flat, tags,
                         parent_run_id=shared.parent_run_id) as run_id:
            queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
            loop = LoopConfig(cfg, student_ref=shared.student_ref, val_ref=shared.val_ref, run_id=run_id,
                              tracking_uri=shared.tracking_uri, init_checkpoint=None if start_dir is None else str(start_dir),
                              block_routes=getattr(shared.data, "routes", None))  # teachers.routing
            errors: list[BaseException] = []
            runner = threading.Thread(target=_fit, args=(cfg, train_name, shared.train_storage, loop, shared.data,
                                                         queue, errors),
                                      daemon=True, name="raykd-trial-fit")
            runner.start()
            logger = MetricLogger(shared.tracking_uri, run_id)
            while (item := queue.get()) is not None:
                metrics = {k: float(v) for k, v in item["metrics"].items() if k in REPORTED_METRICS}
                if "val_loss" in metrics:
                    logger.log({"val_loss": metrics["val_loss"]}, int(metrics["step"]))
                if metrics.get("step", 0) >= cfg.train.max_steps:
                    # Let the Train run end on its own before Tune hears of the last step: ASHA stops a trial
                    # at max_t, and a stopped trial's actor dies at once, leaving its workers' placement group
                    # to Ray Train's cleaner actor instead of a normal shutdown.
                    runner.join()
                _report(metrics, item["checkpoint"], {"history": history, "trial_id": trial_id}, scratch)
            runner.join()
            if errors:
                raise errors[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(Path(shared.train_storage) / train_name, ignore_errors=True)
        if teacher_app is not None:
            from ray import serve

            serve.delete(teacher_app)


def _report(metrics: dict[str, float], checkpoint_path: str | None, state: dict[str, Any], scratch: Path) -> None:
    from ray import tune

    if checkpoint_path is None:
        tune.report(metrics)
        return
    out = scratch / f"report-{int(metrics.get('step', 0))}"
    shutil.copytree(checkpoint_path, out)
    (out / STATE_FILE).write_text(json.dumps(state))
    try:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out)))  # persisted (copied) by Tune
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _fit(cfg: DistillConfig, name: str, storage: str, loop: LoopConfig, data, queue, errors: list) -> None:
    """Thread body: the trial's Ray Train run; every report goes to `queue`, then a final None."""
    try:
        from raykd.train.fit import make_trainer

        make_trainer(cfg, name, storage, loop, data, callbacks=[_forward_reports_cls()(queue)]).fit()
    except BaseException as e:  # noqa: BLE001 - re-raised in the trial's main thread
        # (When Tune stops a trial - ASHA at a rung or at max_t - its actor's placement group goes first and the
        # Train controller dies under this thread: the main thread has then already left, nothing to report.)
        errors.append(e)
    finally:
        try:
            queue.put(None)
        except Exception:  # noqa: BLE001 - the stopped trial's process is gone and took the queue actor with it
            pass
