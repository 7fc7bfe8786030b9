import math

import numpy as np
import pytest

from raykd.compress.lowrank import factorise, ranks_for, save_lowrank
from raykd.compress.measure import Measurement, load_variant, measure_quality, measure_speed, teacher_top1
from raykd.compress.prune import magnitude_prune, make_permanent
from raykd.config.compress import SpeedConfig
from raykd.models import count_parameters
from tests.compress.tiny import tiny_llama, tokens


def test_one_harness_for_plain_sparse_and_lowrank_dirs(tmp_path):
    teacher = tiny_llama()
    teacher.save_pretrained(tmp_path / "t")
    sparse = tiny_llama()
    magnitude_prune(sparse, 0.5)
    make_permanent(sparse)
    sparse.save_pretrained(tmp_path / "p")
    lr = tiny_llama()
    factorise(lr, ranks_for(lr, ratio=4.0))
    save_lowrank(lr, tmp_path / "lr")

    val = tokens(6, 16, seed=3).numpy()
    top1 = teacher_top1(load_variant(tmp_path / "t"), val)
    assert top1.shape == (6 * 15,)
    t = measure_quality("teacher", "teacher", tmp_path / "t", val, None, [], None)
    p = measure_quality("prune-50", "magnitude_prune", tmp_path / "p", val, top1, [], None)
    l = measure_quality("lowrank-4x", "low_rank", tmp_path / "lr", val, top1, [], None)
    self_agree = measure_quality("teacher again", "teacher", tmp_path / "t", val, top1, [], None)
    assert self_agree.top1_agreement == 1.0 and self_agree.heldout_loss == pytest.approx(t.heldout_loss)
    assert t.params == p.params == count_parameters(teacher) and p.nonzero_params < p.params
    assert l.params == count_parameters(lr) < t.params and l.bytes_on_disk < t.bytes_on_disk
    assert t.perplexity == pytest.approx(math.exp(t.heldout_loss))
    ret = p.retention(t)
    assert ret["heldout_loss"] == pytest.approx(t.heldout_loss / p.heldout_loss)
    assert ret["top1_agreement"] == p.top1_agreement
    assert Measurement.from_json(p.to_json()) == p


def test_speed_harness_reports_every_batch():
    model = tiny_llama()
    out = measure_speed(model, SpeedConfig(prompt_tokens=8, gen_tokens=4, batch_sizes=[1, 3], repeats=1), 96)
    assert set(out) == {"prompt_tps_b1", "gen_tps_b1", "prompt_tps_b3", "gen_tps_b3"}
    assert all(np.isfinite(v) and v > 0 for v in out.values())
