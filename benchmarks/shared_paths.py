"""Where benchmarks find the project's shared data, and how results name local paths.

The shared data sits beside the repository (`<repo>/../shared/data/...`, as every checkout of this project
has it); a benchmark that reads it also takes `--text FILE` for a clone used elsewhere. Results files name
a model by its directory name only: a cache or scratch path is private to one machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def add_text_argument(parser: argparse.ArgumentParser, default: Path = SHAKESPEARE) -> None:
    """`--text FILE`: the text to read, by default ../shared/data/tinyshakespeare/input.txt from the repo root."""
    parser.add_argument("--text", type=Path, default=default,
                        help="plain-text file (default: ../shared/data/tinyshakespeare/input.txt beside the repo)")


def read_text(path: Path) -> str:
    if not path.is_file():
        raise SystemExit(f"benchmark: error: --text: file not found: {path} (give --text FILE)")
    return path.read_text()


def public_name(path: str | Path) -> str:
    """A model directory as results record it: its name, never the machine's cache or scratch path."""
    return Path(path).name
