"""What every raykd config shares: the strict base model, the one-line error, YAML + key=value loading.

    cfg = load_config(DistillConfig, "jobs/configs/quickstart.yaml", ["loss.alpha=0.7"])
    cfg = validate(TeacherConfig, {"backend": "vllm"}, "serve args")     # a tree from anywhere else

Overrides are `dotted.key=value`; the value is parsed as YAML (`3`, `0.5`, `true`, `[1, 2]`, `null`).
Every validation error becomes one `ConfigError` line that names the source and the first bad field
(`validate`): the CLI prints it as `raykd: error: <line>` and exits 2, before any cluster starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the field or file."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


M = TypeVar("M", bound=BaseModel)


def default_cache_dir() -> Path:
    """Where built teachers, captured signals and other reusable artifacts live (`RAYKD_CACHE`)."""
    return Path(os.environ.get("RAYKD_CACHE", Path.home() / ".cache" / "raykd")).expanduser()


def validate(model: type[M], tree: Any, source: str) -> M:
    """`model.model_validate(tree)`, or a ConfigError line `<source>: <field>: <problem> (got <value>)`."""
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_first_error(e, source)) from None


def _first_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "<root>"
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{loc}'"
    msg = e["msg"].removeprefix("Value error, ")
    if loc == "<root>":  # whole-config checks name their fields in the message
        return f"{source}: {msg}"
    shown = e["type"] != "missing" and not isinstance(e.get("input"), dict)
    return f"{source}: {loc}: {msg}" + (f" (got {e['input']!r})" if shown else "")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_tree(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The mapping in the YAML file at `path` ({} for None) and the source name errors should cite."""
    if path is None:
        return {}, "config"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return loaded or {}, str(p)


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read YAML at `path` (or start from defaults), apply `key=value` overrides, validate strictly."""
    tree, source = read_yaml_tree(path)
    return validate(model, deep_merge(tree, parse_overrides(overrides or [])), source)


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, str]:
    """Resolved config as flat `a.b.c -> str` pairs (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in cfg.model_dump().items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict[str, str], key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = str(value)
