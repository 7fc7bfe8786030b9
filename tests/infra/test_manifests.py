"""Every manifest in infra/ checked offline: strict schemas, wiring, security defaults, sizing, image.

    pytest tests/infra/test_manifests.py              # fast; the MLflow server check runs with -m slow

KubeRay objects are validated against the CRDs' OpenAPI v3 schemas in ../shared/k8s/kuberay-crds/ with
unknown fields as errors (tests/infra/strict_schema.py); core objects (Deployment, Service, PVC, Secret,
NetworkPolicy) against the Kubernetes types the CRDs embed, plus a hand-written top level for Deployment,
Secret and NetworkPolicy. Beyond the schemas: entrypoints name files in the image and configs that parse
with raykd's own loader, the GPUs a config asks for fit the worker groups, versions agree with
pyproject.toml, and the security defaults hold (token auth from a Secret, ClusterIP only, no credentials).
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.infra.strict_schema import core_schemas, load_crd_schemas, validate

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CRD_DIR = ROOT.parent / "shared" / "k8s" / "kuberay-crds"
IMAGE_ROOT = "/home/ray/raykd"  # where infra/docker/Dockerfile puts the repository's jobs and configs
AUTH_SECRET = "raykd-ray-auth"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


def _manifests() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(INFRA.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                out.append((f"{f.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


MANIFESTS = _manifests()


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    assert CRD_DIR.is_dir(), f"KubeRay CRDs not found at {CRD_DIR}"
    crds = load_crd_schemas(CRD_DIR)
    return {**crds, **core_schemas(crds)}


def _of_kind(*kinds: str) -> list[dict]:
    return [doc for _, doc in MANIFESTS if doc["kind"] in kinds]


def _cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"],
            "RayService": lambda d: d["spec"]["rayClusterConfig"]}[doc["kind"]](doc)


def _groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) of the head ('head') and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def _containers(obj: dict) -> list[dict]:
    return obj["template"]["spec"]["containers"]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin() -> str:
    (dep,) = [d for d in _pyproject()["project"]["dependencies"] if re.match(r"ray\[", d)]
    return dep.split("==")[1]


def _quantity(q: str | int) -> float:
    """CPU/GPU quantities: 4, "4", "500m"."""
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


# --------------------------------------------------------------------------------------------- schemas
def test_infra_has_the_deployment_files():
    kinds = sorted(doc["kind"] for _, doc in MANIFESTS)
    assert kinds.count("RayJob") >= 2 and "RayService" in kinds and "RayCluster" in kinds, kinds
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(kinds)


@pytest.mark.parametrize("name,doc", MANIFESTS, ids=[n for n, _ in MANIFESTS])
def test_manifest_matches_schema_strictly(name, doc, schemas):
    assert doc.get("kind") in schemas, f"{name}: no schema for kind {doc.get('kind')}; add one before shipping it"
    assert "status" not in doc, f"{name}: manifests must not carry status"
    errors = validate(doc, schemas[doc["kind"]], name)
    assert not errors, "\n".join(errors)


def _mutate(doc: dict, dotted: str, value=None, delete: bool = False) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if delete:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


HEAD_POD = "spec.rayClusterSpec.headGroupSpec.template.spec"
NEGATIVE = [
    # (manifest kind, dotted path, value or "DELETE", expected part of the error)
    ("RayJob", "spec.shutdownAfterJobFinish", True, "unknown field"),
    ("RayJob", "spec.rayClusterSpec.authOption", {"mode": "token"}, "unknown field"),
    ("RayJob", f"{HEAD_POD}.containers.0.volumeMount", [], "unknown field"),
    ("RayJob", f"{HEAD_POD}.containers.0.resources.limit", {"cpu": "1"}, "unknown field"),
    ("RayJob", f"{HEAD_POD}.volumes.0.persistentVolumeClaim.claim", "x", "unknown field"),
    ("RayJob", "metadata.label", {"a": "b"}, "unknown field"),
    ("RayJob", "spec.rayClusterSpec.authOptions.mode", "tokens", "is not one of"),
    ("RayJob", "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus", 0, "expected string"),
    ("RayJob", "spec.rayClusterSpec.workerGroupSpecs.0.replicas", "2", "expected integer"),
    ("RayJob", "spec.rayClusterSpec.workerGroupSpecs.0.groupName", "DELETE", "missing required field 'groupName'"),
    ("RayJob", f"{HEAD_POD}.containers.0.resources.limits.cpu", "4 cores", "does not match"),
    ("RayJob", f"{HEAD_POD}.containers.0.resources.limits.cpu", True, "integer or a string"),
    ("RayJob", f"{HEAD_POD}.containers.0.ports.1.containerPort", 6379, "duplicate entries"),
    ("RayJob", "spec.managedBy", "ray.io/kuberay-operator", "CEL rules"),
    ("RayJob", "metadata.name", "Raykd_Distill", "does not match"),
    ("RayService", "spec.serveConfig", "x", "unknown field"),
    ("RayCluster", "spec.headGroupSpec.serviceTyp", "ClusterIP", "unknown field"),
    ("Deployment", "spec.template.spec.containers.0.imagePullPolice", "Always", "unknown field"),
    ("Deployment", "spec.selector", "DELETE", "missing required field 'selector'"),
    ("Deployment", "spec.strategy.type", "BlueGreen", "is not one of"),
    ("Service", "spec.typ", "ClusterIP", "unknown field"),
    ("PersistentVolumeClaim", "spec.accessMode", ["ReadWriteOnce"], "unknown field"),
    ("NetworkPolicy", "spec.ingress.0.form", [], "unknown field"),
]


@pytest.mark.parametrize("kind,path,value,expected", NEGATIVE, ids=[f"{k}:{p}" for k, p, _, _ in NEGATIVE])
def test_misspelt_or_wrong_fields_fail(kind, path, value, expected, schemas):
    """The validator is strict: a misspelt field (which Kubernetes would silently prune) is an error."""
    doc = _of_kind(kind)[0]
    assert not validate(doc, schemas[kind])
    bad = _mutate(doc, path, delete=value == "DELETE") if value == "DELETE" else _mutate(doc, path, value)
    errors = validate(bad, schemas[kind])
    assert any(expected in e for e in errors), errors


def test_int_or_string_quantities_accept_both(schemas):
    doc = _of_kind("RayJob")[0]
    for q in (4, "4", "500m", "1.5"):
        ok = _mutate(doc, f"{HEAD_POD}.containers.0.resources.limits.cpu", q)
        assert not validate(ok, schemas["RayJob"]), q


# --------------------------------------------------------------------------------------------- versions
def test_ray_version_and_images_agree_with_pyproject():
    ray = _ray_pin()
    version = _pyproject()["project"]["version"]
    for doc in _of_kind(*RAY_KINDS):
        spec = _cluster_spec(doc)
        assert spec["rayVersion"] == ray, doc["metadata"]["name"]
        for _, group in _groups(spec):
            for c in _containers(group):
                assert c["image"] in (f"raykd:{version}-gpu", f"raykd:{version}-cpu"), c["image"]
    for doc in _of_kind("Deployment"):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            assert c["image"].startswith(f"raykd:{version}-"), c["image"]
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray}\n" in dockerfile
    assert re.search(rf"^ray=={re.escape(ray)}$", (INFRA / "docker" / "constraints.txt").read_text(), re.M)


def test_constraints_pin_versions_inside_pyproject_ranges():
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    declared = {}
    for req in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]:
        r = Requirement(req)
        declared.setdefault(r.name.lower(), []).append(r.specifier)
    pins = {}
    for line in (INFRA / "docker" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    unpinned = set(declared) - {"pytest", "pytest-timeout"} - set(pins)
    assert not unpinned, f"pin {sorted(unpinned)} in infra/docker/constraints.txt (the image installs them)"
    for name, version in pins.items():
        for spec in declared.get(name, []):
            assert spec.contains(version, prereleases=True), f"{name}=={version} is outside pyproject's {spec}"


def test_dockerfile_builds_cpu_and_gpu_from_the_repository():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.M)
    assert stages == [("rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu", "cpu"),
                      ("rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu", "gpu")]
    assert '".[cpu,tune]"' in text and '".[gpu,tune]"' in text and text.count("-c /tmp/raykd-constraints.txt") >= 3
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY --chown=\S+ (.+) \S+$", text, re.M)
    for sources in copied:
        for src in sources.split():
            assert (ROOT / src).exists() or src == "README.md", f"COPY source missing: {src}"
            assert any(line.startswith("!") and src.startswith(line[1:].rstrip("/")) for line in ignore), src
    # The entrypoints and configs that the RayJobs name are where the image puts them.
    assert f"WORKDIR {IMAGE_ROOT}" in text and "COPY --chown=ray:users jobs ./jobs" in text
    assert "COPY --chown=ray:users infra/configs ./infra/configs" in text


# --------------------------------------------------------------------------------------------- security
def test_token_auth_from_a_secret_on_every_ray_cluster():
    for doc in _of_kind(*RAY_KINDS):
        auth = _cluster_spec(doc).get("authOptions")
        assert auth == {"mode": "token", "secretName": AUTH_SECRET}, doc["metadata"]["name"]


def test_nothing_is_exposed_outside_the_cluster():
    for doc in _of_kind(*RAY_KINDS):
        head = _cluster_spec(doc)["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP" and not head.get("enableIngress"), doc["metadata"]["name"]
        assert doc["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for doc in _of_kind("Service"):
        assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        assert not doc["spec"].get("externalIPs")
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert not kinds & {"Ingress", "Route", "Gateway", "HTTPRoute"}


CREDENTIAL_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|ACCESS_KEY|CREDENTIAL", re.I)


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def _env_vars(node, path=""):
    """(path, entry) of every container `env` entry anywhere in a manifest."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield from ((f"{path}.env[{i}]", e) for i, e in enumerate(v))
            else:
                yield from _env_vars(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _env_vars(v, f"{path}[{i}]")


def test_no_credentials_in_manifests():
    for name, doc in MANIFESTS:
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{name}: a Secret with values in git"
        for path, env in _env_vars(doc):
            if CREDENTIAL_NAME.search(env["name"]):
                assert "value" not in env, f"{name}{path}: {env['name']} is set literally; use valueFrom.secretKeyRef"
        for path, value in _walk(doc):
            assert not (isinstance(value, str) and re.search(r"://[^/\s:@]+:[^/\s@]+@", value)), \
                f"{name}{path}: credentials in a URI"
    for doc in _of_kind("RayJob"):
        env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "{}")) or {}
        assert not any(CREDENTIAL_NAME.search(k) for k in env.get("env_vars", {})), env


