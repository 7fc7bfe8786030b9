"""Task-suite exact match for `raykd distill`'s table: teacher, KD student and hard-label student.

    scores = score_task_suite(cfg, prep.teacher_path, handle, {"kd student": dir, ...})  # {name: TaskScore}
    print(format_task_table(scores))          # raykd/eval/table.py: EM per level + retention vs the teacher

Students are small: they are decoded in-process (batched greedy, raykd/data/task_suite.py). So is a teacher
that is a local directory of at most IN_PROCESS_MAX_PARAMS parameters (the offline tiny teacher has ~1M);
any bigger one is never loaded into the driver: its greedy completions come from its Serve deployment
(`generate`, one prompt at a time: slow, but a 70B teacher stays where it is) and are scored by the same scorer.
"""

from __future__ import annotations

from pathlib import Path

from raykd.config import DistillConfig
from raykd.data.task_suite import Problem, TaskScore, TaskSuite, max_new_tokens, score_completions, score_model


IN_PROCESS_MAX_PARAMS = 100_000_000  # ~0.4 GB in float32: decoding it in the driver costs seconds


def task_items(cfg: DistillConfig) -> list[Problem]:
    """The test split's problems the table scores (`eval.tasks.per_level` per level, seeded by 0: the same
    prompts for every run and seed, so rows and runs compare)."""
    return TaskSuite(levels=tuple(cfg.eval.tasks.levels)).test_items(cfg.eval.tasks.per_level, seed=0)


def _load(model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"), AutoTokenizer.from_pretrained(model_dir))


def served_completions(handle, tokenizer, items: list[Problem]) -> list[str]:
    """Greedy completions from a Serve deployment (`handle.generate`), one call per token budget."""
    import numpy as np

    completions = [""] * len(items)
    groups: dict[int, list[int]] = {}
    for j, p in enumerate(items):
        groups.setdefault(max_new_tokens(p), []).append(j)
    for budget, idx in sorted(groups.items()):
        prompts = [np.asarray(tokenizer.encode(items[j].prompt, add_special_tokens=False), np.int64) for j in idx]
        gen = handle.generate.remote(prompts, budget).result()
        for j, toks in zip(idx, gen.tokens):
            completions[j] = tokenizer.decode([int(t) for t in toks], skip_special_tokens=True)
    return completions


def score_task_suite(cfg: DistillConfig, teacher_path: str, handle, student_dirs: dict[str, Path]) -> dict[str, TaskScore]:
    """{"teacher": ..., <student name>: ...} on `task_items(cfg)`."""
    from raykd.models import safetensors_param_count

    items = task_items(cfg)
    if Path(teacher_path).is_dir() and 0 < safetensors_param_count(teacher_path) <= IN_PROCESS_MAX_PARAMS:
        scores = {"teacher": score_model(*_load(teacher_path), items)}
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(teacher_path)
        scores = {"teacher": score_completions(items, served_completions(handle, tokenizer, items))}
    for name, d in student_dirs.items():
        student, tok = _load(str(d))
        scores[name] = score_model(student, tok, items)
    return scores
