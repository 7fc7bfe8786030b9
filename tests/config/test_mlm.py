"""`raykd mlm-distill`'s config: the methods MLM does not wire are rejected in one line."""

from pathlib import Path

import pytest

from raykd.config import ConfigError, load_config
from raykd.config.mlm import MLMDistillConfig


ROOT = Path(__file__).resolve().parents[2]


def test_config_errors():
    for overrides, msg in ((["loss.hidden.weight=1", "loss.hidden.layer_map={1: 1}"], "not available for masked-LM"),
                           (["masking.mask_token=0.95"], "mask_token \\+ random_token"),
                           (["student.layer_selection=[0, 1, 2]"], "lists 3 layers"),
                           (["loss.beta=2"], "loss.beta")):
        with pytest.raises(ConfigError, match=msg):
            load_config(MLMDistillConfig, None, overrides)
    assert load_config(MLMDistillConfig, ROOT / "jobs" / "configs" / "mlm.yaml").student.num_layers == 2