def test_head_does_no_work():
    """The head runs drivers, the GCS and the Serve controller; no Ray task, actor or GPU lands there."""
    for doc in _of_kind(*RAY_KINDS):
        head = _cluster_spec(doc)["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0" and head["rayStartParams"].get("num-gpus") == "0"
        for c in _containers(head):
            assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})


# --------------------------------------------------------------------------------------------- wiring
def _shared_mount(group: dict) -> str | None:
    pod = group["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
              if claims.get(m["name"]) == "raykd-shared"}
    return mounts.pop() if len(mounts) == 1 else None


def test_every_ray_pod_mounts_the_shared_volume_and_claims_exist():
    claims = {d["metadata"]["name"] for d in _of_kind("PersistentVolumeClaim")}
    assert "raykd-shared" in claims
    shared = [d for d in _of_kind("PersistentVolumeClaim") if d["metadata"]["name"] == "raykd-shared"][0]
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"], "Train checkpoints cross pods: RWX needed"
    for doc in _of_kind(*RAY_KINDS):
        for group_name, group in _groups(_cluster_spec(doc)):
            assert _shared_mount(group) == "/mnt/raykd", f"{doc['metadata']['name']}/{group_name}"
    for _, doc in MANIFESTS:
        for path, value in _walk(doc):
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
        from raykd.sweep_config import load_sweep

        sweep, base = load_sweep(config, overrides)
        tr = base.train
        trials = [(tr.cpus_per_worker, 1.0 if tr.use_gpu else 0.0)] * (tr.num_workers * sweep.max_concurrent_trials)
        return base, _teacher_demands(base.teacher) + trials
    raise AssertionError(f"{rel}: say here which config loader it uses")


