"""`raykd sweep` configuration: a base distillation config plus a search space, checked before any trial.

    sweep, base = load_sweep("jobs/configs/sweep_asha.yaml", ["num_samples=8"])
    cfg = trial_config(base, sweep, {"loss.temperature": 2.5, "loss.alpha": 0.7})   # one trial's DistillConfig

A sweep YAML names a base `DistillConfig` (a path, relative to the sweep file, or inline) and a search space
of dotted keys into it, each with one distribution:

    space:
      loss.temperature: {uniform: [1.0, 4.0]}          # float in [lo, hi]
      train.lr:         {loguniform: [1.0e-3, 1.0e-2]}  # float, log-uniform (lo > 0)
      loss.top_k:       {randint: [5, 40]}             # int, both ends included
      loss.divergence:  {choice: [forward_kl, jsd]}    # any values; a mapping is merged into the sub-config:
      loss.temperature_schedule: {choice: [{kind: constant}, {kind: cosine, start: 4.0, end: 1.0}]}
      loss: {choice: [{temperature_schedule: {kind: linear, end: 1.0}}, {dynamic_temperature: {rule: entropy}}]}

The last form sweeps settings that exclude each other (dynamic temperature cannot be combined with a
temperature schedule) as one dimension; outer keys are applied first, so `loss.temperature` can still be
swept beside `loss`, as long as no choice of `loss` sets it.

Only `loss.*`, `train.*` (learning rate, warm-up, batch size, ...) and the ensemble weights of several teachers
(`teachers.ensemble.<name>`, raykd/config/teachers.py) can be swept: every trial shares one
teacher, one tokenised dataset and one student initialisation, and reports on the same step axis.
Everything that can be wrong is caught here, with one line naming the key: an empty space, a key the base
config does not have, a value (or a combination of values) the base config rejects, a metric no trial
reports, a scheduler the search algorithm cannot drive. Nothing here imports Ray (the Tune side of the
space is raykd/sweep/space.py).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from raykd.config.base import ConfigError, StrictModel, deep_merge, parse_overrides, read_yaml_tree, validate
from raykd.config.distill import DistillConfig

# What a trial reports to Tune at every checkpoint (raykd/train/loop.py, raykd/sweep/trial.py). `val_loss` is
# the student's mean next-token cross-entropy on the first `eval.max_sequences` held-out sequences: the
# same number `raykd distill` prints as the student's held-out loss, so a sweep optimises what distill shows.
REPORTED_METRICS = {
    "val_loss": "held-out next-token cross-entropy of the student (lower is better)",
    "loss": "training loss of the step (mixes soft and hard terms: not comparable across alpha/T)",
    "loss_hard": "training cross-entropy with the data's next tokens at the step",
    "loss_soft": "training soft (distillation) term at the step",
    "step": "optimizer steps done",
}
SWEEPABLE_PREFIXES = ("loss.", "train.")
# Keys that set resources or the shared step axis: one value for every trial.
FIXED_KEYS = ("train.num_workers", "train.use_gpu", "train.cpus_per_worker", "train.torch_threads",
              "train.storage_path", "train.max_steps", "train.checkpoint_every")
MAX_COMBINATIONS = 4096  # exhaustive validity check of the space up to this many corner combinations


class Dimension(StrictModel):
    """One searched value: exactly one of the distributions."""

    uniform: tuple[float, float] | None = Field(None, description="Float uniform in [lo, hi].")
    loguniform: tuple[float, float] | None = Field(None, description="Float log-uniform in [lo, hi], lo > 0.")
    randint: tuple[int, int] | None = Field(None, description="Integer uniform in [lo, hi], both included.")
    choice: list[Any] | None = Field(None, description="One of these values (grid search: all of them).")

    @model_validator(mode="after")
    def _one(self) -> "Dimension":
        given = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, randint, choice (got {given or 'none'})")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice is empty")
            if len({json.dumps(v, sort_keys=True) for v in self.choice}) != len(self.choice):
                raise ValueError(f"choice has repeated values: {self.choice}")
        else:
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: lower bound {lo} must be < upper bound {hi}")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: lower bound {lo} must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k) is not None)

    @property
    def encoded(self) -> bool:
        """Choices that are not plain scalars (sub-configs, lists) go to Tune as indices (Optuna needs scalars)."""
        return self.kind == "choice" and not all(v is None or isinstance(v, (bool, int, float, str)) for v in self.choice)

    def corners(self) -> list[Any]:
        """Values that, if valid, make every value of the dimension valid (bounds; every choice)."""
        return list(self.choice) if self.kind == "choice" else list(getattr(self, self.kind))

    def decode(self, value: Any) -> Any:
        """The config value for what Tune sampled: clipped into the bounds (PBT multiplies values by 0.8/1.2)."""
        if self.encoded:
            return self.choice[int(value)]
        if self.kind == "choice":
            return value
        lo, hi = getattr(self, self.kind)
        return type(lo)(min(max(value, lo), hi))


class AshaConfig(StrictModel):
    """Asynchronous successive halving: stop the worst trials at rungs of grace_period * rf^k steps."""

    grace_period: int = Field(20, ge=1, description="Steps every trial runs before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="Keep 1/reduction_factor of the trials at each rung.")


class PbtConfig(StrictModel):
    """Population based training: at every interval the worst trials copy the best ones' checkpoint
    (student weights, optimizer, step) and continue with mutated values of `mutate`."""

    perturbation_interval: int = Field(20, ge=1, description="Steps between exploit/explore decisions.")
    mutate: list[str] = Field(
        default_factory=lambda: ["loss.temperature", "loss.alpha"],
        description="Space keys mutated during training (the schedule PBT discovers is theirs).",
    )
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="Bottom fraction that exploits the top one.")
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="Chance to resample from the space instead of perturbing by 0.8 / 1.2."
    )
    synch: bool = Field(
        False, description="Wait for the whole population at each interval (needed when it does not run at once)."
    )


class SweepConfig(StrictModel):
    """`raykd sweep`: many distillation trials (Ray Tune) against one shared teacher, tracked in MLflow."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Names the Tune experiment, the MLflow parent "
                      "run and the output directory <base.output_dir>/<name>/.")
    base: str | dict[str, Any] = Field(
        ..., description="The DistillConfig every trial starts from: a YAML path (relative to this file) or inline."
    )
    base_overrides: list[str] = Field(default_factory=list, description="key=value overrides of the base config.")
    space: dict[str, Dimension] = Field(default_factory=dict, description="Dotted base-config key -> distribution.")
    search: Literal["random", "grid", "optuna"] = Field(
        "random", description="random: independent samples; grid: every combination of `choice` values "
        "(num_samples times); optuna: TPE, each trial informed by the finished ones."
    )
    scheduler: Literal["fifo", "asha", "pbt"] = Field(
        "asha", description="fifo: run every trial to the end; asha: stop bad trials early; pbt: population based "
        "training, mutating `pbt.mutate` during training."
    )
    num_samples: int = Field(6, ge=1, description="Trials (grid: repeats of the grid; pbt: population size).")
    metric: str = Field("val_loss", description="Reported metric that ranks trials (see REPORTED_METRICS).")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher `metric` is better.")
    max_concurrent_trials: int = Field(2, ge=1, description="Trials running at once; each takes train.num_workers workers.")
    seed: int | None = Field(0, description="Seed of the search algorithm's sampling; null: unseeded.")
    asha: AshaConfig = Field(default_factory=AshaConfig)
    pbt: PbtConfig = Field(default_factory=PbtConfig)
    teacher_per_trial: bool = Field(
        False, description="Deploy a private teacher in every trial instead of sharing one (costs one teacher per "
        "running trial; for comparison, see benchmarks/sweep_teacher_memory.py)."
    )
    storage_path: str | None = Field(None, description="Tune experiments root; default <RAYKD_CACHE>/sweeps.")
    export_path: str | None = Field(None, description="Best config YAML; default <base.output_dir>/<name>/best.yaml.")


