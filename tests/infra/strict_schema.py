"""Strict OpenAPI v3 (Kubernetes structural schema) validation of manifests, offline.

    errors = validate(manifest_dict, schema_dict)        # [] when valid; else one line per problem

Kubernetes *prunes* fields that a CRD schema does not list, so a misspelt field is silently dropped by
the API server rather than rejected. Here every object whose schema lists `properties` is closed: a key
it does not list is an error, unless the schema says `x-kubernetes-preserve-unknown-fields` or gives
`additionalProperties` (a schema for the values of a map, or `true`). Also checked: `type`,
`x-kubernetes-int-or-string`, `anyOf`, `required` (a property with a `default` may be left out, as the
API server fills it first), `enum`, `pattern`, `minimum`/`maximum`, `minLength`/`maxLength`,
`minItems`/`maxItems`, `nullable`, the int32/int64 formats, and unique keys of
`x-kubernetes-list-type: map|set` lists. CEL rules (`x-kubernetes-validations`) cannot be evaluated
offline: setting a field that carries them is reported, so no manifest relies on an unchecked rule.

Schemas for core objects (Deployment, Service, PVC, Secret, NetworkPolicy) are assembled in
`core_schemas()` from the Kubernetes types that the KubeRay CRDs embed verbatim (PodTemplateSpec,
ServiceSpec, PersistentVolumeClaimSpec, LabelSelector, ObjectMeta fields), with the few top-level fields
of Deployment, Secret and NetworkPolicy written out here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def validate(value: Any, schema: dict, path: str = "") -> list[str]:
    errors: list[str] = []
    _check(value, schema, path or "<root>", errors)
    return errors


def _type_ok(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    raise ValueError(f"schema type {t!r} not handled")


def _check(value: Any, s: dict, path: str, errors: list[str]) -> None:
    if value is None:
        if not s.get("nullable"):
            errors.append(f"{path}: null is not allowed")
        return
    if "x-kubernetes-validations" in s:
        rules = "; ".join(r["rule"] for r in s["x-kubernetes-validations"])
        errors.append(f"{path}: carries CEL rules that are not evaluated offline ({rules}); avoid the field")
    if s.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, (int, str)) and not isinstance(value, bool)):
            errors.append(f"{path}: expected an integer or a string, got {type(value).__name__}")
            return
    elif "anyOf" in s:
        if all(validate(value, alt, path) for alt in s["anyOf"]):
            errors.append(f"{path}: matches none of {[a.get('type') for a in s['anyOf']]}")
            return
    t = s.get("type")
    if t and not s.get("x-kubernetes-int-or-string") and not _type_ok(value, t):
        errors.append(f"{path}: expected {t}, got {type(value).__name__} ({value!r})")
        return
    if "enum" in s and value not in s["enum"]:
        errors.append(f"{path}: {value!r} is not one of {s['enum']}")
    if isinstance(value, str):
        if "pattern" in s and not re.search(s["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {s['pattern']}")
        if len(value) > s.get("maxLength", len(value)) or len(value) < s.get("minLength", 0):
            errors.append(f"{path}: length {len(value)} outside [{s.get('minLength', 0)}, {s.get('maxLength')}]")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = INT_RANGES.get(s.get("format", ""), (None, None))
        lo = s.get("minimum", lo)
        hi = s.get("maximum", hi)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            errors.append(f"{path}: {value} outside [{lo}, {hi}]")
    if isinstance(value, dict):
        _check_object(value, s, path, errors)
    elif isinstance(value, list):
        _check_array(value, s, path, errors)


def _check_object(value: dict, s: dict, path: str, errors: list[str]) -> None:
    props = s.get("properties", {})
    addl = s.get("additionalProperties")
    for name in s.get("required", []):
        if name not in value and "default" not in props.get(name, {}):
            errors.append(f"{path}: missing required field '{name}'")
    for key, item in value.items():
        sub = f"{path}.{key}"
        if key in props:
            _check(item, props[key], sub, errors)
        elif isinstance(addl, dict):
            _check(item, addl, sub, errors)
        elif addl is True or s.get("x-kubernetes-preserve-unknown-fields"):
            continue
        else:
            known = ", ".join(sorted(props)) or "none"
            errors.append(f"{sub}: unknown field (the API server would prune it); known: {known}")


def _check_array(value: list, s: dict, path: str, errors: list[str]) -> None:
    if not s.get("minItems", 0) <= len(value) <= s.get("maxItems", len(value)):
        errors.append(f"{path}: {len(value)} items outside [{s.get('minItems', 0)}, {s.get('maxItems')}]")
    items = s.get("items", {})
    for i, item in enumerate(value):
        _check(item, items, f"{path}[{i}]", errors)
    list_type = s.get("x-kubernetes-list-type")
    if list_type == "set":
        seen = [repr(v) for v in value]
        if len(set(seen)) != len(seen):
            errors.append(f"{path}: duplicate entries in a set")
    elif list_type == "map":
        keys = s.get("x-kubernetes-list-map-keys", [])
        props = items.get("properties", {})
        tuples = [
            tuple(v.get(k, props.get(k, {}).get("default")) for k in keys) for v in value if isinstance(v, dict)
        ]
        if len(set(tuples)) != len(tuples):
            errors.append(f"{path}: duplicate entries for keys {keys}")


# --------------------------------------------------------------------------------------------- schemas
def load_crd_schemas(crd_dir: Path) -> dict[str, dict]:
    """kind -> openAPIV3Schema of its `v1` version, with `apiVersion`, `kind` and `metadata` closed."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on these 60k lines
    crds = [yaml.load(f.read_text(), Loader=loader) for f in sorted(crd_dir.glob("ray.io_*.yaml"))]
    out = {}
    for crd in crds:
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        out[crd["spec"]["names"]["kind"]] = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    meta = object_meta(out["RayCluster"])
    for crd in crds:
        kind = crd["spec"]["names"]["kind"]
        props = out[kind]["properties"]
        props["apiVersion"] = {"type": "string", "enum": [f"{crd['spec']['group']}/v1"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props["metadata"] = meta  # the CRDs leave it as a bare `type: object` (the API server checks it)
        out[kind]["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return out


def _find(schema: dict, dotted: str) -> dict:
    node = schema
    for part in dotted.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return copy.deepcopy(node)


def object_meta(raycluster_schema: dict) -> dict:
    """ObjectMeta as the CRDs embed it for pod templates (name, namespace, labels, annotations, finalizers).

    A top-level object also needs a name (a DNS label here: it becomes Service and Pod names).
    """
    meta = _find(raycluster_schema, "spec.headGroupSpec.template.metadata")
    meta["properties"]["name"] = {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}
    meta["required"] = ["name"]
    return meta


def core_schemas(crds: dict[str, dict]) -> dict[str, dict]:
    """Schemas of the core objects the manifests use, from the Kubernetes types the CRDs embed."""
    cluster = crds["RayCluster"]
    meta = cluster["properties"]["metadata"]
    pod_template = _find(cluster, "spec.headGroupSpec.template")
    label_selector = _find(
        cluster, "spec.headGroupSpec.template.spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution.[].labelSelector"
    )
    int_or_string = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}

    def top(api_version: str, kind: str, body: dict, required=("spec",)) -> dict:
        return {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string", "enum": [api_version]},
                "kind": {"type": "string", "enum": [kind]},
                "metadata": meta,
                **body,
            },
            "required": ["apiVersion", "kind", "metadata", *required],
        }

    service = _find(crds["RayService"], "spec.serveService")
    pvc = _find(cluster, "spec.headGroupSpec.template.spec.volumes.[].ephemeral.volumeClaimTemplate")
    deployment_spec = {
        "type": "object",
        "properties": {
            "replicas": {"type": "integer", "format": "int32", "minimum": 0},
            "selector": label_selector,
            "template": pod_template,
            "strategy": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["Recreate", "RollingUpdate"]},
                    "rollingUpdate": {
                        "type": "object",
                        "properties": {"maxSurge": int_or_string, "maxUnavailable": int_or_string},
                    },
                },
            },
            "revisionHistoryLimit": {"type": "integer", "format": "int32"},
            "minReadySeconds": {"type": "integer", "format": "int32"},
            "progressDeadlineSeconds": {"type": "integer", "format": "int32"},
            "paused": {"type": "boolean"},
        },
        "required": ["selector", "template"],
    }
    peer = {
        "type": "object",
        "properties": {
            "podSelector": label_selector,
            "namespaceSelector": label_selector,
            "ipBlock": {
                "type": "object",
                "properties": {"cidr": {"type": "string"}, "except": {"type": "array", "items": {"type": "string"}}},
                "required": ["cidr"],
            },
        },
    }
    np_port = {
        "type": "object",
        "properties": {
            "port": int_or_string,
            "endPort": {"type": "integer", "format": "int32"},
            "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]},
        },
    }
    network_policy_spec = {
        "type": "object",
        "properties": {
            "podSelector": label_selector,
            "policyTypes": {"type": "array", "items": {"type": "string", "enum": ["Ingress", "Egress"]}},
            "ingress": {"type": "array", "items": {"type": "object", "properties": {
                "from": {"type": "array", "items": peer}, "ports": {"type": "array", "items": np_port}}}},
            "egress": {"type": "array", "items": {"type": "object", "properties": {
                "to": {"type": "array", "items": peer}, "ports": {"type": "array", "items": np_port}}}},
        },
        "required": ["podSelector"],
    }
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "Deployment": top("apps/v1", "Deployment", {"spec": deployment_spec}),
        "Service": top("v1", "Service", {"spec": service["properties"]["spec"]}),
        "PersistentVolumeClaim": top("v1", "PersistentVolumeClaim", {"spec": pvc["properties"]["spec"]}),
        "Secret": top("v1", "Secret", {"type": {"type": "string"}, "immutable": {"type": "boolean"},
                                       "data": string_map, "stringData": string_map}, required=()),
        "NetworkPolicy": top("networking.k8s.io/v1", "NetworkPolicy", {"spec": network_policy_spec}),
    }
