"""`signals.loss_chunk_size: auto` (the default): chunked where the loss is row-wise, full logits elsewhere."""

from __future__ import annotations

import pytest

from raykd.config import DistillConfig
from raykd.config.distill import AUTO_LOSS_CHUNK, loss_chunk


@pytest.mark.parametrize("overrides, expected", [
    ({}, AUTO_LOSS_CHUNK),
    ({"loss": {"divergence": "jsd", "beta": 0.3, "tail": "renormalize"}}, AUTO_LOSS_CHUNK),
    ({"loss": {"on_policy": {"fraction": 0.0}}}, AUTO_LOSS_CHUNK),  # off: the same path as without it
    ({"loss": {"hidden": {"weight": 1.0, "layer_map": {1: 2}}}}, None),
    ({"loss": {"attention": {"weight": 1.0, "layer_map": {1: 2}}}}, None),
    ({"loss": {"adversarial": {"weight": 0.1}}}, None),
    ({"loss": {"on_policy": {"fraction": 0.5}}}, None),
    ({"signals": {"loss_chunk_size": None}}, None),
    ({"signals": {"loss_chunk_size": 64}}, 64),
])
def test_auto_resolves_to_chunks_where_the_loss_is_row_wise(overrides, expected):
    assert loss_chunk(DistillConfig.model_validate(overrides)) == expected


def test_an_explicit_chunk_size_is_still_refused_with_feature_terms_and_on_policy():
    with pytest.raises(ValueError, match="signals.loss_chunk_size chunks the row-wise terms only"):
        DistillConfig.model_validate({"signals": {"loss_chunk_size": 64}, "loss": {"hidden": {"weight": 1.0, "layer_map": {1: 2}}}})
    with pytest.raises(ValueError, match="loss.on_policy with signals.loss_chunk_size"):
        DistillConfig.model_validate({"signals": {"loss_chunk_size": 64}, "loss": {"on_policy": {"fraction": 0.5}}})
    with pytest.raises(ValueError):
        DistillConfig.model_validate({"signals": {"loss_chunk_size": 0}})
