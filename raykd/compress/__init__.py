"""Compression methods set beside distillation, and `raykd compress`, the study that measures them all.

    raykd compress --config jobs/configs/compress.yaml [key=value ...]

Owns: INT8/INT4 quantization through torchao (quantize.py), unstructured magnitude pruning (prune.py),
Minitron-style structured pruning of heads, MLP channels and layers (structured.py), low-rank SVD
factorisation (lowrank.py, with the self-contained modeling file of the saved directories,
lowrank_llama.py), short distillation that heals a compressed model (recover.py), the one measurement
harness every variant and the teacher go through (measure.py), the report (report.py) and the command
(run.py).

The methods take an in-process HF causal LM (Llama layout: Llama, Mistral, Qwen2) and return one; each
variant is written as a directory `transformers` loads. May import: torch, transformers, torchao,
raykd.config, raykd.models, raykd.eval, raykd.loss, raykd.data. Only run.py imports Ray and MLflow.
"""
