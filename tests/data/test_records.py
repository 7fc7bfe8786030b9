"""Records → tokens + loss mask: chat rendered by the template (assistant turns trained, nothing else),
prompt/completion, text; the chat template's absence or misbehaviour is one line naming data.chat_template."""

import numpy as np
import pytest

from raykd.config import ConfigError, DataConfig
from raykd.data.chat import RAYKD_CHAT_TEMPLATE, render_chat, render_prompt
from raykd.data.records import Example, RecordEncoder, example_of, load_chat_template

CHAT = [{"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 + 3 = 5\n#### 5"},
        {"role": "user", "content": "And 4 plus 4?"},
        {"role": "assistant", "content": "#### 8"}]


@pytest.fixture(scope="module")
def tok(tiny_teacher):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_teacher)


def _chat_cfg(**kw):
    return DataConfig(source="x.jsonl", format="chat", chat_template=RAYKD_CHAT_TEMPLATE, **kw)


def test_chat_trains_exactly_the_assistant_turns(tok):
    cfg = _chat_cfg()
    enc = RecordEncoder(tok, cfg, load_chat_template(cfg, tok))
    ids, mask = enc.encode(example_of({"messages": CHAT}, cfg, "x.jsonl:1"))
    rendered = tok.apply_chat_template(CHAT, chat_template=RAYKD_CHAT_TEMPLATE, tokenize=False)
    # The tokens are exactly the rendered conversation's: what the student and the teacher both see.
    assert ids.tolist() == tok(rendered, add_special_tokens=False)["input_ids"]
    # The trained tokens, read back, are the two answers, each with the end-of-turn EOS.
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(int(t))
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    assert [tok.decode(r) for r in runs] == ["2 + 3 = 5\n#### 5" + tok.eos_token, "#### 8" + tok.eos_token]
    # Everything else (system, user turns, role tags) carries no loss.
    untrained = tok.decode(ids[mask == 0])
    for text in ("You add numbers.", "What is 2 plus 3?", "And 4 plus 4?", "<user>", "<assistant>"):
        assert text in untrained


def test_chat_fields_build_the_same_conversation(tok):
    fields = _chat_cfg(chat_fields={"user": "question", "assistant": "answer"})
    plain = _chat_cfg()
    enc_f, enc_m = RecordEncoder(tok, fields, RAYKD_CHAT_TEMPLATE), RecordEncoder(tok, plain, RAYKD_CHAT_TEMPLATE)
    a = enc_f.encode(example_of({"question": "q?", "answer": "#### 1"}, fields, "f:1"))
    b = enc_m.encode(example_of({"messages": [{"role": "user", "content": "q?"},
                                              {"role": "assistant", "content": "#### 1"}]}, plain, "f:1"))
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


def test_python_rendering_matches_the_jinja_template(tok):
    assert render_chat(CHAT, tok.eos_token) == tok.apply_chat_template(CHAT, chat_template=RAYKD_CHAT_TEMPLATE,
                                                                       tokenize=False)
    assert render_prompt(tok, CHAT[:2], RAYKD_CHAT_TEMPLATE).endswith("<user>\nWhat is 2 plus 3?\n<assistant>\n")


def test_a_tokenizer_without_template_names_data_chat_template(tok, tmp_path):
    cfg = DataConfig(source="x.jsonl", format="chat")
    with pytest.raises(ConfigError, match=r"^data.chat_template: .* has no chat template"):
        load_chat_template(cfg, tok, "teacher-dir")
    f = tmp_path / "t.jinja"
    f.write_text(RAYKD_CHAT_TEMPLATE)
    assert load_chat_template(DataConfig(source="x.jsonl", format="chat", chat_template=str(f)), tok) == RAYKD_CHAT_TEMPLATE
    with pytest.raises(ConfigError, match="data.chat_template: file not found"):
        load_chat_template(DataConfig(source="x.jsonl", format="chat", chat_template="missing.jinja"), tok)


def test_a_template_that_is_not_prefix_stable_is_refused(tok):
    # Numbers every turn from the end: a longer conversation changes how the earlier turns render.
    bad = "{% for m in messages %}{{ (messages|length - loop.index)|string + m['content'] }}{% endfor %}"
    cfg = _chat_cfg()
    enc = RecordEncoder(tok, cfg, bad)
    with pytest.raises(ConfigError, match=r"data.chat_template: the template does not render f:9 prefix-stably"):
        enc.encode(example_of({"messages": CHAT}, cfg, "f:9"))
    broken = RecordEncoder(tok, cfg, "{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ConfigError, match="data.chat_template: rendering f:2 failed"):
        broken.encode(example_of({"messages": CHAT}, cfg, "f:2"))


def test_prompt_completion_trains_the_completion_and_eos(tok):
    cfg = DataConfig(source="x.jsonl", format="prompt_completion", prompt_field="question", completion_field="answer")
    enc = RecordEncoder(tok, cfg)
    ids, mask = enc.encode(example_of({"question": "the cat sat", "answer": " on the mat."}, cfg, "f:1"))
    n_prompt = len(tok("the cat sat", add_special_tokens=False)["input_ids"])
    assert mask[:n_prompt].sum() == 0 and mask[n_prompt:].all()
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[n_prompt:-1]) == " on the mat."


def test_text_trains_every_token_but_the_first(tok):
    cfg = DataConfig(source="x.jsonl")
    ids, mask = RecordEncoder(tok, cfg).encode(Example("f:1", text="the dog ran."))
    assert ids[-1] == tok.eos_token_id and mask[0] == 0 and mask[1:].all()
    ids2, _ = RecordEncoder(tok, cfg).encode(Example("f:1", text="the dog ran.", ends_document=False))
    assert (ids2 == ids[:-1]).all()  # a .txt piece that does not end its file gets no EOS
    assert np.asarray(ids).dtype == np.int32