# --------------------------------------------------------------------------------------------- loading
def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, DistillConfig]:
    """Read and check a sweep YAML and its base config: everything that needs no cluster and no model."""
    p = Path(path)
    tree, _ = read_yaml_tree(p)
    sweep = validate(SweepConfig, deep_merge(tree, parse_overrides(overrides or [])), str(p))
    base = resolve_base(sweep, p.parent)
    check_sweep(sweep, base)
    return sweep, base


def resolve_base(sweep: SweepConfig, root: Path) -> DistillConfig:
    if isinstance(sweep.base, str):
        base_path = Path(sweep.base) if Path(sweep.base).is_absolute() else root / sweep.base
        if not base_path.is_file():
            raise ConfigError(f"base: config file not found: {base_path}")
        tree, source = read_yaml_tree(base_path)
    else:
        tree, source = sweep.base, "base"
    return validate(DistillConfig, deep_merge(tree, parse_overrides(sweep.base_overrides)), source)


# --------------------------------------------------------------------------------------------- checks
def check_sweep(sweep: SweepConfig, base: DistillConfig) -> None:
    """Raise ConfigError (one line) for anything that would make trials fail or the sweep meaningless."""
    if not sweep.space:
        raise ConfigError("space is empty: nothing to sweep (e.g. space: {loss.temperature: {uniform: [1, 4]}})")
    if sweep.metric not in REPORTED_METRICS:
        raise ConfigError(f"metric '{sweep.metric}' is not reported by trials; they report: {', '.join(REPORTED_METRICS)}")
    if base.loss.on_policy.engine == "vllm" or any(k.startswith("loss.on_policy.engine") for k in sweep.space):
        raise ConfigError("loss.on_policy.engine: vllm is not supported in sweeps (trials share no student rollout "
                          "deployment); use engine hf")
    keys = sorted(sweep.space)
    if base.teachers is not None and len(base.teachers.apps) > 1 and sweep.teacher_per_trial:
        raise ConfigError("teacher_per_trial: not with several teachers (trials share the teachers' apps)")
    for key in keys:
        _check_key(key, base)
        for value in sweep.space[key].corners():
            for inner in _flat_keys(key, value):
                if inner != key and inner in FIXED_KEYS:
                    raise ConfigError(f"space.{key}: a choice sets '{inner}', which cannot be swept (it sets "
                                      "resources or the step axis every trial shares)")
    for a in keys:  # an outer key's sub-config choices and an inner key must not set the same field
        for b in keys:
            if b.startswith(a + "."):
                for value in sweep.space[a].corners():
                    if any(k == b or k.startswith(b + ".") or b.startswith(k + ".") for k in _flat_keys(a, value)):
                        raise ConfigError(f"space: '{b}' is also set by a choice of '{a}'; sweep it in one place")
    for key in keys:
        for value in sweep.space[key].corners():
            with_values(base, {key: value}, f"space.{key}")
    _check_combinations(sweep, base)

    tc = base.train
    if sweep.search == "grid":
        bad = [k for k in keys if sweep.space[k].kind != "choice"]
        if bad:
            raise ConfigError(f"search 'grid' needs finite dimensions: space.{bad[0]} is {sweep.space[bad[0]].kind}; "
                              "use choice, or search random/optuna")
    if sweep.scheduler == "pbt":
        if sweep.search != "random":
            raise ConfigError(f"scheduler 'pbt' cannot be driven by search '{sweep.search}': PBT explores by mutating "
                              "running trials; use search: random")
        if not sweep.pbt.mutate:
            raise ConfigError("pbt.mutate is empty: PBT needs at least one key to mutate")
        missing = [k for k in sweep.pbt.mutate if k not in sweep.space]
        if missing:
            raise ConfigError(f"pbt.mutate: '{missing[0]}' is not a key of space (mutations are drawn from it)")
        if sweep.num_samples < 2:
            raise ConfigError("scheduler 'pbt' needs a population: num_samples >= 2")
        if sweep.max_concurrent_trials < sweep.num_samples and not sweep.pbt.synch:
            raise ConfigError(f"scheduler 'pbt': max_concurrent_trials={sweep.max_concurrent_trials} < population "
                              f"num_samples={sweep.num_samples}; run the population at once or set pbt.synch: true")
        _check_interval("pbt.perturbation_interval", sweep.pbt.perturbation_interval, tc.checkpoint_every, tc.max_steps)
    if sweep.scheduler == "asha":
        _check_interval("asha.grace_period", sweep.asha.grace_period, tc.checkpoint_every, tc.max_steps)


