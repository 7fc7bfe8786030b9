"""The shipped sweep examples, and a writer of variants of them, for the sweep tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raykd.config import ConfigError
from raykd.config.sweep import load_sweep


ROOT = Path(__file__).resolve().parents[2]


ASHA_YAML = ROOT / "jobs" / "configs" / "sweep_asha.yaml"


PBT_YAML = ROOT / "jobs" / "configs" / "sweep_pbt.yaml"


def write_sweep(tmp_path: Path, **changes) -> Path:
    """The ASHA example with top-level keys replaced (None deletes the key)."""
    tree = yaml.safe_load(ASHA_YAML.read_text())
    for key, value in changes.items():
        if value is None:
            tree.pop(key, None)
        else:
            tree[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_sweep(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg
