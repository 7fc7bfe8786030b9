"""The study's table (console, MLflow, docs) and its Pareto plots, from the measurements.

    print(format_table(rows, teacher))                 # one line per variant, retention vs the teacher
    md = markdown_table(rows, teacher)                 # the same for docs/compression.md
    png = pareto_plot(rows, teacher, "pareto.png")     # quality vs bytes on disk, and vs decode speed

Quality on the plots is task exact-match retention when the teacher has a task score, else held-out loss
retention (teacher loss / variant loss). A point is on the front when no other point is at least as small
(fewer bytes / faster) and at least as good, and strictly better in one.
"""

from __future__ import annotations

from pathlib import Path

from raykd.compress.measure import Measurement


def _quality(m: Measurement, teacher: Measurement) -> tuple[str, float]:
    ret = m.retention(teacher)
    if teacher.task_em:
        return "task EM retention", ret["task_em"]
    return "held-out loss retention", ret["heldout_loss"]


def _speed(m: Measurement) -> float:
    return m.speed.get("gen_tps_b1", float("nan"))


def pareto_front(points: list[tuple[float, float]], smaller_x: bool = True) -> list[int]:
    """Indices of the non-dominated (x, y) points, y higher is better; x smaller (or larger) is better."""
    front = []
    for i, (x, y) in enumerate(points):
        better_x = (lambda a, b: a <= b) if smaller_x else (lambda a, b: a >= b)
        dominated = any(better_x(x2, x) and y2 >= y and (x2, y2) != (x, y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


COLUMNS = ("params", "nonzero", "MB", "loss", "ppl", "top1", "EM", *(f"EM L{i}" for i in (1, 2, 3, 4)),
           "pre b1", "gen b1", "pre b16", "gen b16", "ret loss", "ret EM")


def _cells(m: Measurement, teacher: Measurement) -> list[str]:
    ret = m.retention(teacher)
    em = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    sp = lambda k: f"{m.speed[k]:,.0f}" if k in m.speed else "-"  # noqa: E731
    return [f"{m.params:,}", f"{m.nonzero_params:,}", f"{m.bytes_on_disk / 1e6:.2f}", f"{m.heldout_loss:.3f}",
            f"{m.perplexity:.1f}", f"{m.top1_agreement:.3f}", em(m.task_em),
            *(em(m.task_em_levels.get(lv)) for lv in (1, 2, 3, 4)),
            sp("prompt_tps_b1"), sp("gen_tps_b1"), sp("prompt_tps_b16"), sp("gen_tps_b16"),
            f"{ret['heldout_loss']:.3f}", em(ret.get("task_em"))]


def format_table(rows: list[Measurement], teacher: Measurement) -> str:
    head = ["variant", *COLUMNS]
    body = [[m.name, *_cells(m, teacher)] for m in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head), "-" * (sum(widths) + 2 * len(widths)), *map(fmt, body)])


def markdown_table(rows: list[Measurement], teacher: Measurement) -> str:
    lines = ["| variant | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += ["| " + " | ".join([m.name, *_cells(m, teacher)]) + " |" for m in rows]
    return "\n".join(lines)


def pareto_plot(rows: list[Measurement], teacher: Measurement, path: str | Path) -> Path:
    from raykd.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    label = _quality(teacher, teacher)[0]
    pts = [(m.bytes_on_disk / 1e6, _quality(m, teacher)[1]) for m in rows]
    spd = [(_speed(m), _quality(m, teacher)[1]) for m in rows]
    for ax, data, xlabel, smaller in ((axes[0], pts, "MB on disk (weights)", True),
                                      (axes[1], spd, "decode tokens/s, batch 1 (CPU)", False)):
        front = set(pareto_front(data, smaller_x=smaller))
        for i, (m, (x, y)) in enumerate(zip(rows, data)):
            ax.scatter([x], [y], c="tab:red" if i in front else "tab:blue", s=30)
            ax.annotate(m.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        fx = sorted((data[i] for i in front), key=lambda p: p[0])
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "r--", lw=0.8, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label + " (variant / teacher)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle("raykd compress: quality kept vs size and vs speed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
