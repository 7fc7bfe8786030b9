"""Two teachers as two Serve apps on the session cluster: records tagged `domain: math` are scored by the math
teacher only (issue 19's routing acceptance). In-process `run_distill`, the session's teacher reused as the
general one: `pytest -m slow tests/e2e/test_multi_teacher.py`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from .conftest import TEACHER_APP, serve_app

pytestmark = pytest.mark.slow

MATH_APP = "raykd-teacher-math-e2e"
TOP_K = 8


def _math_teacher(tiny_teacher, out):
    """The tiny teacher's tokenizer and architecture with other weights (seeded noise): another teacher."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_teacher, out)
    weights = sorted(out.glob("*.safetensors"))
    gen = torch.Generator().manual_seed(1)
    for f in weights:
        state = load_file(f)
        save_file({k: (v + 0.05 * v.float().std() * torch.randn(v.shape, generator=gen)).to(v.dtype)
                   if v.is_floating_point() and v.numel() > 1 else v for k, v in state.items()},
                  f, metadata={"format": "pt"})
    return out


def _records(path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        if i % 2:
            a, b = rng.integers(10, 99, 2)
            rows.append({"text": f"Question: what is {a} plus {b}? Answer: {a} plus {b} is {a + b}.", "domain": "math"})
        else:
            rows.append({"text": f"The old cat sat by the door number {i} and watched the quiet rain.",
                         "domain": "stories"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ensemble_of_the_two_apps(cfg, general, math, tiny_teacher):
    """The ensemble path of a Train worker (`worker_signal_source`) against the two deployed apps: the mixture
    of what each app returns, normalised. No training run: the routed run above covers the loop."""
    from types import SimpleNamespace

    from raykd.config import DistillConfig
    from raykd.signals.ensemble import mix_signals
    from raykd.signals.format import from_ipc, unpack
    from raykd.train.teachers import worker_signal_source

    tree = cfg.model_dump(exclude={"teacher"})
    tree["teachers"].update(routing=None, ensemble={"general": 0.25, "math": 0.75})
    tree["signals"] = {"cache": False}
    source = worker_signal_source(DistillConfig.model_validate(tree), general, None)
    ids = np.random.default_rng(0).integers(0, 384, (3, 24)).astype(np.int32)
    got = source.submit_step(SimpleNamespace(ids=ids, index=np.arange(3))).result()
    each = [unpack(from_ipc(h.score_packed.remote(list(ids), TOP_K).result())) for h in (general, math)]
    ref = mix_signals(each, [0.25, 0.75], 384)
    assert got.top_k == 2 * TOP_K
    np.testing.assert_array_equal(got.topk_ids, ref.topk_ids)
    np.testing.assert_allclose(got.topk_logprobs, ref.topk_logprobs, atol=1e-6)
    mass = np.exp(got.topk_logprobs.astype(np.float64)).sum(1) + np.exp(got.tail_logprob.astype(np.float64))
    np.testing.assert_allclose(mass, 1.0, atol=3e-3)  # float16 on the wire
    assert not np.array_equal(each[0].topk_logprobs, each[1].topk_logprobs)  # two different teachers


def test_records_tagged_math_are_scored_by_the_math_teacher_only(ray_cluster, teacher_app, tiny_teacher, tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer

    from raykd.config import DistillConfig
    from raykd.data.blocks import encode_chunk
    from raykd.data.ingest import pad_id
    from raykd.data.records import RecordEncoder
    from raykd.data.routing import Router
    from raykd.data.sources import plan_chunks
    from raykd.distill import run_distill
    from raykd.signals.format import sequence_hash
    from raykd.signals.store import SignalStore, cache_directory
    from raykd.teacher.service import teacher_handle

    general_handle, _ = teacher_app  # the session's app, reused (not redeployed) by the run as teacher `general`
    math_path = _math_teacher(tiny_teacher, tmp_path / "math-teacher")
    cfg = DistillConfig.model_validate({
        "run_name": "routed", "output_dir": str(tmp_path / "out"),
        "teachers": {"apps": [{"name": "general", "path": str(tiny_teacher), "app_name": TEACHER_APP},
                              {"name": "math", "path": str(math_path), "app_name": MATH_APP}],
                     "routing": {"field": "domain", "rules": {"math": "math"}}},
        "student": {"num_layers": 1},
        "data": {"source": str(_records(tmp_path / "mixed.jsonl")), "seq_len": 32},
        "loss": {"top_k": TOP_K},
        "train": {"num_workers": 1, "batch_size": 8, "max_steps": 6, "log_every": 6, "checkpoint_every": 6,
                  "warmup_steps": 1, "storage_path": str(tmp_path / "runs")},
        "eval": {"baseline": False, "max_sequences": 4, "gen_tokens": 4, "gen_prompts": 1},
        "signals": {"cache_dir": str(tmp_path / "signals")},
        "mlflow": {"experiment": "multi-teacher", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    })
    with serve_app(MATH_APP):
        result = run_distill(cfg)
        run_id = result["run_id"]
        math_info = teacher_handle(MATH_APP).info.remote().result()
        general_info = general_handle.info.remote().result()
        _ensemble_of_the_two_apps(cfg, general_handle, teacher_handle(MATH_APP), tiny_teacher)

    # The blocks of each teacher, packed as the ingest packs them (the run's data, in this process).
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    router = Router.of(cfg)
    packed = [encode_chunk(c, cfg.data, RecordEncoder(tok, cfg.data), pad_id(tok), router) for c in plan_chunks(cfg.data)]
    blocks = np.concatenate([p.ids for p in packed])
    route = np.concatenate([p.route for p in packed])
    math_blocks = {sequence_hash(b) for b in blocks[route == 1]}
    other_blocks = {sequence_hash(b) for b in blocks[route == 0]}
    assert math_blocks and other_blocks and not math_blocks & other_blocks

    def scored(info):  # the sequences a teacher scored in training: its own cache (its fingerprint, backend, k)
        store = SignalStore(cache_directory(cfg.signals, info.fingerprint, TOP_K, info.variant),
                            fingerprint=info.fingerprint, top_k=TOP_K)
        return set(store.index)

    by_math, by_general = scored(math_info), scored(general_info)
    assert by_math and by_math <= math_blocks  # the math teacher scored math blocks, and only those
    assert by_general and by_general <= other_blocks and not by_general & math_blocks  # never a math block

    # Requests counted by the math app itself agree with the trainer's per-teacher counters (+1: the math
    # teacher's own row of the evaluation table, scored on the held-out blocks).
    metrics = MlflowClient(cfg.mlflow.tracking_uri).get_run(run_id).data.metrics
    assert math_info.scored_requests == metrics["signal_teacher_requests.math"] + 1 > 1
    rows = {r.model: r for r in result["rows"]}
    assert list(rows) == ["teacher", "teacher math", "kd student"], list(rows)
    assert "teacher math" in result["table"] and 0 <= rows["teacher math"].top1_agreement <= 1
    assert metrics["eval_teacher_math_heldout_loss"] == pytest.approx(rows["teacher math"].heldout_loss)
    assert metrics["signal_teacher_sequences.math"] == len(by_math)
    assert metrics["signal_teacher_sequences.general"] == len(by_general)
    assert metrics["signal_teacher_requests"] == metrics["signal_teacher_requests.math"] + \
        metrics["signal_teacher_requests.general"]