def _check_interval(field: str, value: int, every: int, max_steps: int) -> None:
    """Trials report every train.checkpoint_every steps: a decision point between reports would never be seen."""
    if value < every or value % every:
        raise ConfigError(f"{field}={value} must be a multiple of base train.checkpoint_every={every} "
                          "(trials report at checkpoints)")
    if value >= max_steps:
        raise ConfigError(f"{field}={value} must be < base train.max_steps={max_steps}")


def _flat_keys(key: str, value: Any) -> list[str]:
    """Dotted keys a value sets at `key` (a dict choice sets several)."""
    if not isinstance(value, dict) or not value:
        return [key]
    return [k for sub, v in value.items() for k in _flat_keys(f"{key}.{sub}", v)]


def _check_key(key: str, base: DistillConfig) -> None:
    if key.startswith("teachers.ensemble."):  # one teacher's ensemble weight (raykd/config/teachers.py)
        from raykd.config.teachers import check_weight_key

        check_weight_key(key, base)
        return
    if not (key.startswith(SWEEPABLE_PREFIXES) or key + "." in SWEEPABLE_PREFIXES) or key in FIXED_KEYS:
        why = ("it sets resources or the step axis every trial shares" if key in FIXED_KEYS else
               "trials share one teacher, one tokenised dataset and one student initialisation")
        raise ConfigError(f"space: '{key}' cannot be swept ({why}); sweep loss.* or train.* keys")
    node: Any = base
    for part in key.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise ConfigError(f"space: '{key}' is not a key of the base config (no '{part}')")
        node = getattr(node, part)


