"""The task suite as chat records (raykd/data/task_chat.py) and exact match through the chat template."""

from __future__ import annotations

import json

import pytest

from raykd.config import ConfigError, DistillConfig
from raykd.data.task_chat import ChatTask, as_chat, chat_record, load_chat_tasks, write_task_records
from raykd.data.task_suite import TaskSuite, score_completions, split_of


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_records_are_the_suite_in_chat_form(tmp_path):
    """Train records are train-split problems with their right answers; test records are the suite's test
    items; the two never share a prompt; the same seed writes the same files."""
    suite = TaskSuite()
    train, test = write_task_records(tmp_path / "a", train=300, test_per_level=20, seed=3)
    tr, te = _lines(train), _lines(test)
    assert len(tr) == 300 and len(te) == len(suite.test_items(20))
    for r in tr:
        user, asst = r["messages"]
        assert user["role"] == "user" and asst["role"] == "assistant"
        assert split_of("\n" + user["content"], r["level"]) == "train"
        a, b = user["content"].rstrip("=").split("-")
        assert int(asst["content"]) == int(a) - int(b)  # the complement family: a - b, zero-padded
    assert sorted({r["level"] for r in tr}) == [1, 2, 3, 4]
    assert te == [chat_record(p) for p in suite.test_items(20)]
    assert not {r["messages"][0]["content"] for r in tr} & {r["messages"][0]["content"] for r in te}
    again, _ = write_task_records(tmp_path / "b", train=300, test_per_level=20, seed=3)
    assert again.read_text() == train.read_text()


def test_load_filters_levels_and_caps_per_level(tmp_path):
    _, test = write_task_records(tmp_path, train=1, test_per_level=30)
    tasks = load_chat_tasks(test, levels=[2, 3], per_level=7)
    assert [t.level for t in tasks] == [2] * 7 + [3] * 7
    first = _lines(test)[[r["level"] for r in _lines(test)].index(2)]
    assert tasks[0] == ChatTask(2, (("user", first["messages"][0]["content"]),), first["messages"][1]["content"])


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not JSON"),
    ('["a"]', "a record must be a JSON object"),
    ('{"messages": [{"role": "user", "content": "1+1="}]}', "'messages' must list"),
    ('{"messages": [{"role": "user", "content": "1+1="}, {"role": "user", "content": "2"}]}', "last message"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "2"}]}', "message 0 needs"),
    ('{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}], "level": 0}',
     "'level' must be a positive integer"),
])
def test_bad_records_are_one_line_naming_file_and_line(tmp_path, line, problem):
    path = tmp_path / "t.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}\n'
                    + line + "\n")
    with pytest.raises(ConfigError) as e:
        load_chat_tasks(path)
    msg = str(e.value)
    assert msg.startswith(f"eval.tasks.records: {path}:2: ") and problem in msg and "\n" not in msg


def test_missing_file_and_no_record_at_the_levels(tmp_path):
    with pytest.raises(ConfigError, match=r"^eval.tasks.records: file not found: "):
        load_chat_tasks(tmp_path / "nope.jsonl")
    path = tmp_path / "t.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}\n')
    with pytest.raises(ConfigError, match="has no record at levels"):
        load_chat_tasks(path, levels=[3])


def test_scoring_is_exact_match_of_the_answer():
    t = as_chat(TaskSuite().test_items(1)[0])
    score = score_completions([t, t, t, t], [t.answer, f" {t.answer}\n", t.answer + "0", ""])
    assert score.correct == {t.level: 2} and score.count == {t.level: 4}


def test_config_asks_chat_when_the_data_is_chat(tmp_path):
    from raykd.eval.tasks import asks_chat, task_items

    cfg = DistillConfig(eval={"tasks": {"enabled": True, "per_level": 5}})
    assert not asks_chat(cfg) and not isinstance(task_items(cfg)[0], ChatTask)
    chat = DistillConfig(data={"source": "x.jsonl", "format": "chat"}, eval={"tasks": {"enabled": True, "per_level": 5}})
    assert asks_chat(chat) and task_items(chat) == [as_chat(p) for p in task_items(cfg)]
    forced = DistillConfig(data={"source": "x.jsonl", "format": "chat"},
                           eval={"tasks": {"enabled": True, "per_level": 5, "format": "text"}})
    assert not asks_chat(forced)
    with pytest.raises(ValueError, match="records are chat records"):
        DistillConfig(eval={"tasks": {"records": "t.jsonl", "format": "text"}})


def test_a_model_taught_in_chat_form_answers_in_chat_form():
    """A tiny model overfit on four chat conversations (rendered with raykd's template, loss on the answer and
    EOS) answers all four when asked through the template, stopping at EOS; asked as plain text it does not.
    Served decoding (the whole budget, no stop) is cut at EOS to the same completions."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from raykd.data.chat import RAYKD_CHAT_TEMPLATE, render_prompt
    from raykd.data.task_suite import score_model
    from raykd.eval.tasks import served_completions
    from raykd.models import torch_threads

    suite = TaskSuite()
    problems = suite.items("test", 1, 2) + [suite.items("test", lv, 1)[0] for lv in (2, 3)]
    tasks = [as_chat(p) for p in problems]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["<user>\n<assistant>\n" + suite.training_text(5_000, 0)], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = RAYKD_CHAT_TEMPLATE
    rows = []
    for t in tasks:
        prompt = tokenizer.encode(render_prompt(tokenizer, [{"role": "user", "content": t.messages[0][1]}]))
        rows.append((prompt, tokenizer.encode(t.answer) + [tokenizer.eos_token_id]))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.eos_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    with torch_threads(1):  # a 1-layer model: threads only fight each other
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(300):
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert loss.item() < 0.01
    assert score_model(model, tokenizer, tasks).exact_match() == 1.0
    assert score_model(model, tokenizer, problems).exact_match() < 0.5  # never seen without the template

    class Served:  # a Serve deployment's generate: greedy over the whole budget, no stop token
        class generate:
            @staticmethod
            def remote(prompts, budget):
                class Out:
                    def result(self):
                        outs = [model.generate(input_ids=torch.tensor([p]), max_new_tokens=budget, do_sample=False,
                                               eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
                        return type("Gen", (), {"tokens": outs})()
                return Out()

    served = served_completions(Served, tokenizer, tasks)
    assert served == [t.answer for t in tasks]


def test_a_chat_form_suite_without_a_template_is_one_line():
    from types import SimpleNamespace

    from raykd.eval.tasks import check_task_eval

    cfg = DistillConfig(data={"source": "x.jsonl", "format": "chat"}, eval={"tasks": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"^eval.tasks.format: the task suite is asked as chat but /m has no chat "
                                          r"template; .*$"):
        check_task_eval(cfg, SimpleNamespace(chat_template=None), None, "/m")
    check_task_eval(cfg, SimpleNamespace(chat_template="{{ x }}"), None, "/m")  # the model's own: fine
    check_task_eval(cfg, SimpleNamespace(chat_template=None), "{{ x }}", "/m")  # data.chat_template: fine
