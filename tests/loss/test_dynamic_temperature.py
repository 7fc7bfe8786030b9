"""Dynamic temperature: the rule against numpy references, its bounds, and its use in the loss."""

import math

import numpy as np
import pytest
import torch

from raykd.config import ConfigError, DistillConfig, load_config
from raykd.loss.distributions import log_distributions
from raykd.loss.kd import soft_loss
from raykd.loss.dynamic_temperature import (
    disagreement_difficulty,
    entropy_difficulty,
    temperature_summary,
    token_temperature,
)
from raykd.signals import signals_from_logprobs

torch.set_num_threads(1)  # tiny tensors: more threads only contend on the shared cores


def _logits(n=8, v=40, seed=0, scale=3.0):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * scale


def _topk(logits, k):
    lp = torch.log_softmax(logits.double(), -1).numpy()
    sig = signals_from_logprobs(lp, np.zeros(len(lp), np.int64), np.array([0, len(lp)]), k)
    return torch.as_tensor(sig.topk_ids), torch.as_tensor(sig.topk_logprobs), torch.as_tensor(sig.tail_logprob)


def test_entropy_rule_full_distribution_reference_and_extremes():
    t = _logits(seed=1)
    p = torch.softmax(t.double(), -1).numpy()
    h = -(p * np.log(p)).sum(-1)
    expected = 1 - h / math.log(40)
    got = entropy_difficulty(torch.log_softmax(t, -1))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    flat = torch.log_softmax(torch.zeros(2, 40), -1)
    one_hot = torch.log_softmax(torch.tensor([[0.0] + [-1e4] * 39]), -1)
    assert entropy_difficulty(flat).abs().max() < 1e-6  # uniform teacher: d = 0 -> t_min
    assert entropy_difficulty(one_hot).item() == pytest.approx(1.0)  # certain teacher: d = 1 -> t_max


def test_entropy_from_topk_uses_the_uniform_tail_estimate():
    t = _logits(seed=2, scale=1.0)
    ids, lp, tail = _topk(t, 5)
    m = tail.double().exp().numpy()
    p = lp.double().exp().numpy()
    h = -(p * np.log(p)).sum(-1) - m * np.log(m / 35)
    expected = 1 - h / math.log(40)
    np.testing.assert_allclose(entropy_difficulty(lp, tail, 40).numpy(), expected, rtol=1e-5)
    # A flat teacher is not "confident" just because its tail bucket holds most of the mass.
    ids, lp, tail = _topk(torch.zeros(3, 40), 5)
    assert entropy_difficulty(lp, tail, 40).abs().max() < 1e-5
    # k = V: the exact entropy.
    ids, lp, tail = _topk(t, 40)
    np.testing.assert_allclose(entropy_difficulty(lp, tail, 40).numpy(),
                               entropy_difficulty(torch.log_softmax(t, -1)).numpy(), atol=1e-5)


def test_disagreement_rule_is_tvd():
    t, s = _logits(seed=3), _logits(seed=4)
    tl, sl = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    expected = 0.5 * np.abs(np.exp(tl.double().numpy()) - np.exp(sl.double().numpy())).sum(-1)
    np.testing.assert_allclose(disagreement_difficulty(tl, sl).numpy(), expected, rtol=1e-5)
    assert disagreement_difficulty(tl, tl).abs().max() < 1e-6


def test_temperature_bounds_and_mapping():
    d = torch.tensor([0.0, 0.25, 1.0, 1.5, -0.1])
    T = token_temperature(d, 1.0, 3.0)
    assert T.tolist() == pytest.approx([1.0, 1.5, 3.0, 3.0, 1.0])
    with pytest.raises(ValueError):
        token_temperature(d, 3.0, 1.0)
    for rule_d in (entropy_difficulty(torch.log_softmax(_logits(seed=5), -1)),
                   disagreement_difficulty(torch.log_softmax(_logits(seed=5), -1), torch.log_softmax(_logits(seed=6), -1))):
        T = token_temperature(rule_d, 0.5, 4.0)
        assert (T >= 0.5).all() and (T <= 4.0).all()


def test_per_token_temperature_in_the_loss_scales_each_row_by_its_T_squared():
    s, t = _logits(seed=7), _logits(seed=8)
    ids, lp, tail = _topk(t, 6)
    T = token_temperature(entropy_difficulty(lp, tail, 40), 1.0, 4.0)
    assert T.std() > 0  # the rows really get different temperatures
    got = soft_loss(s, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail, temperature=T)
    rows = [soft_loss(s[r:r + 1], topk_ids=ids[r:r + 1], topk_logprobs=lp[r:r + 1], tail_logprob=tail[r:r + 1],
                      temperature=float(T[r])) for r in range(len(s))]
    assert got.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-5)
    # The temperature is a detached target-shaping choice: no gradient reaches it.
    s2 = s.clone().requires_grad_(True)
    tl, sl = log_distributions(s2, topk_ids=ids, topk_logprobs=lp, tail_logprob=tail)
    T2 = token_temperature(disagreement_difficulty(tl, sl), 1.0, 4.0)
    assert not T2.requires_grad


def test_summary_percentiles():
    values = np.arange(101, dtype=np.float64)
    summary = temperature_summary(values, "t")
    assert summary == pytest.approx({"t_mean": 50.0, "t_p05": 5.0, "t_p50": 50.0, "t_p95": 95.0})
    assert temperature_summary(np.array([])) == {}


def test_config_from_yaml_and_errors():
    cfg = load_config(DistillConfig, None, ["loss.dynamic_temperature.rule=disagreement",
                                            "loss.dynamic_temperature.min_temperature=0.5"])
    assert cfg.loss.dynamic_temperature.rule == "disagreement"
    for overrides, msg in (
        (["loss.dynamic_temperature.rule=entropy", "loss.dynamic_temperature.min_temperature=5"], "min_temperature 5"),
        (["loss.dynamic_temperature.rule=sharpness"], "dynamic_temperature.rule"),
        (["loss.dynamic_temperature.rule=entropy", "loss.temperature_schedule.kind=linear",
          "loss.temperature_schedule.end=1"], "cannot be combined"),
    ):
        with pytest.raises(ConfigError, match=msg):
            load_config(DistillConfig, None, overrides)
