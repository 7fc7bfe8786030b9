"""DistilBERT masking: proportions, specials never selected, at least one position per sequence."""

import numpy as np
import pytest

from raykd.mlm.masking import distilbert_mask


def test_distilbert_masking_proportions_and_specials():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, (400, 64))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    inputs, selected = distilbert_mask(ids, rng, mask_id=4, vocab_size=1000, special_ids=[0, 1, 2, 3, 4])
    assert not selected[:, 0].any() and not selected[:, -1].any()  # specials are never selected
    assert selected.mean() == pytest.approx(0.15 * 62 / 64, abs=0.01)
    chosen = inputs[selected]
    original = ids[selected]
    masked = (chosen == 4).mean()
    unchanged = (chosen == original).mean()
    assert masked == pytest.approx(0.8, abs=0.02)
    assert unchanged == pytest.approx(0.1 + 0.1 / 1000, abs=0.02)  # 10 % kept (+ random draws of the same id)
    assert (inputs[~selected] == ids[~selected]).all()  # nothing else changes
    # every sequence gets at least one selected position, even at a tiny rate
    _, few = distilbert_mask(ids[:50], rng, mask_id=4, vocab_size=1000, special_ids=[2, 3], mask_prob=1e-6)
    assert (few.sum(1) >= 1).all()
