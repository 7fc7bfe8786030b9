"""The driver -> worker contract: a typed LoopConfig crosses Ray Train as a plain dict and comes back whole."""

import dataclasses

import pytest

from raykd.config import DistillConfig, load_config
from raykd.train.loop_config import LoopConfig


def test_round_trip_through_the_train_loop_config():
    cfg = load_config(DistillConfig, None, ["loss.alpha=0.3", "train.max_steps=7"])
    loop = LoopConfig(cfg, student_ref="student", run_id="r1", tracking_uri="sqlite:///m.db",
                      data_windows=((0, 4), (4, 7)))
    sent = loop.to_train_loop_config()
    assert isinstance(sent["cfg"], dict)  # Ray Train records the loop config as plain data
    assert LoopConfig.from_train_loop_config(sent) == loop
    sent["data_windows"] = [[0, 4], [4, 7]]  # as it comes back from Ray Train's JSON-like record
    assert LoopConfig.from_train_loop_config(sent) == loop
    baseline = dataclasses.replace(loop, alpha_only_hard=True, run_id="r2")
    assert LoopConfig.from_train_loop_config(baseline.to_train_loop_config()).alpha_only_hard


def test_a_key_the_worker_does_not_know_fails_at_once():
    sent = LoopConfig(DistillConfig(), student_ref=2).to_train_loop_config()
    with pytest.raises(TypeError):
        LoopConfig.from_train_loop_config({**sent, "alpha_only_hardd": True})
    with pytest.raises(TypeError):
        LoopConfig.from_train_loop_config({k: v for k, v in sent.items() if k != "student_ref"})
