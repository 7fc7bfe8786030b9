"""The manifests in infra/ loaded once, and small accessors shared by the infra tests."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
IMAGE_ROOT = "/home/ray/raykd"  # where infra/docker/Dockerfile puts the repository's jobs and configs
AUTH_SECRET = "raykd-ray-auth"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


def _load() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(INFRA.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                out.append((f"{f.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


MANIFESTS = _load()  # [("file:Kind/name", document)], every document of infra/*.yaml


def of_kind(*kinds: str) -> list[dict]:
    return [doc for _, doc in MANIFESTS if doc["kind"] in kinds]


def cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"],
            "RayService": lambda d: d["spec"]["rayClusterConfig"]}[doc["kind"]](doc)


def groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) of the head ('head') and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def containers(obj: dict) -> list[dict]:
    return obj["template"]["spec"]["containers"]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    (dep,) = [d for d in pyproject()["project"]["dependencies"] if re.match(r"ray\[", d)]
    return dep.split("==")[1]


def quantity(q: str | int) -> float:
    """CPU/GPU quantities: 4, "4", "500m"."""
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, node


def env_vars(node, path=""):
    """(path, entry) of every container `env` entry anywhere in a manifest."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield from ((f"{path}.env[{i}]", e) for i, e in enumerate(v))
            else:
                yield from env_vars(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from env_vars(v, f"{path}[{i}]")


def mlflow_deployment() -> dict:
    (dep,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "raykd-mlflow"]
    return dep


def mlflow_args() -> dict[str, str]:
    (c,) = mlflow_deployment()["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["mlflow", "server"]
    return dict(a.removeprefix("--").split("=", 1) if "=" in a else (a.removeprefix("--"), "") for a in c["command"][2:])
