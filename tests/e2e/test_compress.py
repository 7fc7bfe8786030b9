"""`raykd compress` end to end at a tiny size: KD student (Ray Train), every method's variant (Ray tasks),
recovery, one harness, one FINISHED MLflow parent with a child per variant and the Pareto plot."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_compress_study_tiny(ray_cluster, teacher_app, tiny_teacher, tmp_path):
    from mlflow.tracking import MlflowClient

    from raykd.compress.measure import load_variant
    from raykd.compress.run import run_compress
    from raykd.config import deep_merge, parse_overrides, read_yaml_tree, validate
    from raykd.config.compress import CompressConfig

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tree, _ = read_yaml_tree("jobs/configs/compress.yaml")
    tree["kd"]["students"] = {"kd-1x32": {"num_layers": 1, "hidden_size": 32}}  # replaces the two (no merge)
    tree = deep_merge(tree, parse_overrides([
        f"teacher.path={tiny_teacher}", f"output_dir={tmp_path}/out", f"mlflow.tracking_uri={uri}",
        "data.source=builtin", "data.task_fraction=0", "data.builtin_chars=60000", "data.seq_len=64",
        "data.max_sequences=32", "data.val_fraction=0.1",
        "kd.train={num_workers: 1, batch_size: 4, max_steps: 2, warmup_steps: 0, checkpoint_every: 2, "
        f"storage_path: {tmp_path}/runs}}",
        "variants=[{method: quantize, mode: int8_dynamic}, {method: magnitude_prune, sparsity: 0.5}, "
        "{method: structured_prune, mlp: 0.5, drop_layers: 1}, {method: low_rank, ratio: 2, recover: false}]",
        "recovery={steps: 2, batch_size: 4}", "calibration_blocks=4",
        "eval={max_sequences: 4, tasks: {enabled: true, levels: [1, 2], per_level: 2}, "
        "speed: {prompt_tokens: 8, gen_tokens: 4, batch_sizes: [1, 2], repeats: 1}}",
    ]))
    cfg = validate(CompressConfig, tree, "test")
    out = run_compress(cfg)

    names = [m.name for m in out["rows"]]
    assert names == ["teacher", "kd-1x32", "kd-1x32+int8-wo", "int8-dyn", "prune-50", "prune-50+kd",
                     "structured-h1-m0.5-d1", "structured-h1-m0.5-d1+kd", "lowrank-2x"]
    results = json.loads((tmp_path / "out" / "compress" / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    for name, path in results["paths"].items():
        assert load_variant(path).config.vocab_size == 384, name
        assert set(rows[name]["speed"]) == {"prompt_tps_b1", "gen_tps_b1", "prompt_tps_b2", "gen_tps_b2"}
        assert set(rows[name]["task_em_levels"]) == {"1", "2"}
    assert "quantization_config" in (tmp_path / "out" / "compress" / "int8-dyn" / "config.json").read_text()
    assert rows["prune-50+kd"]["nonzero_params"] == rows["prune-50"]["nonzero_params"] < rows["teacher"]["params"]
    assert rows["structured-h1-m0.5-d1"]["params"] < rows["teacher"]["params"]

    client = MlflowClient(uri)
    parent = client.get_run(out["run_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(out["run_id"])} >= {"pareto.png", "results.json",
                                                                     "compress_table.txt"}
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{out['run_id']}'")
    by_name = {c.data.tags["raykd.run_name"].split("/", 1)[1]: c for c in children}
    assert set(by_name) == set(names)
    assert all(c.info.status == "FINISHED" for c in children)
    assert "retention_heldout_loss" in by_name["prune-50+kd"].data.metrics
    assert "loss_hard" in by_name["kd-1x32"].data.metrics  # the KD student's child holds its training too
