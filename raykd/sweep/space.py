"""The Tune side of a sweep's search space (raykd/config/sweep.py holds the space as config).

    param_space = tune_space(sweep)        # Tune domains; grid: grid_search lists
    mutations = pbt_mutations(sweep)       # PopulationBasedTraining's hyperparam_mutations
    explore = partial(clip_to_space, bounds=range_bounds(sweep))   # keeps perturbed values in the space
"""

from __future__ import annotations

from typing import Any

from raykd.config.sweep import SweepConfig


def tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """param_space for the Tuner: Tune domains (grid: grid_search lists); sub-config choices as indices."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dim in sweep.space.items():
        values = list(range(len(dim.choice))) if dim.encoded else dim.choice
        if sweep.search == "grid":
            out[key] = tune.grid_search(values)
        elif dim.kind == "choice":
            out[key] = tune.choice(values)
        elif dim.kind == "uniform":
            out[key] = tune.uniform(*dim.uniform)
        elif dim.kind == "loguniform":
            out[key] = tune.loguniform(*dim.loguniform)
        else:
            out[key] = tune.randint(dim.randint[0], dim.randint[1] + 1)  # Tune's upper bound is exclusive
    return out


def pbt_mutations(sweep: SweepConfig) -> dict[str, Any]:
    """hyperparam_mutations: lists for choices (PBT shifts to a neighbour), domains for ranges (x0.8 / x1.2)."""
    space = tune_space(sweep)
    out = {}
    for key in sweep.pbt.mutate:
        dim = sweep.space[key]
        out[key] = list(range(len(dim.choice))) if dim.encoded else (dim.choice if dim.kind == "choice" else space[key])
    return out


def clip_to_space(config: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """PBT's custom_explore_fn: keep perturbed values inside the space (x1.2 of alpha=0.9 is not an alpha)."""
    for key, (lo, hi) in bounds.items():
        if key in config:
            config[key] = type(lo)(min(max(config[key], lo), hi))
    return config


def range_bounds(sweep: SweepConfig) -> dict[str, tuple[float, float]]:
    return {k: tuple(getattr(d, d.kind)) for k, d in sweep.space.items() if d.kind != "choice"}
