"""PNG plots of run curves (logged to MLflow beside the numbers).

    plot_histories(uri, {"kd": run_id, "hard-only": base_id}, ["loss_hard", "loss_soft"], "curves.png")
"""

from __future__ import annotations

from pathlib import Path


def plot_histories(uri: str, runs: dict[str, str], keys: list[str], path: str | Path, title: str = "") -> Path:
    """One panel per metric key, one line per run, x = training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

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
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
