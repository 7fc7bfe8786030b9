"""Figures of the distillation methods, logged to MLflow at the end of training (raykd/objective.py).

    fig = temperature_histogram_figure(edges, counts, "entropy")     # dynamic temperature distribution
    fig = adversarial_figure({"adv_disc_loss": [(step, value), ...], ...})
"""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def temperature_histogram_figure(edges: np.ndarray, counts: np.ndarray, rule: str):
    """Bar histogram of every per-token temperature of the run (rank 0's rows)."""
    plt = _plt()
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
    plt = _plt()
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
