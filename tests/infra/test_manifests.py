"""Every manifest in infra/ against strict schemas, and the image and security rules they must keep.

    pytest tests/infra/test_manifests.py

KubeRay objects are validated against the CRDs' OpenAPI v3 schemas in ../shared/k8s/kuberay-crds/ with
unknown fields as errors (tests/infra/strict_schema.py); core objects (Deployment, Service, PVC, Secret,
NetworkPolicy) against the Kubernetes types the CRDs embed, plus a hand-written top level for Deployment,
Secret and NetworkPolicy. Also: versions agree with pyproject.toml and the Dockerfile, and the security
defaults hold (token auth from a Secret, ClusterIP only, no credentials). Wiring and sizing:
tests/infra/test_manifest_wiring.py.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from tests.infra.manifests import (
    AUTH_SECRET, IMAGE_ROOT, INFRA, MANIFESTS, RAY_KINDS, ROOT, cluster_spec, containers, env_vars, groups,
    of_kind, pyproject, ray_pin, walk,
)
from tests.infra.strict_schema import core_schemas, load_crd_schemas, validate


@pytest.fixture(scope="module")
def schemas(shared_data) -> dict[str, dict]:
    crd_dir = shared_data / "k8s" / "kuberay-crds"
    assert crd_dir.is_dir(), f"KubeRay CRDs not found at {crd_dir}"
    crds = load_crd_schemas(crd_dir)
    return {**crds, **core_schemas(crds)}


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
    doc = of_kind(kind)[0]
    assert not validate(doc, schemas[kind])
    bad = _mutate(doc, path, delete=value == "DELETE") if value == "DELETE" else _mutate(doc, path, value)
    errors = validate(bad, schemas[kind])
    assert any(expected in e for e in errors), errors


def test_int_or_string_quantities_accept_both(schemas):
    doc = of_kind("RayJob")[0]
    for q in (4, "4", "500m", "1.5"):
        ok = _mutate(doc, f"{HEAD_POD}.containers.0.resources.limits.cpu", q)
        assert not validate(ok, schemas["RayJob"]), q


# --------------------------------------------------------------------------------------------- versions
def test_ray_version_and_images_agree_with_pyproject():
    ray = ray_pin()
    version = pyproject()["project"]["version"]
    image = re.compile(rf"^([^/]+/)*raykd:{re.escape(version)}-(gpu|cpu)$")  # any registry prefix (README)
    for doc in of_kind(*RAY_KINDS):
        spec = cluster_spec(doc)
        assert spec["rayVersion"] == ray, doc["metadata"]["name"]
        for _, group in groups(spec):
            for c in containers(group):
                assert image.match(c["image"]), c["image"]
    for doc in of_kind("Deployment"):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            assert image.match(c["image"]), c["image"]
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray}\n" in dockerfile
    assert re.search(rf"^ray=={re.escape(ray)}$", (INFRA / "docker" / "constraints.txt").read_text(), re.M)


def test_constraints_pin_versions_inside_pyproject_ranges():
    from packaging.requirements import Requirement

    project = pyproject()["project"]
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
    for doc in of_kind(*RAY_KINDS):
        auth = cluster_spec(doc).get("authOptions")
        assert auth == {"mode": "token", "secretName": AUTH_SECRET}, doc["metadata"]["name"]


def test_nothing_is_exposed_outside_the_cluster():
    for doc in of_kind(*RAY_KINDS):
        head = cluster_spec(doc)["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP" and not head.get("enableIngress"), doc["metadata"]["name"]
        assert doc["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for doc in of_kind("Service"):
        assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        assert not doc["spec"].get("externalIPs")
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert not kinds & {"Ingress", "Route", "Gateway", "HTTPRoute"}


CREDENTIAL_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|ACCESS_KEY|CREDENTIAL", re.I)


def test_no_credentials_in_manifests():
    for name, doc in MANIFESTS:
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{name}: a Secret with values in git"
        for path, env in env_vars(doc):
            if CREDENTIAL_NAME.search(env["name"]):
                assert "value" not in env, f"{name}{path}: {env['name']} is set literally; use valueFrom.secretKeyRef"
        for path, value in walk(doc):
            assert not (isinstance(value, str) and re.search(r"://[^/\s:@]+:[^/\s@]+@", value)), \
                f"{name}{path}: credentials in a URI"
    for doc in of_kind("RayJob"):
        env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "{}")) or {}
        assert not any(CREDENTIAL_NAME.search(k) for k in env.get("env_vars", {})), env


def test_head_does_no_work():
    """The head runs drivers, the GCS and the Serve controller; no Ray task, actor or GPU lands there."""
    for doc in of_kind(*RAY_KINDS):
        head = cluster_spec(doc)["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0" and head["rayStartParams"].get("num-gpus") == "0"
        for c in containers(head):
            assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
