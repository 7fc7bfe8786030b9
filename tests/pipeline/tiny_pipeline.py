"""A three-stage pipeline small enough for tests (tiny teacher, a few steps per stage), as a config tree.

    tree = tiny_pipeline(tiny_teacher, tmp_path, name="p1")
    write_yaml(tree, tmp_path / "p.yaml")
"""

from __future__ import annotations

from pathlib import Path

import yaml


def tiny_pipeline(teacher: Path, tmp: Path, name: str = "tiny", tracking_uri: str | None = None,
                  general_steps: int = 8, instruction_steps: int = 6, domain_steps: int = 8) -> dict:
    qa = ["question", "answer"]
    return {
        "name": name,
        "output_dir": str(tmp / "out"),
        "datasets": {
            "general": {"source": "builtin", "builtin_chars": 20_000, "builtin_seed": 1},
            "math_train": {"source": "generated", "generated": {"records": 300, "seed": 11}, "text_fields": qa},
            "math_test": {"source": "generated", "generated": {"records": 40, "seed": 12}, "text_fields": qa},
        },
        "defaults": {
            "teacher": {"path": str(teacher), "num_cpus": 1},
            "student": {"num_layers": 1, "hidden_size": None},
            "data": {"seq_len": 64},
            "loss": {"top_k": 8},
            "train": {"num_workers": 1, "batch_size": 4, "max_steps": general_steps, "lr": 3e-3, "warmup_steps": 1,
                      "checkpoint_every": 4, "log_every": 2, "storage_path": str(tmp / "runs")},
        },
        "stages": [
            {"name": "general", "kind": "general", "dataset": "general"},
            {"name": "instruction", "kind": "instruction", "dataset": "math_train",
             "adapt_teacher": {"steps": 2, "batch_size": 4},
             # Sampled: the tiny teacher's greedy answer is all newlines.
             "responses": {"max_prompts": 6, "max_new_tokens": 24, "temperature": 1.0, "stop_after": None},
             "loss": {"alpha": 0.7}, "train": {"max_steps": instruction_steps}},
            {"name": "domain", "kind": "domain", "dataset": "math_train",
             "adapt_teacher": {"steps": 2, "batch_size": 4},
             "loss": {"temperature": 1.0, "alpha": 0.8}, "train": {"max_steps": domain_steps}},
        ],
        "eval": {"general": "general", "domain": "math_test", "exact_match": "math_test", "seq_len": 64,
                 "max_sequences": 4, "em_problems": 2, "em_max_new_tokens": 16, "gen_prompts": 1, "gen_tokens": 8},
        "registry": {"model_name": f"{name}-student"},
        "mlflow": {"experiment": "pipelines", "tracking_uri": tracking_uri or f"sqlite:///{tmp}/mlflow.db"},
    }


def write_yaml(tree: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path
