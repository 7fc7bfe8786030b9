"""Two pipelines logged to a real `mlflow server` started with the infra/ Deployment's own command line (sqlite
backend, 127.0.0.1, free port), then compared through its REST API the way the UI's comparison page reads them
(slow: runs Ray, Serve and Train); the Deployment's host allow-list and artifact proxy on the same server.

Checks what side-by-side comparison needs: both parent runs and all stage runs are found by tag, carry the
same metric keys and the params that differ, their curves come back from the metric history, plots and
the registered model come back through the server (artifact proxy and Model Registry).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.infra.manifests import mlflow_args
from tests.pipeline.tiny_pipeline import tiny_pipeline

pytestmark = pytest.mark.slow


# MLflow 3's server also starts a job runner with seven `huey` consumer processes (for its GenAI jobs, which
# raykd does not use); on 2 cores their start-up takes minutes and competes with the test's own work.
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """ONE `mlflow server` for the module, started with the infra/ Deployment's own command line (paths, host and
    port swapped for local ones): the pipelines log to it and the manifest checks run against it."""
    import requests

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    args = mlflow_args()
    args.update({"host": "127.0.0.1", "port": str(port), "backend-store-uri": f"sqlite:///{root}/mlflow.db",
                 "artifacts-destination": str(root / "artifacts")})
    argv = [sys.executable, "-m", "mlflow", "server"] + [f"--{k}={v}" if v else f"--{k}" for k, v in args.items()]
    proc = subprocess.Popen(argv, stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=SERVER_ENV)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # seconds normally; minutes on a 2-core machine under load
    try:
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).text.strip() == "OK":
                    break
            except requests.RequestException:  # not listening yet, or too slow to answer
                pass
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(1)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def two_pipelines(mlflow_server, ray_cluster, tiny_teacher, tmp_path_factory):
    """Pipelines 'cmp-a' and 'cmp-b' (one domain stage each: what is compared here is runs side by side; the
    stage chain and its lineage are tests/e2e/test_pipeline.py's), differing in alpha, in-process on the session
    cluster (tests/e2e/conftest.py); their teachers under an app name of their own, deleted afterwards."""
    from raykd.pipeline.run import run_pipeline
    from raykd.config.pipeline import PipelineConfig

    tmp = tmp_path_factory.mktemp("pipelines")
    env = pytest.MonkeyPatch()
    env.setenv("RAYKD_CACHE", str(tmp / "cache"))
    results = {}
    try:
        for name, alpha in (("cmp-a", 0.8), ("cmp-b", 0.3)):
            tree = tiny_pipeline(tiny_teacher, tmp, name=name, tracking_uri=mlflow_server[0], domain_steps=6)
            tree["defaults"]["teacher"]["app_name"] = "cmp-teacher"
            tree["stages"] = [tree["stages"][2]]
            tree["stages"][0]["loss"]["alpha"] = alpha
            tree["registry"]["model_name"] = "cmp-student"
            results[name] = run_pipeline(PipelineConfig.model_validate(tree))
        yield results
    finally:
        env.undo()
        from ray import serve

        serve.delete("cmp-teacher")


def _api(url: str, method: str, path: str, **kwargs):
    import requests

    r = requests.request(method, f"{url}/api/2.0/mlflow/{path}", timeout=60, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def test_runs_of_several_pipelines_compare_side_by_side(mlflow_server, two_pipelines):
    import requests

    url, _ = mlflow_server
    exp = _api(url, "GET", "experiments/get-by-name", params={"experiment_name": "pipelines"})["experiment"]
    search = lambda flt: _api(url, "POST", "runs/search", json={"experiment_ids": [exp["experiment_id"]],  # noqa: E731
                                                                 "filter": flt, "max_results": 100}).get("runs", [])
    parents = search("tags.`raykd.job` = 'pipeline'")
    assert sorted(r["info"]["run_name"] for r in parents) == ["cmp-a", "cmp-b"]
    parent_ids = {r["info"]["run_id"] for r in parents}
    assert parent_ids == {res["parent_run_id"] for res in two_pipelines.values()}

    def metrics(run):
        return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}

    def params(run):
        return {p["key"]: p["value"] for p in run["data"].get("params", [])}

    # Same metric keys on both parents: the comparison table lines them up.
    keys = [set(metrics(r)) for r in parents]
    assert keys[0] == keys[1] and {"final_student_domain_loss", "retention_domain_perplexity"} <= keys[0]

    stages = search("tags.`raykd.job` = 'pipeline-stage'")
    assert len(stages) == 2
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in stages]
    assert all(t["mlflow.parentRunId"] in parent_ids for t in tags)
    domain = {t["raykd.pipeline"]: r for t, r in zip(tags, stages) if t["raykd.stage"] == "domain"}
    assert params(domain["cmp-a"])["loss.alpha"] == "0.8" and params(domain["cmp-b"])["loss.alpha"] == "0.3"
    assert set(metrics(domain["cmp-a"])) == set(metrics(domain["cmp-b"]))

    # Curves (what the comparison page's charts plot) come from the metric history.
    run_id = domain["cmp-b"]["info"]["run_id"]
    history = _api(url, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "alpha"})["metrics"]
    assert history and {m["value"] for m in history} == {0.3}
    loss = _api(url, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "loss_hard"})["metrics"]
    assert max(m["step"] for m in loss) == 6

    # Plots through the server's artifact proxy.
    parent_b = two_pipelines["cmp-b"]["parent_run_id"]
    listed = _api(url, "GET", "artifacts/list", params={"run_id": parent_b, "path": "plots"})["files"]
    assert {f["path"] for f in listed} == {"plots/eval_progress.png", "plots/stages_curves.png"}
    png = requests.get(f"{url}/get-artifact", params={"path": "plots/eval_progress.png", "run_uuid": parent_b}, timeout=60)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"

    # Both final students are versions of one registered model, each with its pipeline's lineage.
    versions = _api(url, "GET", "model-versions/search", params={"filter": "name = 'cmp-student'"})["model_versions"]
    assert len(versions) == 2
    by_run = {}
    for v in versions:
        t = {x["key"]: x["value"] for x in v.get("tags", [])}
        assert t["raykd.lineage"] == "domain"
        by_run[t["raykd.pipeline_run_id"]] = t["raykd.pipeline"]
    assert by_run == {res["parent_run_id"]: name for name, res in two_pipelines.items()}

    # The UI itself is served (the comparison page is rendered client-side from the calls above).
    page = requests.get(url + "/", timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_mlflow_server_runs_with_the_manifest_arguments(mlflow_server, tmp_path):
    """The Deployment's command line (the module's server): its allowed hosts and its artifact proxy."""
    import mlflow
    import requests

    url, root = mlflow_server
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    ok = requests.get(search, headers={"Host": "raykd-mlflow.raykd.svc.cluster.local:5000"}, timeout=60)
    assert ok.status_code == 200, ok.text
    bad = requests.get(search, headers={"Host": "evil.example.com"}, timeout=60)
    assert bad.status_code == 403
    client = mlflow.MlflowClient(url)
    run = client.create_run(client.create_experiment("infra-check"))
    (tmp_path / "a.txt").write_text("artifact")
    client.log_artifact(run.info.run_id, str(tmp_path / "a.txt"))  # proxied: lands under --artifacts-destination
    assert list((root / "artifacts").rglob("a.txt"))
