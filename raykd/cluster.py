"""Connecting to Ray: the cluster named by `RAY_ADDRESS` (as under `ray job submit`), or an embedded one.

An embedded cluster is started with enough *logical* CPUs for the teacher replicas and the Train
workers even on a 2-core laptop (they then share the cores; torch threads are set per process), with no
dashboard, and on node 127.0.0.1: nothing it runs listens beyond this machine (`_loopback_node`).

    started = init_ray(logical_cpus_needed)     # True: this process started the cluster and stops it
    shutdown_ray(started)

Ray's output stays in its log directory (the session's logs/ folder) unless the command runs with
`--verbose` (raykd/console.py): no worker output is forwarded to the driver, and Ray's, Serve's, Train's
and Tune's driver-side loggers print warnings and errors only. raykd's own lines, progress bars and
tables (raykd/console.py, raykd/train/progress.py) and every error still reach the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

from raykd.console import is_verbose, say


# Worker processes inherit these: no tokenizer thread pools fighting Train workers for cores, no
# per-process weight-loading progress bars interleaved in the job log.
QUIET_ENV = {
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


# Driver-side loggers of Ray's libraries: INFO lines about their internals ("Started Serve in namespace",
# "Application ... is ready", Tune's trial tables) are for --verbose. The token-auth notice is a warning Ray
# prints on every embedded start; it says nothing about this run.
QUIET_LOGGERS = {"ray": logging.WARNING, "ray.serve": logging.WARNING, "ray.train": logging.WARNING,
                 "ray.tune": logging.WARNING, "ray.data": logging.ERROR,
                 "ray._private.authentication.authentication_token_setup": logging.ERROR,
                 # transformers imports torchao when it is installed; torchao then warns about every optional kernel
                 # the CPU wheel lacks (mxfp8, cutlass), and torch about torchao's Enum registrations
                 "torchao": logging.ERROR, "torch.utils._pytree": logging.ERROR}


def quiet_ray_loggers() -> None:
    """Raise the levels of Ray's driver-side loggers (not under --verbose). Ray Serve sets its logger's level
    when imported, so it is imported first."""
    if is_verbose():
        return
    import ray.data  # noqa: F401 - importing Ray Data sets its loggers to DEBUG with a stderr handler
    import ray.serve  # noqa: F401

    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


_log_dir: str | None = None  # Ray's log directory of this process's session, once connected


def ray_log_dir() -> str | None:
    """Where Ray keeps the logs of this run's workers and replicas (None before Ray was started here)."""
    return _log_dir


def _remember_log_dir() -> None:
    global _log_dir
    try:
        import ray

        _log_dir = ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - private API: the hint is a convenience, never worth a failure
        _log_dir = None


def init_ray(logical_cpus_needed: float) -> bool:
    """Connect to or start Ray. Returns True when this call started (and so should stop) the cluster."""
    import ray

    os.environ.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})
    quiet_ray_loggers()
    if ray.is_initialized():
        _remember_log_dir()
        return False
    verbose = is_verbose()
    # RAYKD_BATCH_TRACE (raykd/train/batches.py) goes to the workers too, also on a cluster this process joins.
    forward = {k: os.environ[k] for k in ("RAYKD_BATCH_TRACE",) if k in os.environ}
    env = {"env_vars": {**QUIET_ENV, **forward}}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # Under `ray job submit` Ray merges this with the job's runtime env and refuses a variable both set
        # (e.g. TOKENIZERS_PARALLELISM in --runtime-env-json): the job's value wins.
        env = {"env_vars": {k: v for k, v in env["env_vars"].items() if k not in _job_env_vars()}}
        with _keep_sigterm_handler():
            ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, log_to_driver=verbose)
        _remember_log_dir()
        return False
    cpus = max(os.cpu_count() or 1, int(logical_cpus_needed + 0.999))
    # One machine, started here: no node of it can be preempted, so Ray Train's preemption watcher (one more
    # actor process per training run) has nothing to watch. Train reads it from this process's environment.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    with _loopback_node(), _keep_sigterm_handler():
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            runtime_env=env,
            logging_level=logging.WARNING,
            configure_logging=True,
            log_to_driver=verbose,
            _node_ip_address=LOOPBACK,
        )
    _remember_log_dir()
    return True


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _keep_sigterm_handler():
    """`ray.init` installs Ray's C++ failure handler for SIGTERM, which aborts the process: put back the
    command's Python handler (raykd/cli.py: MLflow run KILLED, Ray shut down, exit 143)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(handler):
            signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _loopback_node():
    """An embedded cluster serves this process only, so its node is 127.0.0.1 and its servers (GCS, raylet,
    workers, agents) bind there, not on every interface: Ray's own local mode on macOS and Windows
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, else `ray.init` swaps 127.0.0.1 for the machine's address). The
    processes it starts inherit the variable; this process's Ray constant is set for the start and restored.
    A cluster others must reach is started with `ray start` and joined through RAY_ADDRESS."""
    from ray._private import ray_constants

    set_env = {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0", LOOPBACK_ENV: "1"}
    saved_env, saved_flag = {k: os.environ.get(k) for k in set_env}, ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(set_env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


LOOPBACK_ENV = "RAYKD_LOOPBACK"  # set in every process of an embedded cluster (inherited from its start)


def serve_replica_on_loopback() -> None:
    """In a Serve replica of an embedded cluster: Serve binds each replica's inter-deployment gRPC server to
    "[::]" whatever the node IP (ray/serve/_private/replica.py); bind it to 127.0.0.1 instead. Called from the
    replica's constructor, before Serve starts that server. Nothing changes on a cluster raykd joined."""
    if os.environ.get(LOOPBACK_ENV) != "1":
        return
    from ray.serve._private import replica

    real = replica.add_port_to_grpc_server
    if getattr(real, "raykd_loopback", False):
        return

    def on_loopback(server, address: str):
        return real(server, address.replace("[::]", LOOPBACK, 1))

    on_loopback.raykd_loopback = True
    replica.add_port_to_grpc_server = on_loopback


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
    if not started:  # nothing to stop (and no reason to import Ray on the way out of an early failure)
        return
    import ray

    # An embedded cluster takes its Serve apps with it; a shared cluster keeps the teacher for other jobs.
    if started and ray.is_initialized():
        ray.shutdown()
