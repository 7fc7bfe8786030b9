"""Connecting to Ray: the cluster named by `RAY_ADDRESS` (as under `ray job submit`), or an embedded one.

An embedded cluster is started with enough *logical* CPUs for the teacher replicas and the Train
workers even on a 2-core laptop (they then share the cores; torch threads are set per process), and
with the dashboard bound to 127.0.0.1.

    started = init_ray(logical_cpus_needed)     # True: this process started the cluster and stops it
    shutdown_ray(started)
"""

from __future__ import annotations

import json
import logging
import os

from raykd.console import say


# Worker processes inherit these: no tokenizer thread pools fighting Train workers for cores, no
# per-process weight-loading progress bars interleaved in the job log.
QUIET_ENV = {
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def init_ray(logical_cpus_needed: float) -> bool:
    """Connect to or start Ray. Returns True when this call started (and so should stop) the cluster."""
    import ray

    os.environ.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})
    if ray.is_initialized():
        return False
    env = {"env_vars": QUIET_ENV}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # Under `ray job submit` Ray merges this with the job's runtime env and refuses a variable both set
        # (e.g. TOKENIZERS_PARALLELISM in --runtime-env-json): the job's value wins.
        env = {"env_vars": {k: v for k, v in QUIET_ENV.items() if k not in _job_env_vars()}}
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING)
        return False
    cpus = max(os.cpu_count() or 1, int(logical_cpus_needed + 0.999))
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        runtime_env=env,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    return True


def start_ray(cpus: float, attempts: int = 3) -> bool:
    """`init_ray`, retried: Ray gives its raylet a fixed 30 s to register, which an overloaded shared machine
    can miss; a pipeline that already spent minutes planning should not die of that."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return init_ray(cpus)
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            say(f"Ray did not start in time ({attempt}/{attempts}); retrying")
            import ray

            ray.shutdown()
            time.sleep(10)
    raise AssertionError("unreachable")


def _job_env_vars() -> dict[str, str]:
    """env_vars of the submitted job's runtime env (Ray hands the job config to its driver as JSON)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    runtime_env = (json.loads(raw).get("runtime_env") or {}) if raw else {}
    return runtime_env.get("env_vars") or {}


def shutdown_ray(started: bool) -> None:
    import ray

    # An embedded cluster takes its Serve apps with it; a shared cluster keeps the teacher for other jobs.
    if started and ray.is_initialized():
        ray.shutdown()
