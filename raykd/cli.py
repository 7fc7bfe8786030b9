"""The `raykd` command.

    raykd distill  --config jobs/configs/quickstart.yaml [key=value ...]
    raykd build-teacher [--out DIR] [key=value ...]     # the offline tiny teacher (cached)

Config problems end with one line `raykd: error: <field>: <problem>` and exit code 2, before any
cluster starts or model loads.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raykd", description="Ray-native knowledge distillation for LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("distill", help="distil a teacher into a student (teacher on Serve, student on Train)")
    p.add_argument("--config", help="YAML file (see jobs/configs/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loss.alpha=0.7")
    p = sub.add_parser("build-teacher", help="build (or find in the cache) the offline tiny teacher")
    p.add_argument("--out", help="directory to write; default: the raykd cache")
    p.add_argument("overrides", nargs="*", help="TinyTeacherConfig fields, e.g. max_minutes=2")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from raykd.config import ConfigError

    try:
        if args.command == "distill":
            from raykd.config import DistillConfig, load_config
            from raykd.distill import run_distill

            run_distill(load_config(DistillConfig, args.config, args.overrides))
        elif args.command == "build-teacher":
            from pathlib import Path

            from raykd.config import TinyTeacherConfig, load_config
            from raykd.teacher_build import build_tiny_teacher, ensure_tiny_teacher

            cfg = load_config(TinyTeacherConfig, None, args.overrides)
            path = build_tiny_teacher(cfg, Path(args.out)) if args.out else ensure_tiny_teacher(cfg)
            print(path)
    except ConfigError as e:
        print(f"raykd: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
