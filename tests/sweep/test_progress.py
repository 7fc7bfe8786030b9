"""The sweep's console progress: a finished sweep is told from an interrupted one; Tune can pickle it."""

from raykd.sweep.progress import ACTIVE, SweepProgress


def test_progress_tells_an_interrupted_sweep_from_a_finished_one(capsys) -> None:
    import pickle
    from types import SimpleNamespace as Trial

    progress = SweepProgress("p", "val_loss", "min", total=3, max_steps=60, every_s=1e9)
    progress.setup()
    assert ACTIVE["p"] is progress
    a = Trial(trial_id="a", status="RUNNING", last_result={}, path="/a")
    b = Trial(trial_id="b", status="PENDING", last_result={}, path="/b")
    progress.on_trial_start(0, [a, b], a)
    a.last_result = {"step": 10, "val_loss": 3.0}
    progress.on_trial_result(0, [a, b], a, a.last_result)
    progress.on_step_end(1, [a, b])
    a.status = b.status = "TERMINATED"  # what Tune's cleanup does to live trials after Ctrl-C
    assert progress.final_status(a) == "RUNNING" and progress.final_status(b) == "PENDING"
    b.status = "PENDING"
    a.last_result = {"step": 60, "val_loss": 2.5}
    progress.on_trial_result(0, [a, b], a, a.last_result)
    progress.on_trial_complete(0, [a, b], a)
    err = capsys.readouterr().err
    assert "trial a done at step 60, val_loss 2.5000" in err and "1/3 trials done" in err and "best val_loss 2.5000 (a)" in err
    assert "60 steps" in err and "eta" in err
    clone = pickle.loads(pickle.dumps(progress))  # Tune pickles callbacks with the experiment
    assert clone.trials == [] and clone.name == "p" and clone.max_steps == 60
