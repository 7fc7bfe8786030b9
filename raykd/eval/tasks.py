"""Task-suite exact match for `raykd distill`'s table: teacher, KD student and hard-label student.

    scores = score_task_suite(cfg, prep.teacher_path, handle, {"kd student": dir, ...})  # {name: TaskScore}
    print(format_task_table(scores))          # raykd/eval/table.py: EM per level + retention vs the teacher

Students are small: they are decoded in-process (batched greedy, raykd/data/task_suite.py). So is a teacher
that is a local directory of at most IN_PROCESS_MAX_PARAMS parameters (the offline tiny teacher has ~1M);
any bigger one is never loaded into the driver: its greedy completions come from its Serve deployment
(`generate`, one prompt at a time: slow, but a 70B teacher stays where it is) and are scored by the same scorer.

Chat data is examined in chat form (`eval.tasks.format`, raykd/data/task_chat.py): each problem a user turn
through the chat template, the answer what the model writes before EOS; `eval.tasks.records` scores a .jsonl
of chat records instead of the generated suite.
"""

from __future__ import annotations

from pathlib import Path

from raykd.config import ConfigError, DistillConfig
from raykd.data.task_chat import as_chat, load_chat_tasks
from raykd.data.task_suite import (TaskScore, TaskSuite, ask_text, is_chat, max_new_tokens, score_completions,
                                   score_model)


IN_PROCESS_MAX_PARAMS = 100_000_000  # ~0.4 GB in float32: decoding it in the driver costs seconds


def asks_chat(cfg: DistillConfig) -> bool:
    """Whether the task suite is asked in chat form (`eval.tasks.format`; auto follows the data)."""
    t = cfg.eval.tasks
    data = getattr(cfg, "data", None)  # the compression study's config has a data section too
    return t.format == "chat" or (t.format == "auto" and (t.records is not None or getattr(data, "format", "") == "chat"))


def task_items(cfg: DistillConfig) -> list:
    """What the table scores: the test split's problems (`eval.tasks.per_level` per level, seeded by 0: the
    same prompts for every run and seed, so rows and runs compare), as ChatTasks when asked in chat form, or
    the chat records of `eval.tasks.records` (one ConfigError line for a missing file or a bad record)."""
    t = cfg.eval.tasks
    if t.records is not None:
        return load_chat_tasks(t.records, list(t.levels), t.per_level)
    items = TaskSuite(levels=tuple(t.levels)).test_items(t.per_level, seed=0)
    return [as_chat(p) for p in items] if asks_chat(cfg) else items


def check_task_eval(cfg: DistillConfig, tokenizer, template: str | None, tokenizer_path: str) -> None:
    """Before any model is trained: a chat-form suite has a template to be asked with (the records were
    loaded, `task_items`, before the teacher was built)."""
    if not cfg.eval.tasks.enabled:
        return
    if asks_chat(cfg) and template is None and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"eval.tasks.format: the task suite is asked as chat but {tokenizer_path} has no chat "
                          "template; use a model with one, chat data with data.chat_template, or (without "
                          "eval.tasks.records) eval.tasks.format=text")


def _load(model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"), AutoTokenizer.from_pretrained(model_dir))


def served_completions(handle, tokenizer, items: list, chat_template: str | None = None) -> list[str]:
    """Greedy completions from a Serve deployment (`handle.generate`), one call per token budget; a ChatTask's
    is asked through the chat template and cut at the first EOS (the deployment generates the whole budget)."""
    import numpy as np

    completions = [""] * len(items)
    groups: dict[int, list[int]] = {}
    for j, p in enumerate(items):
        groups.setdefault(max_new_tokens(p), []).append(j)
    for budget, idx in sorted(groups.items()):
        prompts = [np.asarray(tokenizer.encode(ask_text(items[j], tokenizer, chat_template), add_special_tokens=False),
                              np.int64) for j in idx]
        gen = handle.generate.remote(prompts, budget).result()
        for j, toks in zip(idx, gen.tokens):
            toks = [int(t) for t in toks]
            if is_chat(items[j]) and tokenizer.eos_token_id in toks:
                toks = toks[: toks.index(tokenizer.eos_token_id)]
            completions[j] = tokenizer.decode(toks, skip_special_tokens=True)
    return completions


def score_task_suite(cfg: DistillConfig, teacher_path: str, handle, student_dirs: dict[str, Path],
                     chat_template: str | None = None) -> dict[str, TaskScore]:
    """{"teacher": ..., <student name>: ...} on `task_items(cfg)`; `chat_template`: data.chat_template's text
    (None: each model's tokenizer's own), used by chat-form items only."""
    from raykd.models import safetensors_param_count

    items = task_items(cfg)
    if Path(teacher_path).is_dir() and 0 < safetensors_param_count(teacher_path) <= IN_PROCESS_MAX_PARAMS:
        scores = {"teacher": score_model(*_load(teacher_path), items, chat_template=chat_template)}
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(teacher_path)
        scores = {"teacher": score_completions(items, served_completions(handle, tokenizer, items, chat_template))}
    for name, d in student_dirs.items():
        student, tok = _load(str(d))
        scores[name] = score_model(student, tok, items, chat_template=chat_template)
    return scores