@pytest.mark.parametrize("doc", _of_kind("RayJob"), ids=lambda d: d["metadata"]["name"])
def test_rayjob_entrypoint_names_files_in_the_image_and_a_config_that_parses(doc):
    script, config, overrides = _entrypoint(doc)
    assert script.is_file(), f"entrypoint script {script} does not exist"
    assert config.is_file(), f"config {config} does not exist"
    cfg, demands = _job_config(script, config, overrides)
    # Paths the run writes are on the volume every pod shares (checkpoints cross pods), and so is the
    # raykd cache (the teacher built once, sweep state).
    spec = _cluster_spec(doc)
    mount = _shared_mount(spec["headGroupSpec"])
    for path in (cfg.output_dir, cfg.train.storage_path):
        assert path and path.startswith(mount + "/"), f"{path} is not on the shared volume {mount}"
    for _, group in _groups(spec):
        env = {e["name"]: e.get("value") for e in _containers(group)[0].get("env", [])}
        assert env.get("RAYKD_CACHE", "").startswith(mount + "/"), env
    # The GPUs and CPUs it asks for at once fit the worker pods, with no GPU left idle.
    pods = _capacity(spec, "replicas")
    assert _fits(demands, pods), f"{demands} do not fit the worker pods {pods}"
    assert sum(g for _, g in pods) == sum(g for _, g in demands), f"idle GPUs: {pods} for {demands}"


