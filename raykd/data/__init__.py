"""Training text: where it comes from and how it becomes token blocks.

Owns: the `data.source` readers (sources.py: builtin, .txt, .jsonl with text fields and per-record weights),
tokenization into fixed-length blocks and the held-out split (blocks.py), and the text raykd generates so
that everything runs with no downloads (corpus.py: English-like stories; tasks.py: GSM8K-shaped problems).

May import: numpy, raykd.config, raykd.files (tokenizers are passed in).
"""
