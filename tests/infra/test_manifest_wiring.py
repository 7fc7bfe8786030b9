"""The manifests in infra/ fit together and fit the runs they start: volumes, entrypoints, sizing, MLflow.

    pytest tests/infra/test_manifest_wiring.py        # the MLflow server check runs with -m slow

Entrypoints name files the image contains and configs that raykd's own loaders accept; the GPUs and CPUs a
config asks for fit the worker pods; the RayService serves the teacher the jobs would deploy; the MLflow
Service, Deployment, volume and NetworkPolicy select each other, and the server runs with its arguments.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.infra.manifests import (
    IMAGE_ROOT, INFRA, MANIFESTS, RAY_KINDS, ROOT, cluster_spec, containers, groups, mlflow_args, mlflow_deployment,
    of_kind, quantity, walk,
)


def _shared_mount(group: dict) -> str | None:
    pod = group["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
              if claims.get(m["name"]) == "raykd-shared"}
    return mounts.pop() if len(mounts) == 1 else None


def test_every_ray_pod_mounts_the_shared_volume_and_claims_exist():
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    assert "raykd-shared" in claims
    shared = [d for d in of_kind("PersistentVolumeClaim") if d["metadata"]["name"] == "raykd-shared"][0]
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"], "Train checkpoints cross pods: RWX needed"
    for doc in of_kind(*RAY_KINDS):
        for group_name, group in groups(cluster_spec(doc)):
            assert _shared_mount(group) == "/mnt/raykd", f"{doc['metadata']['name']}/{group_name}"
    for _, doc in MANIFESTS:
        for path, value in walk(doc):
            if path.endswith(".claimName"):
                assert value in claims, f"{doc['metadata']['name']}{path}: no PVC {value} in infra/"


def _entrypoint(doc: dict) -> tuple[Path, Path, list[str]]:
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[2] == "--config", argv
    local = [ROOT / Path(a).relative_to(IMAGE_ROOT) for a in (argv[1], argv[3])]
    return local[0], local[1], argv[4:]


def _job_config(script: Path, config: Path, overrides: list[str]):
    """(the run's DistillConfig, the Ray bundles (CPU, GPU) it needs at once), read with raykd's own loaders."""
    rel = str(script.relative_to(ROOT))
    if rel == "jobs/distill.py":
        from raykd.config import DistillConfig, load_config

        cfg = load_config(DistillConfig, config, overrides)
        return cfg, _distill_demands(cfg)
    if rel == "jobs/sweep.py":
        from raykd.config.sweep import load_sweep

        sweep, base = load_sweep(config, overrides)
        tr = base.train
        trials = [(tr.cpus_per_worker, 1.0 if tr.use_gpu else 0.0)] * (tr.num_workers * sweep.max_concurrent_trials)
        return base, _teacher_demands(base.teacher) + trials
    raise AssertionError(f"{rel}: say here which config loader it uses")


@pytest.mark.parametrize("doc", of_kind("RayJob"), ids=lambda d: d["metadata"]["name"])
def test_rayjob_entrypoint_names_files_in_the_image_and_a_config_that_parses(doc):
    script, config, overrides = _entrypoint(doc)
    assert script.is_file(), f"entrypoint script {script} does not exist"
    assert config.is_file(), f"config {config} does not exist"
    cfg, demands = _job_config(script, config, overrides)
    # Paths the run writes are on the volume every pod shares (checkpoints cross pods), and so is the
    # raykd cache (the teacher built once, sweep state).
    spec = cluster_spec(doc)
    mount = _shared_mount(spec["headGroupSpec"])
    for path in (cfg.output_dir, cfg.train.storage_path):
        assert path and path.startswith(mount + "/"), f"{path} is not on the shared volume {mount}"
    for _, group in groups(spec):
        env = {e["name"]: e.get("value") for e in containers(group)[0].get("env", [])}
        assert env.get("RAYKD_CACHE", "").startswith(mount + "/"), env
    # The GPUs and CPUs it asks for at once fit the worker pods, with no GPU left idle.
    pods = _capacity(spec, "replicas")
    assert _fits(demands, pods), f"{demands} do not fit the worker pods {pods}"
    assert sum(g for _, g in pods) == sum(g for _, g in demands), f"idle GPUs: {pods} for {demands}"


@pytest.mark.parametrize("doc", of_kind("RayJob"), ids=lambda d: d["metadata"]["name"])
def test_rayjob_runtime_env_points_at_the_mlflow_service(doc):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)  # Ray's own validation of the runtime env
    uri = urlparse(env["env_vars"]["MLFLOW_TRACKING_URI"])
    services = {(d["metadata"]["name"], p["port"]) for d in of_kind("Service") for p in d["spec"]["ports"]}
    assert (uri.hostname, uri.port) in services, f"{uri.geturl()} names no Service in infra/"


def _gpus(container: dict) -> float:
    return quantity(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _cpus(container: dict) -> float:
    res = container.get("resources", {})
    return quantity(res.get("limits", res.get("requests", {})).get("cpu", 0))


def _capacity(spec: dict, replicas_key: str) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of every worker pod the cluster can have (`replicas` or `maxReplicas` of each group)."""
    pods = []
    for group in spec.get("workerGroupSpecs", []):
        c = containers(group)[0]
        pods += [(_cpus(c), _gpus(c))] * group[replicas_key]
    return pods


def _fits(demands: list[tuple[float, float]], pods: list[tuple[float, float]]) -> bool:
    """First-fit-decreasing of Ray bundles (CPU, GPU) onto pods, as Ray's scheduler must manage."""
    free = [list(p) for p in pods]
    for cpu, gpu in sorted(demands, key=lambda d: (-d[1], -d[0])):
        for pod in free:
            if pod[0] >= cpu and pod[1] >= gpu:
                pod[0] -= cpu
                pod[1] -= gpu
                break
        else:
            return False
    return True


def _teacher_demands(t) -> list[tuple[float, float]]:
    """One bundle per teacher replica, at most (Serve autoscaling's max_replicas when set)."""
    return [(t.num_cpus, t.num_gpus)] * (t.autoscaling.max_replicas if t.autoscaling else t.num_replicas)


def _distill_demands(cfg) -> list[tuple[float, float]]:
    tr = cfg.train
    return _teacher_demands(cfg.teacher) + [(tr.cpus_per_worker, 1.0 if tr.use_gpu else 0.0)] * tr.num_workers


def _distill_config():
    from raykd.config import DistillConfig, load_config

    return load_config(DistillConfig, INFRA / "configs" / "distill.yaml")


def test_cluster_configs_fit_the_interactive_cluster():
    cfg = _distill_config()
    assert cfg.teacher.backend == "vllm" and cfg.teacher.num_gpus == cfg.teacher.vllm.tensor_parallel_size
    (cluster,) = of_kind("RayCluster")
    for doc in of_kind("RayJob"):
        _, demands = _job_config(*_entrypoint(doc))
        assert _fits(demands, _capacity(cluster_spec(cluster), "maxReplicas")), doc["metadata"]["name"]


def test_rayservice_hosts_the_teacher_that_distill_jobs_reuse():
    from ray.serve.schema import ServeDeploySchema

    from raykd.config import TeacherConfig

    (svc,) = of_kind("RayService")
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "raykd.teacher.app:build_app"
    teacher = TeacherConfig.model_validate(app.args)
    # Jobs find the app by teacher.app_name and reuse it when the weights and backend are theirs.
    job_teacher = _distill_config().teacher
    assert app.name == job_teacher.app_name == teacher.app_name
    assert (teacher.path, teacher.build, teacher.backend) == (job_teacher.path, job_teacher.build, job_teacher.backend)
    pods = _capacity(svc["spec"]["rayClusterConfig"], "replicas")
    assert _fits(_teacher_demands(teacher), pods)


def test_build_app_binds_the_teacher_deployment(tiny_teacher):
    from raykd.config import ConfigError
    from raykd.teacher.app import build_app

    app = build_app({"path": str(tiny_teacher), "backend": "hf", "num_replicas": 2, "num_cpus": 0.5})
    deployment = app._bound_deployment
    assert deployment.name == "Teacher" and deployment.num_replicas == 2
    assert deployment.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert deployment.init_args[0] == str(tiny_teacher)
    with pytest.raises(ConfigError, match="serve args: unknown config key 'num_replica'"):
        build_app({"path": str(tiny_teacher), "num_replica": 2})
    with pytest.raises(ConfigError, match="model path not found"):
        build_app({"path": "/nonexistent/teacher"})


# --------------------------------------------------------------------------------------------- mlflow
def test_mlflow_service_selects_the_server_and_its_volume():
    dep = mlflow_deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (svc,) = [d for d in of_kind("Service") if d["metadata"]["name"] == "raykd-mlflow"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in port_names or p["targetPort"] in port_names.values()
    args = mlflow_args()
    assert int(args["port"]) in port_names.values()
    assert args["workers"] == "1" and dep["spec"]["strategy"]["type"] == "Recreate", "sqlite wants one writer"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    store = args["backend-store-uri"].removeprefix("sqlite:///")
    assert any(store.startswith(m + "/") for m in mounts) and any(args["artifacts-destination"].startswith(m) for m in mounts)
    (policy,) = of_kind("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_mlflow_accepts_the_service_host_and_rejects_others():
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = mlflow_args()["allowed-hosts"].split(",")
    for job in of_kind("RayJob"):
        uri = urlparse(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"])
        assert is_allowed_host_header(allowed, uri.netloc)
    for host in ("raykd-mlflow.raykd.svc.cluster.local:5000", "raykd-mlflow.raykd.svc:5000", "127.0.0.1:5000",
                 "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", "raykd-mlflow.evil.example.com.attacker:80", "10.0.0.7:5000"):
        assert not is_allowed_host_header(allowed, host), host
