"""Students at scale, end to end: `raykd distill` with FSDP + bf16 + accumulation + activation checkpointing
on the session cluster and teacher (tests/e2e/conftest.py: 2 gloo Train workers), the exported student
loaded by transformers and by vLLM; the dry run of jobs/configs/gpu_8b_fsdp.yaml (no cluster).

    pytest -m slow tests/e2e/test_scale.py
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, TINY_DISTILL, own_cluster_env

GPU_8B = ROOT / "jobs" / "configs" / "gpu_8b_fsdp.yaml"
pytestmark = pytest.mark.slow


def dry_run(tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`raykd distill --dry-run ...` in this process (it starts no cluster and no run: nothing to isolate but the
    working directory and the stores): exit code, stdout, stderr."""
    from raykd.cli import main

    monkeypatch.chdir(tmp_path)
    for k, v in own_cluster_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    code = main(["distill", "--dry-run", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fsdp_bf16_accumulation_checkpointing_and_the_export_loads_in_vllm(tmp_path, tiny_teacher, teacher_app,
                                                                          distill_cli):
    proc = distill_cli(tmp_path, "run_name=fsdp", f"teacher.path={tiny_teacher}", *TINY_DISTILL, "train.max_steps=4",
                       "train.strategy=fsdp", "train.precision=bf16", "train.grad_accum_steps=2",
                       "train.activation_checkpointing=true", "train.batch_size=4", "train.log_every=2",
                       "train.checkpoint_every=4", "eval.baseline=false", "mlflow.experiment=e2e")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "kd student" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["train.strategy"] == "fsdp"
    assert np.isfinite(run.data.metrics["loss"]) and run.data.metrics["loss_soft"] > 0
    # The sharded checkpoint (one DCP file per worker) and the gathered HF weights of the last step.
    ckpts = sorted(p for p in (tmp_path / "cache" / "runs" / "fsdp").glob("checkpoint_*") if p.is_dir())
    assert ckpts and {p.name for p in (ckpts[-1] / "dcp").iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert json.loads((ckpts[-1] / "state.json").read_text()) == {"step": 4, "strategy": "fsdp", "global_batch": 16}

    student = tmp_path / "outputs" / "fsdp" / "student"
    from transformers import AutoModelForCausalLM

    from raykd.teacher.hf_backend import HFTeacherBackend

    model = AutoModelForCausalLM.from_pretrained(student)
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in model.parameters())  # fp32 export
    seqs = [np.arange(5, 37) % model.config.vocab_size, np.arange(40, 90) % model.config.vocab_size]
    ref = HFTeacherBackend(str(student), dtype="float32").score(seqs, 5)

    from raykd.config import VllmConfig
    from raykd.teacher.logprob_arrays import compare_signals
    from raykd.teacher.vllm_backend import VllmTeacherBackend

    loop = asyncio.new_event_loop()
    engine = VllmTeacherBackend(str(student), VllmConfig(dtype="float32", kv_cache_memory_bytes=64 << 20))
    try:
        got = loop.run_until_complete(engine.score(seqs, 5))
    finally:
        engine.shutdown()
        pending = asyncio.all_tasks(loop)  # let the engine's cancelled output handler finish (test_vllm_engine.py)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
    agreement = compare_signals(ref, got)
    assert agreement["max"] < 1e-3 and agreement["shared"] > 0.99, agreement


def _config_only_llama(out: Path, tokenizer_from: Path, **shape) -> Path:
    """An HF directory with a Llama 3.1 config, a tokenizer and a one-tensor safetensors file: everything the
    dry run reads (it never loads weights), at the shape of a model this machine could not hold."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    out.mkdir(parents=True)
    config = LlamaConfig(vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, num_key_value_heads=8, head_dim=128, **shape)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / f, out / f)
    save_file({"placeholder": torch.zeros(1)}, str(out / "model.safetensors"))
    return out


def test_gpu_8b_fsdp_config_passes_the_dry_run_and_ddp_is_refused(tmp_path, tiny_teacher, shared_data, monkeypatch,
                                                                   capsys):
    teacher = _config_only_llama(tmp_path / "Llama-3.1-70B", tiny_teacher, hidden_size=8192, intermediate_size=28672,
                                 num_hidden_layers=80, num_attention_heads=64)
    student = _config_only_llama(tmp_path / "Llama-3.1-8B", tiny_teacher, hidden_size=4096, intermediate_size=14336,
                                 num_hidden_layers=32, num_attention_heads=32)
    paths = [f"teacher.path={teacher}", f"student.path={student}", f"data.source={shared_data}/data/gsm8k/test.jsonl",
             "data.text_fields=[question, answer]"]
    code, out, err = dry_run(tmp_path, monkeypatch, capsys, "--config", str(GPU_8B), *paths)
    assert code == 0, err[-3000:]
    assert "teacher  2 replica(s) x 4 GPU(s) (vllm, tensor_parallel_size 4; 70.55B params)" in out
    assert "student  8 worker(s) x 1 GPU (fsdp, bf16, activation checkpointing; 8.03B params)" in out
    assert "plan fits 80 GiB GPUs" in out
    assert not (tmp_path / "mlflow.db").exists() and "Started a local Ray instance" not in err

    code, _, err = dry_run(tmp_path, monkeypatch, capsys, "--config", str(GPU_8B), *paths, "train.strategy=ddp")
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("raykd: error: train: the student needs about ") and "train.strategy=fsdp" in last, last
