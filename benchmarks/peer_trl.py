"""raykd vs TRL's GKDTrainer on the same teacher, student and data, one after the other on this machine.

    pip install -e '.[bench]'                 # trl 1.16 (a benchmark extra, never a runtime dependency)
    python benchmarks/peer_trl.py             # ~10-15 min on 2 cores
    python benchmarks/peer_trl.py --steps 30 --trl-steps 40 --only trl raykd-1     # a quick look

Teacher: raykd's tiny Llama, 4 layers x 256, vocab 4096 (benchmarks/common.py: built once, cached). Student: 2 layers x 128 derived
from it (raykd/models.py, initialised from the teacher's layers 0 and 3); TRL gets the same initial weights
as an HF directory. Data: GSM8K train (../shared/data/gsm8k), max length 512, batch 8.

  trl            GKDTrainer off-policy (lmbda 0, beta 0, temperature 2): a chat per example (user: question,
                 assistant: answer; loss on the answer), padded per batch, the teacher's full logits computed
                 in the same process every step; torch on both cores.
  raykd-1        `raykd distill` defaults (alpha 0.5, T 2, top-20 signals from the teacher on a Serve replica,
                 hf backend; 1 Train worker, DDP, fp32), GSM8K packed into 512-token blocks, batch 8.
  raykd-1-fsdp   the same with train.strategy=fsdp train.precision=bf16.
  raykd-2        2 Train workers (batch 8 each), DDP fp32.
  raykd-2-fsdp   2 workers, FSDP + bf16.

raykd's signal cache is off, so every step waits for the live teacher (a cached second epoch would be free).
Student tokens/s = tokens through the student's forward and backward per second (TRL: non-padding tokens),
excluding setup: TRL from its 6th step to the end; raykd its logged windows after the first (every 5 steps),
total tokens / total time. Writes benchmarks/results/peer_trl.json and .md (machine, load averages, command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
STUDENT = {"num_layers": 2, "hidden_size": 128}
SEQ_LEN, BATCH, LOG_EVERY, TRL_WARMUP = 512, 8, 5, 5
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
RAYKD_RUNS = {
    "raykd-1": {"train.num_workers": 1},
    "raykd-1-fsdp": {"train.num_workers": 1, "train.strategy": "fsdp", "train.precision": "bf16"},
    "raykd-2": {"train.num_workers": 2},
    "raykd-2-fsdp": {"train.num_workers": 2, "train.strategy": "fsdp", "train.precision": "bf16"},
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run_trl(teacher: Path, student_dir: Path, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tok = AutoTokenizer.from_pretrained(teacher)
    tok.chat_template = CHAT_TEMPLATE
    chats = []
    for line in GSM8K.read_text().splitlines():  # the first chats that fit max_length whole (TRL refuses a
        r = json.loads(line)                      # chat whose answer alone fills the window)
        chat = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        if len(tok.apply_chat_template(chat, tokenize=True)["input_ids"]) <= SEQ_LEN:
            chats.append({"messages": chat})
        if len(chats) == steps * BATCH + BATCH:
            break
    data = Dataset.from_list(chats)
    meter = {"tokens": 0, "t0": None, "t1": None, "measuring": False}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == TRL_WARMUP and meter["t0"] is None:
                meter["t0"], meter["measuring"] = time.perf_counter(), True

        def on_train_end(self, args, state, control, **kw):
            meter["t1"] = time.perf_counter()

    class CountingGKD(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if meter["measuring"]:
                meter["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    args = GKDConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=2e-3,
                     lmbda=0.0, beta=0.0, temperature=2.0, max_length=SEQ_LEN, logging_steps=LOG_EVERY,
                     report_to="none", save_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0)
    trainer = CountingGKD(model=AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32),
                          teacher_model=AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32),
                          args=args, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    seconds = meter["t1"] - meter["t0"]
    return {"tokens_per_s": meter["tokens"] / seconds, "tokens": meter["tokens"], "seconds": seconds,
            "steps_measured": steps - TRL_WARMUP, "torch_threads": torch.get_num_threads()}


def run_raykd(name: str, teacher: Path, steps: int, tmp: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from raykd.config import DistillConfig, load_config
    from raykd.distill import run_distill

    overrides = {
        "run_name": name, "output_dir": str(tmp / "outputs"), "teacher.path": str(teacher),
        "student.num_layers": STUDENT["num_layers"], "student.hidden_size": STUDENT["hidden_size"],
        "data.source": str(GSM8K), "data.text_fields": "[question, answer]", "data.seq_len": SEQ_LEN,
        "train.batch_size": BATCH, "train.max_steps": steps, "train.log_every": LOG_EVERY,
        "train.checkpoint_every": steps, "train.storage_path": str(tmp / "runs"), "signals.cache": False,
        "eval.baseline": False, "eval.max_sequences": 8, "eval.gen_prompts": 1, "eval.gen_tokens": 8,
        "mlflow.experiment": "peer-trl", "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        **RAYKD_RUNS[name],
    }
    cfg = load_config(DistillConfig, None, [f"{k}={v}" for k, v in overrides.items()])
    result = run_distill(cfg)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    rates = [m.value for m in sorted(client.get_metric_history(result["run_id"], "student_tokens_per_s"),
                                     key=lambda m: m.step)][1:]  # the first window includes the first step
    waits = [m.value for m in client.get_metric_history(result["run_id"], "teacher_wait_fraction")][1:]
    # Equal tokens per window: total tokens / total time is the harmonic mean of the windows' rates.
    return {"tokens_per_s": len(rates) / sum(1 / r for r in rates), "windows": rates,
            "teacher_wait_fraction": sum(waits) / len(waits), "steps_measured": LOG_EVERY * len(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="raykd optimizer steps per run")
    ap.add_argument("--trl-steps", type=int, default=80, help="TRL optimizer steps")
    ap.add_argument("--only", nargs="*", default=["trl", *RAYKD_RUNS], choices=["trl", *RAYKD_RUNS])
    ap.add_argument("--tag", default="", help="suffix of the results files")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from common import TEACHER, describe, loadavg, reference_teacher, write_results

    from raykd.config import StudentConfig
    from raykd.models import build_student

    teacher = reference_teacher()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        student, _ = build_student(str(teacher), StudentConfig(**STUDENT), seed=0)  # what raykd derives too
        student.save_pretrained(tmp / "student_init")
        params = sum(p.numel() for p in student.parameters())
        del student
        for name in args.only:
            before = loadavg()
            log(f"{name}: load average {before}")
            t0 = time.perf_counter()
            if name == "trl":
                runs[name] = run_trl(teacher, tmp / "student_init", args.trl_steps, tmp / "trl")
            else:
                runs[name] = run_raykd(name, teacher, args.steps, tmp)
            runs[name].update(load_avg_before=before, load_avg_after=loadavg(), wall_s=time.perf_counter() - t0)
            log(f"{name}: {runs[name]['tokens_per_s']:,.0f} student tokens/s, load {runs[name]['load_avg_after']}")
    data = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": ("python benchmarks/peer_trl.py " + " ".join(sys.argv[1:])).strip(), "machine": describe(),
            "teacher": {k: TEACHER[k] for k in ("num_layers", "hidden_size", "vocab_size")}, "student_params": params,
            "seq_len": SEQ_LEN, "batch": BATCH, "runs": runs}
    import trl

    data["machine"]["trl"] = trl.__version__
    write_results("peer_trl", args.tag, data, render)


def render(d: dict) -> str:
    from common import describe_line

    runs = d["runs"]
    trl_rate = runs.get("trl", {}).get("tokens_per_s")
    lines = [
        "# raykd vs TRL GKDTrainer: student tokens/s on the same teacher, student and data",
        "",
        f"`{d['command']}` on {d['date'][:10]}: {describe_line(d['machine'])}, trl {d['machine']['trl']}.",
        "",
        f"Teacher: tiny Llama {d['teacher']['num_layers']} x {d['teacher']['hidden_size']}, vocab "
        f"{d['teacher']['vocab_size']}; student 2 x 128 ({d['student_params'] / 1e6:.2f}M params, initialised from "
        f"the teacher), GSM8K, max length {d['seq_len']}, batch {d['batch']} (per worker). TRL: GKDTrainer "
        "off-policy (lmbda 0, beta 0, T 2), chats padded per batch, teacher logits in-process. raykd: `raykd "
        "distill` defaults, teacher on a Serve replica (hf backend), signal cache off, 512-token blocks. "
        "Tokens/s: tokens through the student's forward + backward per second, setup excluded (module doc of "
        "benchmarks/peer_trl.py). One run each, one after the other; the machine is shared: load averages beside.",
        "",
        "| run | student tokens/s | vs TRL | teacher wait | steps measured | load avg before -> after (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        ratio = f"{r['tokens_per_s'] / trl_rate:.2f}x" if trl_rate else ""
        wait = f"{r['teacher_wait_fraction']:.0%}" if "teacher_wait_fraction" in r else "(in-process)"
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {ratio} | {wait} | {r['steps_measured']} | "
                     f"{r['load_avg_before'][0]} -> {r['load_avg_after'][0]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
