"""Training data through Ray Data, end to end: the same blocks in the same order as the in-process reference, and
GSM8K as chat records trained with the loss on the answers only, scored by the teacher token for token.

    pytest -m slow tests/e2e/test_data.py

Both join the session cluster (tests/e2e/conftest.py); the chat run reuses its deployed tiny teacher, which has
no chat template of its own: the run gives one (data.chat_template, a .jinja file). The killed-and-resumed run
that consumes every sample is tests/e2e/test_faults.py (a stopped run resumed on a cluster of its own).
"""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

GSM8K_CHAT = ROOT / "jobs" / "configs" / "gsm8k_chat.yaml"
FIELDS = {"user": "question", "assistant": "answer"}


def _gsm8k_subset(shared_data: Path, out: Path, n: int, long_answer: bool = False) -> list[dict]:
    """The first n GSM8K training records (and one whose answer no block can hold) as a .jsonl file."""
    with (shared_data / "data" / "gsm8k" / "train.jsonl").open() as fh:
        records = [json.loads(line) for line in itertools.islice(fh, n)]
    if long_answer:
        records.insert(n // 2, {"question": "Count to one hundred.", "answer": " ".join(map(str, range(1, 400)))})
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _reference(cfg, tokenizer, template):
    """Every chunk packed in this process: (Packed with segments, concatenated), the encoder."""
    from raykd.data.blocks import encode_chunk
    from raykd.data.ingest import pad_id
    from raykd.data.packing import PackStats
    from raykd.data.records import RecordEncoder
    from raykd.data.sources import plan_chunks

    chunks = plan_chunks(cfg)
    encoder = RecordEncoder(tokenizer, cfg, template)
    parts = [encode_chunk(c, cfg, encoder, pad_id(tokenizer)) for c in chunks]
    stats = PackStats()
    for p in parts:
        stats = stats.add(p.stats)
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("ids", "mask", "segment")}
    return chunks, cat, stats


@pytest.mark.parametrize("fmt", ["chat", "text"])
def test_ray_data_yields_the_in_process_blocks_in_the_seeded_order(ray_cluster, tiny_teacher, shared_data, tmp_path,
                                                                   fmt):
    """The ingest's blocks (Ray Data's actor pool for the chat source; the driver for the small text source) equal
    the in-process packing, block for block; each Train worker's rows, read through
    the DataConfig Ray Train uses (StepOrderData → get_dataset_shard's iterators) in windows, are the
    reference order's (raykd/data/order.py batch_indices) step for step, across epochs."""
    from transformers import AutoTokenizer

    from raykd.config import DataConfig
    from raykd.data.chat import RAYKD_CHAT_TEMPLATE
    from raykd.data.ingest import ingest
    from raykd.data.order import batch_indices
    from raykd.train.batches import StepOrderData, plan_windows, step_batches, window_name

    if fmt == "chat":
        src = tmp_path / "gsm8k.jsonl"
        _gsm8k_subset(shared_data, src, 160, long_answer=True)
        cfg = DataConfig(source=str(src), format="chat", chat_fields=FIELDS, chat_template=RAYKD_CHAT_TEMPLATE,
                         seq_len=512, chunk_mb=0.02, driver_ingest_mb=0)  # Ray Data's actor pool
    else:
        src = tmp_path / "shakespeare.txt"
        src.write_text((shared_data / "data" / "tinyshakespeare" / "input.txt").read_text()[:120_000])
        cfg = DataConfig(source=str(src), seq_len=64, chunk_mb=0.02)  # small: packed in the driver
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    template = cfg.chat_template
    chunks, ref, stats = _reference(cfg, tokenizer, template)
    assert len(chunks) >= 4  # several Ray Data tasks, so order across chunks is exercised

    data = ingest(cfg, str(tiny_teacher), template, chunks, max_actors=2)
    assert data.made_by == ("Ray Data" if fmt == "chat" else "in the driver")
    assert data.stats == stats and data.n_blocks == len(ref["ids"])
    if fmt == "chat":
        assert stats.too_long >= 1 and f"{stats.too_long} record(s) longer than 512 tokens dropped" in data.describe()
    got = data.take(0, data.n_blocks)
    assert np.array_equal(got.ids, ref["ids"]) and np.array_equal(got.mask, ref["mask"])
    assert got.index.tolist() == list(range(data.n_blocks))

    batch, world, seed = 4, 2, 11
    steps = 2 * data.n_train // (batch * world) + 3  # more than two epochs: batches that span epochs too
    windows = plan_windows(data.n_train, data.seq_len, batch, world, 0, steps, window_tokens=5 * batch * data.seq_len)
    assert len(windows) >= 3
    config = StepOrderData(data.offsets, data.n_train, data.seq_len, batch, seed, windows)
    shards = config.configure({window_name(w): data.chunks for w in range(len(windows))}, world_size=world)
    for rank in range(world):
        expected = list(itertools.islice(batch_indices(data.n_train, batch, world, rank, seed, 0), steps))
        streamed = list(step_batches(windows, batch, 0, shard=shards[rank].__getitem__, rank=rank))
        assert [b.index.tolist() for b in streamed] == [e.tolist() for e in expected]
        for b in streamed:
            assert np.array_equal(b.ids, ref["ids"][b.index]) and np.array_equal(b.mask, ref["mask"][b.index])


