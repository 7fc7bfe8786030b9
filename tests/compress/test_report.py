import math

from raykd.compress.measure import Measurement
from raykd.compress.report import format_table, markdown_table, pareto_front, pareto_plot


def row(name, mb, loss, em, gen):
    return Measurement(name, "x", 100, 90, int(mb * 1e6), loss, math.exp(loss), 0.5, em, {1: em, 2: em / 2},
                       {"prompt_tps_b1": 10.0, "gen_tps_b1": gen})


def test_pareto_front_keeps_exactly_the_undominated_points():
    pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (0.5, 0.4), (2.0, 0.9)]
    assert pareto_front(pts) == [0, 1, 3, 4]  # (3, 0.8) is beaten by (2, 0.9); equal points both stay
    assert pareto_front([(10.0, 0.5), (20.0, 0.4)], smaller_x=False) == [0, 1]


def test_table_markdown_and_plot(tmp_path):
    teacher = row("teacher", 4.0, 2.0, 0.8, 100.0)
    rows = [teacher, row("int8-wo", 1.0, 2.1, 0.6, 50.0), row("prune-50", 4.0, 2.5, 0.0, 100.0)]
    text = format_table(rows, teacher)
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("variant") and "ret EM" in lines[0]
    assert lines[3].split()[-1] == "0.750" and lines[4].split()[-1] == "0.000"  # EM retention 0.6 / 0.8
    md = markdown_table(rows, teacher)
    assert md.count("\n") == 4 and "| int8-wo |" in md
    png = pareto_plot(rows, teacher, tmp_path / "p.png")
    assert png.stat().st_size > 10_000
