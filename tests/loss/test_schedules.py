"""Schedules of temperature and alpha: per-step values against their formulas, bounds, YAML reachability."""

import math

import pytest

from raykd.config import ConfigError, DistillConfig, load_config
from raykd.config.loss import schedule_bounds
from raykd.loss.schedules import Schedule, schedule_value


def test_constant_is_the_base_value_every_step():
    s = Schedule(total_steps=50, start=2.0)
    assert s.is_constant and all(s(i) == 2.0 for i in range(50))


def test_linear_and_cosine_hit_start_and_end_exactly():
    for kind in ("linear", "cosine"):
        s = Schedule(total_steps=11, start=4.0, kind=kind, end=1.0)
        assert s(0) == pytest.approx(4.0) and s(10) == pytest.approx(1.0)
        values = [s(i) for i in range(11)]
        assert values == sorted(values, reverse=True)  # monotone
    lin = Schedule(total_steps=11, start=4.0, kind="linear", end=1.0)
    assert lin(5) == pytest.approx(2.5)
    cos = Schedule(total_steps=11, start=4.0, kind="cosine", end=1.0)
    for i in range(11):
        assert cos(i) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi * i / 10)))
    assert lin(100) == pytest.approx(1.0)  # past the end: clamped


def test_step_multiplies_at_milestones():
    s = Schedule(total_steps=100, start=0.8, kind="step", milestones=(10, 30), gamma=0.5)
    assert [s(i) for i in (0, 9, 10, 29, 30, 99)] == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.2])


def test_warmup_ramps_linearly_then_the_shape_starts():
    s = Schedule(total_steps=21, start=0.6, kind="linear", end=0.2, warmup_steps=10, warmup_from=0.0)
    assert [s(i) for i in (0, 5, 10)] == pytest.approx([0.0, 0.3, 0.6])
    assert s(20) == pytest.approx(0.2) and s(15) == pytest.approx(0.4)
    assert not s.is_constant
    with pytest.raises(ValueError, match="warmup_from"):
        schedule_value(0, 10, start=1.0, warmup_steps=3)


def test_bounds_cover_every_value():
    cases = [
        dict(kind="linear", start=2.0, end=5.0, warmup_steps=5, warmup_from=1.0),
        dict(kind="cosine", start=4.0, end=0.5),
        dict(kind="step", start=1.0, milestones=(3, 6), gamma=0.1),
        dict(kind="step", start=0.5, milestones=(3, 6), gamma=1.5),
    ]
    for c in cases:
        lo, hi = schedule_bounds(**c)
        values = [schedule_value(i, 20, **c) for i in range(20)]
        assert lo <= min(values) + 1e-12 and max(values) <= hi + 1e-12
        assert min(values) == pytest.approx(lo) and max(values) == pytest.approx(hi)


def test_reachable_from_yaml_and_validated_up_front(tmp_path):
    yaml_text = """
loss:
  temperature: 3.0
  alpha: 0.5
  temperature_schedule: {kind: cosine, end: 1.0}
  alpha_schedule: {kind: linear, start: 0.2, end: 0.8, warmup_steps: 10, warmup_from: 0.0}
train: {max_steps: 100}
"""
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    cfg = load_config(DistillConfig, p)
    t = Schedule.from_config(cfg.loss.temperature_schedule, cfg.loss.temperature, cfg.train.max_steps)
    a = Schedule.from_config(cfg.loss.alpha_schedule, cfg.loss.alpha, cfg.train.max_steps)
    assert t(0) == 3.0 and t(99) == pytest.approx(1.0)  # start: null -> the base value
    assert a(0) == 0.0 and a(10) == pytest.approx(0.2) and a(99) == pytest.approx(0.8)

    bad = {
        "loss.alpha_schedule.kind=linear loss.alpha_schedule.end=1.5": "alpha_schedule takes values in",
        "loss.temperature_schedule.kind=step loss.temperature_schedule.milestones=[5] "
        "loss.temperature_schedule.gamma=100": "temperature_schedule takes values",
        "loss.alpha_schedule.kind=cosine": "needs end",
        "loss.alpha_schedule.kind=step": "needs milestones",
        "loss.alpha_schedule.warmup_steps=5": "warmup_from is required",
        "loss.temperature_schedule.kind=fancy": "temperature_schedule.kind",
    }
    for overrides, message in bad.items():
        with pytest.raises(ConfigError, match=message) as e:
            load_config(DistillConfig, None, overrides.split())
        assert "\n" not in str(e.value)
