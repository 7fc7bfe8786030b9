"""Records routed to teachers (raykd/data/routing.py): the rule per field or file, and blocks that never mix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raykd.config import DataConfig, DistillConfig
from raykd.data.packing import pack_chunk
from raykd.data.routing import Router, pack_routed

ROUTED = {"teachers": {"apps": [{"name": "general"}, {"name": "math"}, {"name": "code"}],
                       "routing": {"field": "domain", "rules": {"math": "math", "python": "code"}}},
          "data": {"source": "x.jsonl"}}


def test_router_follows_the_field_rules_and_the_default():
    router = Router.of(DistillConfig.model_validate(ROUTED))
    assert router(({"domain": "math"}), "a.jsonl:1") == 1
    assert router({"domain": "python"}, "a.jsonl:2") == 2
    assert router({"domain": "poetry"}, "a.jsonl:3") == 0  # no rule: the first listed teacher
    assert router({"text": "no domain"}, "a.jsonl:4") == 0 and router({"domain": None}, "a.jsonl:5") == 0
    assert Router.from_dict(json.loads(json.dumps(router.to_dict()))) == router  # crosses to Ray Data actors
    tree = {**ROUTED, "teachers": {**ROUTED["teachers"], "routing": {**ROUTED["teachers"]["routing"], "default": "code"}}}
    assert Router.of(DistillConfig.model_validate(tree))({"domain": "poetry"}, "a.jsonl:3") == 2
    assert Router.of(DistillConfig()) is None


def test_router_by_file_matches_path_or_name_globs():
    tree = {**ROUTED, "teachers": {**ROUTED["teachers"], "routing": {"by": "file", "rules": {"gsm8k/*": "math",
                                                                                        "*.py.jsonl": "code"}}}}
    router = Router.of(DistillConfig.model_validate(tree))
    assert router({"domain": "python"}, "/data/gsm8k/train.jsonl:12") == 1  # the field does not matter
    assert router("piece of text", "/data/src/lib.py.jsonl:1") == 2
    assert router({}, "/data/stories/a.jsonl:3") == 0


def _encoded(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = rng.integers(10, 100, rng.integers(3, 16)).astype(np.int32)
        out.append((ids, np.ones(len(ids), np.uint8), 1.0, f"f.jsonl:{i + 1}"))
    return out


@pytest.mark.parametrize("fmt", ["text", "prompt_completion"])
def test_blocks_hold_the_records_of_one_teacher(fmt):
    encoded = _encoded(40)
    routes = [int(i % 3 == 0) for i in range(40)]
    packed = pack_routed(encoded, routes, fmt, 16, 0, weighted=False)
    assert packed.route.dtype == np.int8 and len(packed.route) == len(packed.ids)
    for teacher in (0, 1):
        mine = packed.ids[packed.route == teacher]
        alone = pack_chunk([e for e, r in zip(encoded, routes) if r == teacher], fmt, 16, 0, False)
        np.testing.assert_array_equal(mine, alone.ids)  # exactly that teacher's records, packed as usual
    assert packed.stats.records == 40
    # Interleaved in proportion: the held-out tail of the stream (its last blocks) holds both teachers' last ones.
    tail = packed.route[-max(2, len(packed.route) // 4):]
    assert set(tail.tolist()) == {0, 1}
    assert packed.stats.tokens == sum(len(e[0]) for e in encoded)


def test_encode_chunk_routes_jsonl_records_and_the_chunk_table_carries_them(tmp_path, tiny_teacher):
    from transformers import AutoTokenizer

    from raykd.data.blocks import encode_chunk
    from raykd.data.ingest import _chunk_stats, chunk_table
    from raykd.data.records import RecordEncoder
    from raykd.data.sources import plan_chunks

    src = tmp_path / "mixed.jsonl"
    rows = [{"text": f"story number {i} about a cat", "domain": "general"} if i % 2 else
            {"text": f"{i} plus {i} is {2 * i}", "domain": "math"} for i in range(30)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DistillConfig.model_validate({**ROUTED, "data": {"source": str(src), "seq_len": 16}})
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    encoder = RecordEncoder(tok, cfg.data)
    (chunk,) = plan_chunks(cfg.data)
    packed = encode_chunk(chunk, cfg.data, encoder, 0, Router.of(cfg))
    assert set(packed.route.tolist()) == {0, 1}
    math_text = tok.decode(packed.ids[packed.route == 1].reshape(-1), skip_special_tokens=True)
    other_text = tok.decode(packed.ids[packed.route == 0].reshape(-1), skip_special_tokens=True)
    assert "plus" in math_text and "cat" not in math_text and "plus" not in other_text and "cat" in other_text
    stats = _chunk_stats(chunk_table([(0, packed)], weighted=False))
    assert stats[0]["route"] == packed.route.tolist() and stats[0]["blocks"] == len(packed.ids)
    plain = encode_chunk(chunk, cfg.data, encoder, 0)  # no router: as before, no route column
    assert plain.route is None and "route" not in _chunk_stats(chunk_table([(0, plain)], weighted=False))[0]
