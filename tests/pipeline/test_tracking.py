"""A pipeline's resume state on its MLflow parent run."""

from __future__ import annotations

import json


# --------------------------------------------------------------------------------------------- resume state
def test_completed_stages_recorded_on_the_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from raykd.pipeline.run import latest_checkpoint_step
    from raykd.pipeline.tracking import completed_stages, forget_stages_from, mark_stage_complete
    from raykd.tracking import tracked_run
    from raykd.train.integrity import write_checksums

    uri = f"sqlite:///{tmp_path}/m.db"
    with tracked_run(uri, "e", "p") as parent:
        client = MlflowClient(uri)
        assert completed_stages(client, parent) == {}
        mark_stage_complete(client, parent, "general", "r1", "/s1", "h1")
        mark_stage_complete(client, parent, "instruction", "r2", "/s2", "h2", teacher="/t", teacher_fingerprint="f")
        assert completed_stages(client, parent) == {
            "general": {"run_id": "r1", "student_dir": "/s1", "config_hash": "h1"},
            "instruction": {"run_id": "r2", "student_dir": "/s2", "config_hash": "h2", "teacher": "/t",
                            "teacher_fingerprint": "f"},
        }
        forget_stages_from(client, parent, ["instruction", "domain"])
        assert list(completed_stages(client, parent)) == ["general"]

    # What Ray Train V2 restores: the latest checkpoint in its snapshot, not the newest directory on disk
    # (one written just before a kill but never registered is skipped on restore).
    assert latest_checkpoint_step(str(tmp_path), "run") is None
    for i, step in enumerate((5, 10, 15)):
        d = tmp_path / "run" / f"checkpoint_{i}"
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step}))
    snapshot = {"ray_version": "2.60.0", "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_1", "metrics": {}}}
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert latest_checkpoint_step(str(tmp_path), "run") == 10
    # No checkpoint registered (killed before the controller's first record): the newest whole one on disk,
    # which the loop then loads (raykd/train/batches.py resume_point).
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").unlink()
    assert latest_checkpoint_step(str(tmp_path), "run") is None  # no checksums: none proven whole
    for i in (0, 1):
        write_checksums(tmp_path / "run" / f"checkpoint_{i}")
    assert latest_checkpoint_step(str(tmp_path), "run") == 10
