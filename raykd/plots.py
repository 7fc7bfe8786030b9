"""Figures, logged to MLflow beside the numbers: run curves and the distillation methods' diagnostics.

    plot_histories(uri, {"kd": run_id, "hard-only": base_id}, ["loss_hard", "loss_soft"], "curves.png")
    figures = objective_figures(objective)        # {"dynamic_temperature_hist.png": fig, ...} (Train rank 0)
    fig = temperature_histogram_figure(edges, counts, "entropy")     # dynamic temperature distribution
    fig = adversarial_figure({"adv_disc_loss": [(step, value), ...], ...})

matplotlib (Agg backend) is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display: drivers, Train workers, CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histories(uri: str, runs: dict[str, str], keys: list[str], path: str | Path, title: str = "") -> Path:
    """One panel per metric key, one line per run, x = training step."""
    from mlflow.tracking import MlflowClient

    plt = pyplot()
    client = MlflowClient(uri)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, run_id in runs.items():
            hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            if hist:
                ax.plot([m.step for m in hist], [m.value for m in hist], label=label, marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:  # a run resumed at its last step logs no curve: no legend to draw
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def objective_figures(objective: Any) -> dict[str, Any]:
    """The figures of a finished run's objective (raykd/loss/objective.py): the histogram of every per-token
    temperature (dynamic temperature) and the adversarial curves, by artifact name; empty when neither."""
    figures = {}
    if objective.dynamic is not None and objective.hist.sum() > 0:
        figures["dynamic_temperature_hist.png"] = temperature_histogram_figure(
            objective.hist_edges, objective.hist, objective.dynamic.rule)
    if objective.curves:
        figures["adversarial_curves.png"] = adversarial_figure(objective.curves)
    return figures


def temperature_histogram_figure(edges: np.ndarray, counts: np.ndarray, rule: str):
    """Bar histogram of every per-token temperature of the run (rank 0's rows)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
    total = max(1, int(counts.sum()))
    centers = 0.5 * (edges[:-1] + edges[1:])
    mean = float((centers * counts).sum() / total)
    ax.axvline(mean, color="k", ls="--", lw=1, label=f"mean {mean:.2f}")
    ax.set_xlabel("per-token temperature")
    ax.set_ylabel("tokens")
    ax.set_title(f"dynamic temperature ({rule}), {total:,} tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def adversarial_figure(curves: dict[str, list[tuple[int, float]]], smooth: int = 5):
    """One panel per curve (raw per-step values and a moving average): D loss, D accuracy, student term."""
    plt = pyplot()
    keys = sorted(curves)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps = np.array([s for s, _ in curves[key]])
        values = np.array([v for _, v in curves[key]])
        ax.plot(steps, values, alpha=0.35, lw=0.8)
        if len(values) >= smooth:
            avg = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            ax.plot(steps[smooth - 1:], avg, lw=1.6)
        if key == "adv_disc_accuracy":
            ax.axhline(0.5, color="k", ls=":", lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
