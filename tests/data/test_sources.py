"""data.source: files, directories, globs, Parquet and save_to_disk; chunks cut at line ends with their line
numbers; every malformed record is one line naming file and line, found before any cluster starts."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raykd.config import ConfigError, DataConfig, DistillConfig, load_config
from raykd.data.sources import DataError, iter_examples, load_texts, plan_chunks, read_chunk


def _jsonl(path, rows, blank_every=0):
    lines = []
    for i, r in enumerate(rows):
        lines.append(json.dumps(r))
        if blank_every and i % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_chunks_cover_the_file_at_line_ends_with_absolute_line_numbers(tmp_path):
    rows = [{"text": f"record {i} " + "x" * (i % 37)} for i in range(400)]
    src = _jsonl(tmp_path / "d.jsonl", rows, blank_every=7)
    cfg = DataConfig(source=src, chunk_mb=2000 / (1 << 20))  # ~2 kB chunks
    chunks = plan_chunks(cfg)
    assert len(chunks) > 5 and [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0 and all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1].end == (tmp_path / "d.jsonl").stat().st_size and chunks[-1].last_of_file
    lines = (tmp_path / "d.jsonl").read_text().split("\n")
    seen = []
    for c in chunks:
        for where, rec in read_chunk(c, cfg):
            lineno = int(where.rsplit(":", 1)[1])
            assert json.loads(lines[lineno - 1]) == rec  # the line number is the record's line in the file
            seen.append(rec)
    assert seen == rows
    assert [e.text for e in iter_examples(cfg)] == [r["text"] for r in rows]


def test_directories_globs_parquet_and_save_to_disk(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    _jsonl(d / "b.jsonl", [{"text": "b1"}, {"text": "b2"}])
    _jsonl(d / "a.jsonl", [{"text": "a1"}])
    table = pa.table({"text": [f"p{i}" for i in range(10)]})
    pq.write_table(table, d / "c.parquet", row_group_size=3)
    (d / "notes.md").write_text("ignored")
    texts = [e.text for e in iter_examples(DataConfig(source=str(d)))]
    assert texts == ["a1", "b1", "b2"] + [f"p{i}" for i in range(10)]  # sorted paths, row groups in order
    assert [e.text for e in iter_examples(DataConfig(source=str(d / "*.jsonl")))] == ["a1", "b1", "b2"]
    pq_chunks = plan_chunks(DataConfig(source=str(d / "c.parquet"), chunk_mb=1e-9))
    assert [(c.start, c.end, c.first_line) for c in pq_chunks] == [(0, 1, 1), (1, 2, 4), (2, 3, 7), (3, 4, 10)]

    saved = _save_to_disk(tmp_path / "saved", {"question": ["q1", "q2", "q3"], "answer": ["1", "2", "3"]})
    cfg = DataConfig(source=str(saved), format="prompt_completion", prompt_field="question", completion_field="answer")
    assert [(e.prompt, e.completion) for e in iter_examples(cfg)] == [("q1", "1"), ("q2", "2"), ("q3", "3")]
    dd = tmp_path / "dd"
    _save_to_disk(dd / "train", {"text": ["t"]})
    _save_to_disk(dd / "test", {"text": ["u"]})
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert [e.text for e in iter_examples(DataConfig(source=str(dd), split="test"))] == ["u"]
    with pytest.raises(ConfigError, match="data.split: .* not 'dev'"):
        plan_chunks(DataConfig(source=str(dd), split="dev"))


def _save_to_disk(path, columns):
    """What `datasets.Dataset.save_to_disk` writes (Arrow stream files listed in state.json), without `datasets`."""
    path.mkdir(parents=True)
    table = pa.table(columns)
    with pa.ipc.new_stream(str(path / "data-00000-of-00001.arrow"), table.schema) as w:
        for batch in table.to_batches(max_chunksize=2):
            w.write_batch(batch)
    (path / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (path / "dataset_info.json").write_text("{}")
    return path


def test_text_files_and_builtin():
    cfg = DataConfig(source="builtin", builtin_chars=2000)
    [doc] = load_texts(cfg)
    assert len(doc) >= 1500


def test_a_txt_file_is_one_document_cut_into_chunks(tmp_path):
    text = "".join(f"line {i} of the story.\n" for i in range(300))
    (tmp_path / "t.txt").write_text(text)
    cfg = DataConfig(source=str(tmp_path / "t.txt"), chunk_mb=1000 / (1 << 20))
    chunks = plan_chunks(cfg)
    assert len(chunks) > 3 and [c.last_of_file for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert load_texts(cfg) == [text]
    assert [e.ends_document for e in iter_examples(cfg)] == [c.last_of_file for c in chunks]


@pytest.mark.parametrize("content, suffix, overrides, needle", [
    ("", ".txt", {}, "is empty"),
    ("  \n", ".txt", {}, "is empty"),
    ("", ".jsonl", {}, "has no records"),
    ('{"text": "a"}\n{"txt": "b"}\n', ".jsonl", {}, ":2: no field 'text' (data.text_fields)"),
    ('{"text": "a"}\nnot json\n', ".jsonl", {}, ":2: not valid JSON"),
    ('{"text": "a"}\n[1, 2]\n', ".jsonl", {}, ":2: a record must be a JSON object"),
    ("x", ".csv", {}, "must be 'builtin'"),
    ('{"text": "a"}\n', ".jsonl", {"format": "chat"}, ":1: no field 'messages' (data.messages_field)"),
    ('{"messages": []}\n', ".jsonl", {"format": "chat"}, ":1: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', ".jsonl", {"format": "chat"}, ":1: no assistant message"),
    ('{"messages": [{"role": "user"}]}\n', ".jsonl", {"format": "chat"}, ":1: message 0 (user) has no 'content'"),
    ('{"messages": [{"content": "x"}]}\n', ".jsonl", {"format": "chat"}, ":1: message 0 has no 'role'"),
    ('{"prompt": "p"}\n', ".jsonl", {"format": "prompt_completion"}, ":1: no field 'completion'"),
    ('{"prompt": 3, "completion": "c"}\n', ".jsonl", {"format": "prompt_completion"}, "'prompt' must be a string"),
    ('{"prompt": "p", "completion": ""}\n', ".jsonl", {"format": "prompt_completion"}, "is empty"),
    ('{"q": "p"}\n', ".jsonl", {"format": "chat", "chat_fields": {"user": "q", "assistant": "a"}},
     ":1: no field 'a' (data.chat_fields.assistant)"),
])
def test_bad_data_is_one_line_with_file_and_line(tmp_path, content, suffix, overrides, needle):
    p = tmp_path / f"d{suffix}"
    p.write_text(content)
    with pytest.raises(ConfigError) as err:
        plan_chunks(DataConfig(source=str(p), **overrides))
    assert needle in str(err.value) and str(p) in str(err.value) and "\n" not in str(err.value)


def test_missing_sources():
    with pytest.raises(ConfigError, match="file not found"):
        plan_chunks(DataConfig(source="/nonexistent/x.jsonl"))
    with pytest.raises(ConfigError, match="no file matches"):
        plan_chunks(DataConfig(source="/nonexistent/*.jsonl"))


def test_records_past_validate_mb_are_checked_when_read(tmp_path):
    rows = [{"text": "ok " * 20}] * 200 + [{"txt": "bad"}]
    src = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(source=src, validate_mb=1000 / (1 << 20), chunk_mb=4000 / (1 << 20))
    chunks = plan_chunks(cfg)  # the bad line is past the checked first kilobyte: no error yet
    with pytest.raises(DataError, match=r"d.jsonl:201: no field 'text'"):
        list(iter_examples(cfg, chunks=chunks))  # ... but reading it (what each Ray Data task does) reports it
    with pytest.raises(DataError, match=r"d.jsonl:201: no field 'text'"):
        plan_chunks(DataConfig(source=src))  # the default budget checks it all up front


@pytest.mark.parametrize("bad,msg", [
    ({"text": "a"}, r"no field 'score' \(data.weight_field\)"),
    ({"text": "a", "score": -1}, "finite number >= 0"),
    ({"text": "a", "score": "high"}, "finite number >= 0"),
    ({"text": "a", "score": float("nan")}, "finite number >= 0"),
    ({"text": "a", "score": True}, "finite number >= 0"),
])
def test_bad_weights_fail_with_file_and_line(tmp_path, bad, msg):
    src = _jsonl(tmp_path / "d.jsonl", [{"text": "ok", "score": 1}, bad])
    with pytest.raises(ConfigError, match=msg) as e:
        plan_chunks(DataConfig(source=src, weight_field="score"))
    assert "d.jsonl:2: " in str(e.value)


def test_format_and_weights_need_records():
    with pytest.raises(ConfigError, match="weight_field needs a source of records"):
        load_config(DistillConfig, None, ["data.weight_field=score"])
    with pytest.raises(ConfigError, match="format chat needs a source of records"):
        load_config(DistillConfig, None, ["data.format=chat"])
    assert load_config(DistillConfig, None, ["data.source=x.jsonl", "data.weight_field=score"]).data.weight_field == "score"
    assert load_config(DistillConfig, None, ["data.source=d/", "data.format=chat"]).data.format == "chat"


def test_shakespeare_source_is_the_packaged_text_after_the_teachers_part():
    from raykd.config.teacher import SHAKESPEARE_TEACHER_CHARS
    from raykd.data.sources import shakespeare_text

    whole = shakespeare_text("all")
    assert len(whole) == 1_115_394 and whole.startswith("First Citizen:")  # the packaged file, intact
    (text,) = load_texts(DataConfig(source="shakespeare"))
    assert text == shakespeare_text("student")
    assert whole.index(text) == SHAKESPEARE_TEACHER_CHARS  # right after the teacher's part, no overlap
    (mixed,) = load_texts(DataConfig(source="shakespeare", task_fraction=0.2, builtin_seed=1))
    assert len(mixed) > len(text) * 1.2 and "99999999-" in mixed


def test_task_fraction_needs_one_text():
    for source in ("x.jsonl", "x.txt"):
        with pytest.raises(ConfigError, match="task_fraction"):
            load_config(DistillConfig, None, [f"data.source={source}", "data.task_fraction=0.2"])
