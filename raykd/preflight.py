"""Refuse early: every directory a run will write and every service it connects to, checked in seconds
before any data is read, teacher built or cluster started (docs/faults.md).

    preflight(distill_write_dirs(cfg), cfg.mlflow)     # raykd distill (and sweep, pipeline, mlm-distill, capture)
    check_writable_dir("outputs", "output_dir")        # one directory
    check_tracking_uri("http://mlflow:5000", "raykd")  # the tracking store answers; a local artifact root is writable
    check_ray_address("10.0.0.5:6379")                 # something listens at RAY_ADDRESS

Each problem is one `ConfigError` line naming the field (or RAY_ADDRESS, or the tracking URI), printed by
the CLI as `raykd: error: ...` with exit code 2. Services get CONNECT_TIMEOUT_S, not the clients' own
retries: MLflow's HTTP client retries for minutes and `ray.init` waits a minute for a GCS that is not there.
Nothing is created here: a directory that does not exist yet passes when its nearest existing ancestor is a
writable directory (the run creates it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from raykd.config import ConfigError, DistillConfig, MlflowConfig, default_cache_dir

CONNECT_TIMEOUT_S = 5.0  # per service; a check answers well within the 30 s a user waits at most
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433,
                 "ray": 10001}


def check_writable_dir(path: str | Path, field: str) -> None:
    """`path` is (or can be created as) a directory this process can write into, else one ConfigError line."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{field}: {path} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{field}: {path} is not writable")
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{field}: {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: {path} cannot be created: {parent} is not writable")


def _answers(host: str, port: int, what: str, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.timeout:
        problem = f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as e:
        problem = f"{host}:{port} does not answer ({e.strerror or e})"
    raise ConfigError(f"{what}: {problem}")


def check_ray_address(address: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """RAY_ADDRESS (default: the environment's) names a host:port that accepts connections. 'auto' and
    'local' are Ray's own lookups and pass; an unset address means an embedded cluster."""
    address = os.environ.get("RAY_ADDRESS") if address is None else address
    if not address or address in ("auto", "local"):
        return
    parsed = urllib.parse.urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise ConfigError(f"RAY_ADDRESS={address}: not host:port (or ray://host:port)")
    _answers(parsed.hostname, port, f"RAY_ADDRESS={address}", timeout)


def local_path(uri: str) -> Path | None:
    """The local directory a file:// URI or a plain path names; None for remote stores (s3://, mlflow-artifacts:)."""
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    if ":" in uri.split("/", 1)[0]:  # a scheme: remote
        return None
    return Path(uri)


def check_tracking_uri(uri: str, experiment: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """The MLflow tracking store at `uri` can be written (sqlite/file: its directory) or answers (a server, a
    database), and the experiment's artifact location, when local, is a writable directory."""
    what = f"mlflow.tracking_uri {uri}"
    scheme = uri.split(":", 1)[0] if ":" in uri.split("/", 1)[0] else "file"
    artifacts: str | None = None
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        if db.is_dir():
            raise ConfigError(f"{what}: {db} is a directory, not a database file")
        check_writable_dir(db.parent, what)
        if not db.parent.is_dir():
            raise ConfigError(f"{what}: directory {db.parent} does not exist (sqlite does not create it)")
        # MLflow's default artifact root for a database store is ./mlruns (resolved when the store opens).
        artifacts = _sqlite_artifact_location(db, experiment) or str(Path("mlruns").resolve())
    elif scheme == "file":
        check_writable_dir(local_path(uri), what)
    elif scheme in ("http", "https"):
        artifacts = _server_artifact_location(uri, experiment, what, timeout)
    elif scheme in DEFAULT_PORTS or "+" in scheme:  # a database server (postgresql+psycopg2://...)
        parsed = urllib.parse.urlsplit(uri)
        port = parsed.port or DEFAULT_PORTS.get(scheme.split("+")[0])
        if parsed.hostname and port:
            _answers(parsed.hostname, port, what, timeout)
    local = local_path(artifacts) if artifacts else None
    if local is not None:
        check_writable_dir(local, f"MLflow artifact location of experiment '{experiment}' ({artifacts})")


def _sqlite_artifact_location(db: Path, experiment: str) -> str | None:
    """The experiment's artifact location, read without creating or migrating the database."""
    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as con:
            row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
    except sqlite3.Error as e:
        if "no such table" in str(e):
            return None
        raise ConfigError(f"mlflow.tracking_uri sqlite:///{db}: not a readable MLflow database ({e})") from None
    return row[0] if row else None


def _server_artifact_location(uri: str, experiment: str, what: str, timeout: float) -> str | None:
    """GET /health (any HTTP answer counts: auth and proxies differ), then the experiment's artifact location."""
    base = uri.rstrip("/")
    try:
        urllib.request.urlopen(f"{base}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, socket.timeout) or "timed out" in str(reason):
            raise ConfigError(f"{what}: no answer within {timeout:g} s") from None
        raise ConfigError(f"{what}: does not answer ({reason})") from None
    query = urllib.parse.urlencode({"experiment_name": experiment})
    try:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=timeout) as r:
            return json.loads(r.read()).get("experiment", {}).get("artifact_location")
    except (urllib.error.URLError, OSError, ValueError):
        return None  # a new experiment, or a server that wants credentials: its artifacts are its business


def preflight(write_dirs: dict[str, str | Path | None], mlflow: MlflowConfig | None = None) -> None:
    """Every directory of `write_dirs` (field -> path; None and remote URIs skipped), the tracking store of
    `mlflow` (None: the job tracks nothing) and RAY_ADDRESS, as one ConfigError line for the first problem."""
    for field, path in write_dirs.items():
        local = local_path(str(path)) if path is not None else None
        if local is not None:
            check_writable_dir(local, field)
    if mlflow is not None:
        from raykd.tracking import resolve_tracking_uri

        check_tracking_uri(resolve_tracking_uri(mlflow), mlflow.experiment)
    check_ray_address()


def distill_write_dirs(cfg: DistillConfig) -> dict[str, str | Path | None]:
    """The directories `raykd distill` writes with `cfg`, by the field that sets them."""
    cache = default_cache_dir()
    tc, sc = cfg.train, cfg.signals
    # The cache root first: the defaults below live in it, and it is what the user sets (RAYKD_CACHE).
    uses_cache = cfg.teacher.path is None or not tc.storage_path or (sc.cache and not sc.cache_dir)
    return {
        "RAYKD_CACHE": cache if uses_cache else None,  # the offline teacher is built there, and the defaults
        "output_dir": cfg.output_dir,
        "train.storage_path": tc.storage_path or cache / "runs",
        "signals.cache_dir": (sc.cache_dir or cache / "signals") if sc.cache else None,
    }