@pytest.mark.parametrize("doc", _of_kind("RayJob"), ids=lambda d: d["metadata"]["name"])
def test_rayjob_runtime_env_points_at_the_mlflow_service(doc):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)  # Ray's own validation of the runtime env
    uri = urlparse(env["env_vars"]["MLFLOW_TRACKING_URI"])
    services = {(d["metadata"]["name"], p["port"]) for d in _of_kind("Service") for p in d["spec"]["ports"]}
    assert (uri.hostname, uri.port) in services, f"{uri.geturl()} names no Service in infra/"


def _gpus(container: dict) -> float:
    return _quantity(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _cpus(container: dict) -> float:
    res = container.get("resources", {})
    return _quantity(res.get("limits", res.get("requests", {})).get("cpu", 0))


def _capacity(spec: dict, replicas_key: str) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of every worker pod the cluster can have (`replicas` or `maxReplicas` of each group)."""
    pods = []
    for group in spec.get("workerGroupSpecs", []):
        c = _containers(group)[0]
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
    (cluster,) = _of_kind("RayCluster")
    for doc in _of_kind("RayJob"):
        _, demands = _job_config(*_entrypoint(doc))
        assert _fits(demands, _capacity(_cluster_spec(cluster), "maxReplicas")), doc["metadata"]["name"]


def test_rayservice_hosts_the_teacher_that_distill_jobs_reuse():
    from ray.serve.schema import ServeDeploySchema

    from raykd.config import TeacherConfig

    (svc,) = _of_kind("RayService")
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
def _mlflow_deployment() -> dict:
    (dep,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "raykd-mlflow"]
    return dep


def _mlflow_args() -> dict[str, str]:
    (c,) = _mlflow_deployment()["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["mlflow", "server"]
    return dict(a.removeprefix("--").split("=", 1) if "=" in a else (a.removeprefix("--"), "") for a in c["command"][2:])


def test_mlflow_service_selects_the_server_and_its_volume():
    dep = _mlflow_deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (svc,) = [d for d in _of_kind("Service") if d["metadata"]["name"] == "raykd-mlflow"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in port_names or p["targetPort"] in port_names.values()
    args = _mlflow_args()
    assert int(args["port"]) in port_names.values()
    assert args["workers"] == "1" and dep["spec"]["strategy"]["type"] == "Recreate", "sqlite wants one writer"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    store = args["backend-store-uri"].removeprefix("sqlite:///")
    assert any(store.startswith(m + "/") for m in mounts) and any(args["artifacts-destination"].startswith(m) for m in mounts)
    (policy,) = _of_kind("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_mlflow_accepts_the_service_host_and_rejects_others():
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = _mlflow_args()["allowed-hosts"].split(",")
    for job in _of_kind("RayJob"):
        uri = urlparse(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"])
        assert is_allowed_host_header(allowed, uri.netloc)
    for host in ("raykd-mlflow.raykd.svc.cluster.local:5000", "raykd-mlflow.raykd.svc:5000", "127.0.0.1:5000",
                 "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", "raykd-mlflow.evil.example.com.attacker:80", "10.0.0.7:5000"):
        assert not is_allowed_host_header(allowed, host), host


@pytest.mark.slow
def test_mlflow_server_runs_with_the_manifest_arguments(tmp_path):
    """The Deployment's `mlflow server` command line, run locally (paths and host swapped for local ones)."""
    import os
    import socket
    import subprocess
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = _mlflow_args()
    args.update({"host": "127.0.0.1", "port": str(port), "backend-store-uri": f"sqlite:///{tmp_path}/mlflow.db",
                 "artifacts-destination": str(tmp_path / "artifacts")})
    argv = ["mlflow", "server"] + [f"--{k}={v}" if v else f"--{k}" for k, v in args.items()]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        ok = requests.get(search, headers={"Host": "raykd-mlflow.raykd.svc.cluster.local:5000"}, timeout=10)
        assert ok.status_code == 200, ok.text
        bad = requests.get(search, headers={"Host": "evil.example.com"}, timeout=10)
        assert bad.status_code == 403
        import mlflow

        client = mlflow.MlflowClient(url)
        exp = client.create_experiment("infra-check")
        run = client.create_run(exp)
        (tmp_path / "a.txt").write_text("artifact")
        client.log_artifact(run.info.run_id, str(tmp_path / "a.txt"))  # proxied: lands under --artifacts-destination
        assert list((tmp_path / "artifacts").rglob("a.txt"))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
