"""The body of each variant's Ray task, run in-process: every method builds a directory the harness loads."""

import numpy as np

from raykd.compress.build import VariantJob, run_job
from raykd.compress.measure import load_variant, teacher_top1
from raykd.config.compress import (
    LowRankVariant,
    MagnitudeVariant,
    QuantizeVariant,
    RecoveryConfig,
    StructuredVariant,
)
from tests.compress.tiny import tiny_llama, tiny_tokenizer, tokens


def test_every_method_builds_heals_and_scores(tmp_path):
    teacher = tiny_llama()
    teacher.save_pretrained(tmp_path / "t")
    tiny_tokenizer().save_pretrained(tmp_path / "t")
    blocks = tokens(16, 16, seed=1).numpy()
    val = tokens(4, 16, seed=2).numpy()
    top1 = teacher_top1(teacher, val)
    specs = {"int8-wo": QuantizeVariant(method="quantize", mode="int8_weight_only"),
             "prune-50": MagnitudeVariant(method="magnitude_prune", sparsity=0.5),
             "structured": StructuredVariant(method="structured_prune", heads=0.5, mlp=0.5, drop_layers=1),
             "lowrank-2x": LowRankVariant(method="low_rank", ratio=2, recover=False)}
    rows = {}
    for name, spec in specs.items():
        job = VariantJob(name, spec, str(tmp_path / name), str(tmp_path / "t"), blocks, blocks[:8], val, top1, [],
                         RecoveryConfig(steps=2, batch_size=4), seed=0, threads=1)
        rows.update({r["name"]: r for r in run_job(job)})
    assert set(rows) == {"int8-wo", "prune-50", "prune-50+kd", "structured", "structured+kd", "lowrank-2x"}
    for name, r in rows.items():
        model = load_variant(tmp_path / name)
        assert (tmp_path / name / "tokenizer.json").is_file()
        assert model(input_ids=tokens(1, 8)).logits.shape == (1, 8, 96)
        assert 0 <= r["top1_agreement"] <= 1 and np.isfinite(r["heldout_loss"]) and r["bytes_on_disk"] > 0
    dense = sum(p.numel() for p in teacher.parameters())
    assert rows["prune-50"]["params"] == dense > rows["prune-50"]["nonzero_params"]
    assert rows["prune-50+kd"]["nonzero_params"] == rows["prune-50"]["nonzero_params"]  # healing kept the zeros
    assert rows["structured"]["params"] < dense and rows["lowrank-2x"]["params"] < dense
    assert rows["int8-wo"]["method"] == "quantize" and rows["structured+kd"]["method"] == "structured_prune+recovery"
