"""Connecting to Ray: a submitted job's driver leaves the job's own env vars to the job."""

import json


def test_driver_runtime_env_defers_to_the_job(monkeypatch):
    """Ray refuses a driver runtime env that repeats a job env var; raykd's driver leaves those to the job."""
    from raykd.cluster import QUIET_ENV, _job_env_vars

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_env_vars() == {}
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {"TOKENIZERS_PARALLELISM": "true"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_env_vars() == {"TOKENIZERS_PARALLELISM": "true"} and "TOKENIZERS_PARALLELISM" in QUIET_ENV
