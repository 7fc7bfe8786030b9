"""The compute side of the scoring limit for a 7B-shaped teacher on one GPU (PyTorch only; vLLM not needed).

Scoring runs the LM head, a float32 log-softmax and a top-k at every position; plain prefill runs the LM head
at the last position only. This measures both on a Llama-2-7B-shaped model with random bf16 weights
(speed does not depend on the weights), so the "compute limit of scoring / plain prefill" ratio of the
throughput benchmark (benchmarks/teacher_throughput.py, CPU) can be stated for a GPU with a measurement
next to the paper figure.

    python benchmarks/teacher_lm_head_gpu.py [--batch 8] [--seq-len 2048] [--out benchmarks/results]
        -> teacher_lm_head_gpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device="cuda")
    tokens = ids.numel()
    head = model.lm_head

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return tokens / best

    results: dict[str, float] = {}
    with torch.inference_mode():
        hidden = model.model(input_ids=ids).last_hidden_state
        results["body_only"] = timed(lambda: model.model(input_ids=ids).last_hidden_state)
        results["a_plain_prefill"] = timed(lambda: head(model.model(input_ids=ids).last_hidden_state[:, -1]))
        for k in (1, 8, 20, 64):
            def score(k=k):
                h = model.model(input_ids=ids).last_hidden_state
                out = []
                for b in range(args.batch):  # per sequence, as vLLM's prompt-logprob path does
                    lp = head(h[b, :-1]).log_softmax(-1, dtype=torch.float32)
                    top = lp.topk(k, -1)
                    tgt = lp.gather(-1, ids[b, 1:, None])
                    out.append((top.indices.cpu(), top.values.cpu(), tgt.cpu()))  # (L, k+1) to the host, as vLLM
                return out

            results[f"scoring_k{k}"] = timed(score)
        del hidden
    h, v, i = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    body = cfg.num_hidden_layers * (2 * 4 * h * h + 2 * 3 * h * i + 2 * 2 * h * args.seq_len / 2)
    out = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": "Llama-2-7B shape, random bf16",
        "layers": cfg.num_hidden_layers, "batch": args.batch, "seq_len": args.seq_len, "tokens_per_s": results,
        "ratio_scoring_k20_to_plain": results["scoring_k20"] / results["a_plain_prefill"],
        "paper_limit_fraction": 1 / (1 + 2 * h * v / body),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "teacher_lm_head_gpu.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
