"""Connecting to Ray: the cluster named by `RAY_ADDRESS` (as under `ray job submit`), or an embedded one.

An embedded cluster is started with enough *logical* CPUs for the teacher replicas and the Train
workers even on a 2-core laptop (they then share the cores; torch threads are set per process), and
with the dashboard bound to 127.0.0.1.
"""

from __future__ import annotations

import logging
import os


def init_ray(logical_cpus_needed: float) -> bool:
    """Connect to or start Ray. Returns True when this call started (and so should stop) the cluster."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning", "TOKENIZERS_PARALLELISM": "false"}}
    address = os.environ.get("RAY_ADDRESS")
    if address:
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


def shutdown_ray(started: bool) -> None:
    import ray

    if started and ray.is_initialized():
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        ray.shutdown()
