"""Model directories: fingerprints, checks, parameter counts, and deriving a student from a teacher.

A student is the teacher's architecture with fewer layers and/or a narrower width. When
`init_from_teacher` is set it starts from the teacher's weights: student layer i copies teacher layer
`select_layers(...)[i]`, and every tensor is sliced to the student's shape (leading block of each dim:
whole heads, since the student keeps the teacher's head_dim). Llama-style configs (Llama, Mistral, Qwen2,
Qwen3 …: `num_hidden_layers`, `hidden_size`, `num_attention_heads`, `intermediate_size`) are supported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raykd.config import ConfigError, StudentConfig

_LAYER_RE = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


def model_fingerprint(path: str) -> str:
    """Identity of a model directory by content: config.json and each weight file's name and whole-file hash
    (`file_digest`: hashed once, then remembered by path, size and mtime). Keys the signal cache (with the
    teacher's backend and dtype, `TeacherConfig.signal_variant`) and the reuse of a running teacher app:
    two fine-tunes of one base that differ anywhere in their weights get different fingerprints."""
    p = Path(path)
    h = hashlib.sha256()
    if not p.is_dir():  # a hub id: the name is all we know without downloading
        h.update(path.encode())
        return h.hexdigest()[:16]
    h.update((p / "config.json").read_bytes())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(f"{f.name}:{file_digest(f)}".encode())
    return h.hexdigest()[:16]


_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process


def file_digest(f: Path) -> str:
    """sha256 of a whole file, remembered by (absolute path, size, mtime) in this process and on disk under
    <RAYKD_CACHE>/file-digests/, so a 140 GB teacher is read once, not at every run (a rewrite changes the
    mtime and so the key)."""
    from raykd.config import default_cache_dir
    from raykd.files import write_text

    f = Path(f).resolve()
    st = f.stat()
    key = (str(f), st.st_size, st.st_mtime_ns)
    if key in _digests:
        return _digests[key]
    memo = default_cache_dir() / "file-digests" / f"{hashlib.sha256(str(f).encode()).hexdigest()[:32]}.json"
    try:
        saved = json.loads(memo.read_text())
        if (saved["path"], saved["size"], saved["mtime_ns"]) == key:
            _digests[key] = saved["sha256"]
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with f.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    _digests[key] = digest
    try:
        write_text(memo, json.dumps({"path": key[0], "size": key[1], "mtime_ns": key[2], "sha256": digest}))
    except OSError:  # a read-only cache: hash again next time
        pass
    return digest


def check_model_dir(path: str, what: str, tokenizer: bool = True) -> None:
    """Fail early with one line if a local model directory lacks what a run will load: a config.json the installed
    transformers reads, complete weights (every shard of an index; safetensors headers against file sizes, so a
    truncated copy is caught here, not in a replica after the cluster started) and, with `tokenizer`, a
    tokenizer that loads."""
    p = Path(path)
    if not p.exists():
        if path.startswith(("/", ".", "~")) or p.suffix or "/" not in path or path.count("/") > 1:
            raise ConfigError(f"{what}: model path not found: {path}")
        return  # looks like a hub id ("org/name"); it must be in the local HF cache
    if not p.is_dir():
        raise ConfigError(f"{what}: {path} is a file, not a model directory")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{what}: {path} has no config.json (not a Hugging Face model directory)")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise ConfigError(f"{what}: {path} has no weights (*.safetensors)")
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{what}: {index}: not a safetensors index ({e})") from None
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise ConfigError(f"{what}: {path} lacks {len(missing)} weight shard(s) of its index, e.g. {missing[0]}")
    for f in sorted(p.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            raise ConfigError(f"{what}: {f}: {problem}")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError, OSError, KeyError, JSON errors
        raise ConfigError(f"{what}: {path}/config.json cannot be read by the installed transformers "
                          f"({_first_line(e)})") from None
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            AutoTokenizer.from_pretrained(path)
        except Exception as e:  # noqa: BLE001 - as above; a missing vocab file, a sentencepiece model without the package
            raise ConfigError(f"{what}: {path} has no tokenizer the installed libraries can load "
                              f"({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def safetensors_problem(f: Path) -> str | None:
    """Why a .safetensors file cannot be whole (truncated, a bad header), read from its header only; None if fine."""
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            return f"truncated: {size} bytes, not even its header"
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "not a safetensors file (unreadable header)"
    if 8 + n + end != size:
        return f"truncated or damaged: {size} bytes, its header describes {8 + n + end}"
    return None


def select_layers(selection: str | list[int], n_teacher: int, n_student: int) -> list[int]:
    """Which teacher layer initialises each student layer."""
    if isinstance(selection, list):
        if len(selection) != n_student:
            raise ConfigError(f"student.layer_selection lists {len(selection)} layers, student has {n_student}")
        bad = [i for i in selection if not 0 <= i < n_teacher]
        if bad:
            raise ConfigError(f"student.layer_selection: {bad} outside the teacher's layers 0..{n_teacher - 1}")
        return list(selection)
    if n_student > n_teacher:
        raise ConfigError(f"student.num_layers={n_student} exceeds the teacher's {n_teacher} layers")
    if selection == "first":
        return list(range(n_student))
    if selection == "last":
        return list(range(n_teacher - n_student, n_teacher))
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def derive_student_config(teacher_config: Any, cfg: StudentConfig) -> Any:
    """A copy of the teacher's HF config with the student's depth and width."""
    needed = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    missing = [a for a in needed if not hasattr(teacher_config, a)]
    if missing:
        raise ConfigError(f"student derivation needs a Llama-style teacher config; {teacher_config.model_type} lacks {missing}")
    sc = teacher_config.__class__.from_dict(teacher_config.to_dict())
    t_hidden, t_heads = teacher_config.hidden_size, teacher_config.num_attention_heads
    head_dim = getattr(teacher_config, "head_dim", None) or t_hidden // t_heads
    hidden = cfg.hidden_size or t_hidden
    if hidden > t_hidden:
        raise ConfigError(f"student.hidden_size={hidden} exceeds the teacher's {t_hidden}")
    heads = cfg.num_heads or max(1, hidden // head_dim)
    if hidden % heads:
        raise ConfigError(f"student.hidden_size={hidden} is not divisible by num_heads={heads}")
    t_kv = getattr(teacher_config, "num_key_value_heads", None) or t_heads
    kv = max(1, heads * t_kv // t_heads)
    while heads % kv:
        kv -= 1
    inter = cfg.intermediate_size or max(8, round(teacher_config.intermediate_size * hidden / t_hidden / 8) * 8)
    sc.num_hidden_layers = cfg.num_layers or teacher_config.num_hidden_layers
    sc.hidden_size, sc.num_attention_heads, sc.num_key_value_heads = hidden, heads, kv
    sc.intermediate_size = inter
    if hasattr(sc, "head_dim"):
        sc.head_dim = hidden // heads
    if getattr(sc, "layer_types", None):
        sc.layer_types = sc.layer_types[: sc.num_hidden_layers]
    return sc


def init_from_teacher(student, teacher_state: dict, layer_map: list[int]) -> list[str]:
    """Copy teacher tensors into `student` (layer-mapped, sliced to shape). Returns the names not copied."""
    import torch

    skipped = []
    with torch.no_grad():
        for name, param in student.state_dict().items():
            m = _LAYER_RE.match(name)
            src = f"{m.group(1)}{layer_map[int(m.group(2))]}{m.group(3)}" if m else name
            t = teacher_state.get(src)
            if t is None or t.ndim != param.ndim or any(a < b for a, b in zip(t.shape, param.shape)):
                skipped.append(name)
                continue
            param.copy_(t[tuple(slice(0, n) for n in param.shape)].to(param.dtype))
    return skipped


def build_student(teacher_path: str, cfg: StudentConfig, seed: int = 0):
    """Derive and (optionally) initialise the student; returns (student_model, teacher_config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    t_config = AutoConfig.from_pretrained(teacher_path)
    s_config = derive_student_config(t_config, cfg)
    layer_map = select_layers(cfg.layer_selection, t_config.num_hidden_layers, s_config.num_hidden_layers)
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(s_config, dtype=torch.float32)
    if cfg.init_from_teacher:
        teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
        init_from_teacher(student, teacher.state_dict(), layer_map)
        del teacher
    return student, t_config


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` (at least 1) for the block, then restored. On a shared machine
    more threads than free cores make every step wait on descheduled threads (raykd/teacher/build.py)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def safetensors_param_count(path: str) -> int:
    """Parameter count of a model directory from its safetensors headers (no weights loaded): a 70B teacher
    is counted without entering the driver."""
    import numpy as np
    from safetensors import safe_open

    total = 0
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), "np") as fh:
            for key in fh.keys():
                total += int(np.prod(fh.get_slice(key).get_shape()))
    return total