def test_gsm8k_as_chat_trains_on_the_answers_and_the_teacher_scores_the_rendered_tokens(
        tmp_path, tiny_teacher, teacher_app, cluster_env, shared_data):
    """`raykd distill --config jobs/configs/gsm8k_chat.yaml` (made small) on GSM8K records: every block a worker
    trained on holds whole conversations whose trained tokens are exactly the answers (+ end of turn), never a
    question or a role tag, and no trained token's prediction crosses a record boundary; the teacher scored
    exactly those blocks' tokens (the signal cache holds their hashes and no other); the over-long record is
    counted and reported; the evaluation scores the held-out answers."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer

    from raykd.config import DataConfig
    from raykd.data.chat import RAYKD_CHAT_TEMPLATE
    from raykd.signals.format import sequence_hash
    from raykd.signals.store import SHARD_SUFFIX

    src = tmp_path / "gsm8k.jsonl"
    records = _gsm8k_subset(shared_data, src, 120, long_answer=True)
    template = tmp_path / "chat.jinja"
    template.write_text(RAYKD_CHAT_TEMPLATE)
    trace, cache = tmp_path / "trace", tmp_path / "signals"
    env = {**cluster_env, "RAYKD_BATCH_TRACE": str(trace)}
    proc = subprocess.run(
        [sys.executable, "-m", "raykd.cli", "distill", "--config", str(GSM8K_CHAT), "run_name=chat",
         f"teacher.path={tiny_teacher}", f"data.source={src}", f"data.chat_template={template}", "data.seq_len=512",
         "data.val_fraction=0.1", "student.num_layers=1", "train.batch_size=4", "train.max_steps=4",
         "train.warmup_steps=2", "train.log_every=2", "eval.baseline=false", "eval.max_sequences=8",
         "eval.gen_tokens=8", "eval.gen_prompts=2", f"signals.cache_dir={cache}", "mlflow.experiment=e2e"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    cfg = DataConfig(source=str(src), format="chat", chat_fields=FIELDS, chat_template=RAYKD_CHAT_TEMPLATE,
                     seq_len=512, val_fraction=0.1)
    _, ref, stats = _reference(cfg, tokenizer, RAYKD_CHAT_TEMPLATE)
    assert stats.too_long >= 1
    assert f"{stats.too_long} record(s) longer than 512 tokens dropped (longest" in proc.stderr, proc.stderr
    assert "(in the driver, " in proc.stderr  # 60 kB: packed in the driver (Ray Data's path: the test above)
    ray_data_noise = ("streaming_executor", "Progress bars", "core_worker", "ray_remote_args", "MapBatches")
    assert not [line for line in proc.stderr.splitlines() if any(n in line for n in ray_data_noise)], proc.stderr
    lines = [json.loads(line) for f in sorted(trace.glob("rank*.jsonl")) for line in f.read_text().splitlines()]
    assert sorted((r["step"], r["rank"]) for r in lines) == [(s, r) for s in range(4) for r in range(2)]
    trained = sorted({i for r in lines for i in r["index"]})

    answers = {r["answer"] + tokenizer.eos_token for r in records}
    questions = [r["question"] for r in records]
    for b in trained:
        ids, mask, seg = ref["ids"][b], ref["mask"][b], ref["segment"][b]
        assert not mask[seg == 0].any()  # padding carries no loss
        for t in np.flatnonzero(mask):  # the prediction of a trained token comes from the same record
            assert t > 0 and seg[t - 1] == seg[t]
        for s in range(1, seg.max() + 1):
            rec = seg == s
            assert tokenizer.decode(ids[rec & (mask > 0)]) in answers  # the answer, whole, and nothing else
            prompt = tokenizer.decode(ids[rec & (mask == 0)])
            assert prompt.startswith("<user>\n") and prompt.endswith("<assistant>\n")
            assert prompt[len("<user>\n"): -len("\n<assistant>\n")] in questions  # no question token trained

    shards = sorted(cache.glob(f"*/*/k20/*{SHARD_SUFFIX}"))  # <fingerprint>/<backend>-<dtype>/k<top_k>
    assert shards, list(cache.rglob("*"))
    scored = {h for f in shards for h in pq.read_table(f, columns=["seq_hash"]).column("seq_hash").to_pylist()}
    assert scored == {sequence_hash(ref["ids"][b]) for b in trained}

    client = MlflowClient(cluster_env["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.data.metrics["data_records_too_long"] == stats.too_long
    assert run.data.metrics["data_records"] == len(records)
    assert run.data.metrics["data_trained_tokens"] < run.data.metrics["data_tokens"]  # the prompts are not trained
    assert np.isfinite(run.data.metrics["eval_kd_student_heldout_loss"])
    assert np.isfinite(run.data.metrics["eval_teacher_heldout_loss"])
