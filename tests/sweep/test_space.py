"""The Tune side of the search space: domains, sub-config choices as indices, PBT mutations kept in bounds."""

from __future__ import annotations

from raykd.config.sweep import SweepConfig, load_sweep
from raykd.sweep.space import clip_to_space, pbt_mutations, range_bounds, tune_space
from tests.sweep.examples import ASHA_YAML, PBT_YAML


def test_pbt_perturbations_are_clipped_into_the_space() -> None:
    sweep, _ = load_sweep(PBT_YAML)
    bounds = range_bounds(sweep)
    lo, hi = bounds["loss.temperature"]
    assert clip_to_space({"loss.temperature": hi * 1.2, "x": 7}, bounds) == {"loss.temperature": hi, "x": 7}
    assert clip_to_space({"loss.temperature": lo * 0.8}, bounds) == {"loss.temperature": lo}


def test_tune_space_and_mutations() -> None:
    from ray import tune

    sweep, _ = load_sweep(ASHA_YAML)
    space = tune_space(sweep)
    assert space["loss"].categories == [0, 1, 2, 3]  # sub-configs as indices (Optuna takes scalars only)
    assert space["loss.alpha"].categories == [0.3, 0.5, 0.7, 0.9]
    assert space["train.lr"].lower == 1e-3 and space["train.lr"].upper == 1e-2
    grid = SweepConfig.model_validate({**sweep.model_dump(), "search": "grid",
                                       "space": {"loss.top_k": {"choice": [8, 20]}, "loss": sweep.space["loss"].model_dump()}})
    assert tune_space(grid)["loss.top_k"] == tune.grid_search([8, 20])
    pbt, _ = load_sweep(PBT_YAML)
    muts = pbt_mutations(pbt)
    assert set(muts) == set(pbt.pbt.mutate)
