"""`import raykd` (and the CLI and config modules) stay light: no vLLM, Ray, torch or MLflow."""

import subprocess
import sys


def test_light_imports():
    code = (
        "import sys, raykd, raykd.cli, raykd.config, raykd.signals, raykd.teacher.service, raykd.train.loop;"
        "heavy = [m for m in ('vllm', 'ray', 'torch', 'mlflow', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy modules imported: {out}"
