"""raykd: Ray-native knowledge distillation for language models.

Importing `raykd` is cheap: Ray, torch, transformers, MLflow and vLLM are imported by the modules that
need them, when they are used.
"""

__version__ = "0.1.0"
