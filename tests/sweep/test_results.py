"""What a sweep leaves behind: the best trial, its runnable config, the results table, PBT schedules."""

from __future__ import annotations

import json

import pytest

from raykd.config import DistillConfig, load_config
from raykd.config.sweep import load_sweep
from raykd.sweep.results import TrialRow, export_config, pbt_schedule_md, pick_best, results_table, trained_values
from tests.sweep.examples import ASHA_YAML, PBT_YAML


# --------------------------------------------------------------------------------------------- results
def _rows():
    return [
        TrialRow("a", {"loss.alpha": 0.5}, "TERMINATED", 20, 3.0, None),  # stopped early by ASHA, low metric
        TrialRow("b", {"loss.alpha": 0.7}, "TERMINATED", 60, 3.5, None),
        TrialRow("c", {"loss.alpha": 0.9}, "TERMINATED", 60, 3.4, None),
        TrialRow("d", {"loss.alpha": 0.3}, "ERROR", 10, float("nan"), None),
    ]


def test_best_is_chosen_among_trials_that_trained_to_the_end() -> None:
    rows = _rows()
    assert pick_best(rows, "min", 60).trial_id == "c"
    assert pick_best(rows, "max", 60).trial_id == "b"
    assert pick_best(rows[:1], "min", 60).trial_id == "a"  # nobody finished: the best scored one
    with pytest.raises(RuntimeError):
        pick_best(rows[3:], "min", 60)


def test_pbt_best_values_are_what_the_weights_were_last_trained_with() -> None:
    sweep, _ = load_sweep(PBT_YAML)
    # Exploited at its last step: the config moved to (1.16, 0.12), the weights are the donor's, trained with
    # (1.45, 0.1) from step 10 on.
    best = TrialRow("t1", {"loss.temperature": 1.16, "loss.alpha": 0.12}, "TERMINATED", 60, 1.5, None)
    history = [{"step": 0, "values": {"loss.temperature": 1.2, "loss.alpha": 0.11}, "trial_id": "t1"},
               {"step": 10, "values": {"loss.temperature": 1.45, "loss.alpha": 0.1}, "trial_id": "t2"}]
    assert trained_values(sweep, best, history) == {"loss.temperature": 1.45, "loss.alpha": 0.1}
    assert trained_values(sweep, best, []) == best.values
    asha, _ = load_sweep(ASHA_YAML)
    assert trained_values(asha, best, history) == best.values


def test_exported_best_config_is_a_runnable_distill_config(tmp_path) -> None:
    from raykd.config.sweep import with_values

    sweep, base = load_sweep(ASHA_YAML)
    best = _rows()[2]
    cfg = with_values(base, {"loss.alpha": 0.9, "loss": {"temperature_schedule": {"kind": "cosine", "end": 1.0}}}, "best")
    cfg.run_name = "sweep-asha-best"
    history = [{"step": 0, "values": {"loss.alpha": 0.5}, "trial_id": "b"}, {"step": 20, "values": {"loss.alpha": 0.9}, "trial_id": "c"}]
    path = export_config(cfg, tmp_path / "out" / "best.yaml", sweep.model_copy(update={"scheduler": "pbt"}), best, history)
    text = path.read_text()
    assert text.startswith("# Best trial of sweep 'sweep-asha' (trial c): val_loss = 3.4000")
    assert f"raykd distill --config {path}" in text and "#      20: " in text
    assert load_config(DistillConfig, path) == cfg  # every field round-trips
    table = results_table(sweep, _rows(), best)
    lines = table.splitlines()
    assert lines[0].startswith("| trial | loss | loss.alpha |") and lines[0].endswith("| status | steps | val_loss |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| c **best**", "| b", "| a", "| d"]
    assert lines[-1].endswith("| 0.3 | None | None | None | None | None | error | 10 | nan |")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "sweep_state.json").write_text(json.dumps({"history": history, "trial_id": "c"}))
    best.checkpoint = str(ckpt)
    pbt = sweep.model_copy(update={"pbt": sweep.pbt.model_copy(update={"mutate": ["loss.alpha"]})})
    md = pbt_schedule_md(pbt, [_rows()[1], best], best)
    assert md.index("Trial c (best): val_loss 3.4000 at step 60") < md.index("Trial b: val_loss 3.5000")
    assert "| 0 | 0.5 | b |\n| 20 | 0.9 | c |" in md
