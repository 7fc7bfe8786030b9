"""Post-training quantization through torchao, saved as directories transformers loads.

    reason = unsupported_reason("int4_weight_only")     # None, or why this torchao cannot on this machine
    save_quantized(model_dir, "int8_weight_only", out)  # config.json carries the TorchAoConfig

Modes (torchao 0.18 configs):
- ``int8_weight_only``: per-output-channel symmetric INT8 weights (`Int8WeightOnlyConfig`); activations
  stay float. Each weight element w is stored as round(w / s), s = max|w_row| / 127.5 (torchao spreads the
  row's symmetric range over 255 levels), so the round trip errs by at most s/2 per element
  (tests/compress/test_quantize.py).
- ``int8_dynamic``: INT8 weights as above and activations quantized per token at run time
  (`Int8DynamicActivationInt8WeightConfig`).
- ``int4_weight_only``: grouped INT4 weights (`Int4WeightOnlyConfig`). torchao 0.18 packs INT4 for CUDA
  (tile_packed_to_4d), for XPU/NPU (plain_int32) or through the `mslk` kernels (plain, preshuffled): none runs
  on a CPU-only torch, so `unsupported_reason` says so and the config refuses the mode here.

Only the decoder's linear layers are quantized (transformers' torchao integration skips the embeddings and
`lm_head` by default). The saved directory holds `model.safetensors` with torchao's tensor subclasses
flattened and the quantization config in `config.json`: `AutoModelForCausalLM.from_pretrained(dir)`
restores the quantized model (torchao must be installed).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

MODES = ("int8_weight_only", "int8_dynamic", "int4_weight_only")
INT4_GROUP_SIZE = 32  # elements per INT4 scale: the smallest group torchao offers, so tiny layers divide


@contextlib.contextmanager
def muted_logs():
    """Python logging muted below ERROR: torchao warns about its CUDA-only extensions and torch about the enums
    torchao registers (at import and at first use), noise on every CPU run (`--verbose` shows them)."""
    from raykd.console import is_verbose

    before = logging.root.manager.disable
    if not is_verbose():
        logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def torchao_config(mode: str):
    """The torchao config object of `mode` (one of MODES)."""
    with muted_logs():
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
        )

    if mode == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if mode == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if mode == "int4_weight_only":
        return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    raise ValueError(f"unknown quantization mode {mode!r}; expected one of {', '.join(MODES)}")


@functools.cache
def unsupported_reason(mode: str) -> str | None:
    """None when the installed torchao quantizes *and runs* `mode` on this machine (tried on a 64x64 linear
    layer, milliseconds); else one line saying why. Cached: the answer does not change within a process."""
    if mode not in MODES:
        return f"unknown quantization mode {mode!r}; expected one of {', '.join(MODES)}"
    with muted_logs():
        return _probe(mode)


def _probe(mode: str) -> str | None:
    try:
        import torch
        from torchao.quantization import quantize_
    except ImportError as e:
        return f"torchao is not installed ({e}); pip install torchao"
    dtype = torch.bfloat16 if mode.startswith("int4") else torch.float32  # torchao's INT4 takes bf16 weights
    layer = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)).to(dtype)
    try:
        quantize_(layer, torchao_config(mode))
        layer(torch.randn(2, 64, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - torchao raises ImportError, NotImplementedError, AssertionError...
        import torchao

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"torchao {torchao.__version__} cannot run {mode} on this machine ({first})"
    return None


def save_quantized(model_dir: str | Path, mode: str, out_dir: str | Path) -> Path:
    """Load `model_dir` through transformers' TorchAoConfig (`mode`), write it to `out_dir` (safetensors and
    the quantization config); the caller writes the tokenizer. Returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, TorchAoConfig

    dtype = torch.bfloat16 if mode.startswith("int4") else torch.float32
    with muted_logs():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                     quantization_config=TorchAoConfig(torchao_config(mode)))
        model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)