def apply_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a config tree, outer keys first; a dict value is merged into the sub-config there."""
    for key in sorted(values, key=lambda k: k.count(".")):
        value = values[key]
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = deep_merge(node[leaf], value) if isinstance(value, dict) and isinstance(node.get(leaf), dict) else value
    return tree


def with_values(base: DistillConfig, values: dict[str, Any], where: str) -> DistillConfig:
    """`base` with the dotted `values` applied, validated; errors name `where` and the values."""
    try:
        return validate(DistillConfig, apply_values(base.model_dump(), values), where)
    except ConfigError as e:
        raise ConfigError(f"{e} [with {_short(values)}]") from None


def _short(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def _check_combinations(sweep: SweepConfig, base: DistillConfig) -> None:
    """Values valid alone can clash (dynamic temperature with a temperature schedule): try the corner
    combinations when there are few enough of them; else every pair of dimensions."""
    dims = sorted(sweep.space.items())
    if len(dims) < 2:
        return
    total = math.prod(len(d.corners()) for _, d in dims)
    groups = [dims] if total <= MAX_COMBINATIONS else list(itertools.combinations(dims, 2))
    for group in groups:
        keys = [k for k, _ in group]
        for combo in itertools.product(*(d.corners() for _, d in group)):
            with_values(base, dict(zip(keys, combo)), "space combination")


# --------------------------------------------------------------------------------------------- trials
def decode_params(sweep: SweepConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Tune's sampled config -> dotted key: config value (indices decoded, bounds enforced)."""
    return {key: dim.decode(params[key]) for key, dim in sweep.space.items() if key in params}


def trial_config(base: DistillConfig, sweep: SweepConfig, params: dict[str, Any], run_name: str | None = None) -> DistillConfig:
    """The DistillConfig one trial trains with: the base with this trial's values (Tune's raw params)."""
    cfg = with_values(base, decode_params(sweep, params), "trial")
    if run_name is not None:
        cfg.run_name = run_name
    return cfg
