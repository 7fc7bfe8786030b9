"""The `raykd` command.

    raykd distill  --config jobs/configs/quickstart.yaml [key=value ...]
    raykd distill  --config jobs/configs/gpu_8b_fsdp.yaml --dry-run [key=value ...]   # plan + memory, no cluster
    raykd pipeline --config jobs/configs/pipeline_three_stage.yaml [key=value ...]
    raykd capture  --config jobs/configs/capture.yaml [key=value ...]   # teacher signals -> Parquet shards
    raykd build-teacher [--out DIR] [key=value ...]     # the offline tiny teacher (cached)
    raykd mlm-distill --config jobs/configs/mlm.yaml [key=value ...]   # BERT teacher -> shallower BERT (MLM)
    raykd sweep    --config jobs/configs/sweep_asha.yaml [--resume] [key=value ...]   # Ray Tune, one teacher
    raykd compress --config jobs/configs/compress.yaml [key=value ...]   # KD vs quantization, pruning, low rank

Config problems end with one line `raykd: error: <field>: <problem>` and exit code 2, before any
cluster starts or model loads. SIGINT (Ctrl-C) and SIGTERM (a preemption, `ray job stop`) end the MLflow run
KILLED, shut down the Ray this command started (and its Serve apps) and exit 130 / 143; the same command
then resumes from the last checkpoint.

The console shows raykd's own lines: stage lines, one progress bar per phase, the final table, and any
error. Ray's logs stay in its log directory; `--verbose` (any command) shows them live.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raykd", description="Ray-native knowledge distillation for LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="also show Ray's logs (workers, Serve, Train, Tune) live; by default they stay in Ray's log directory")
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # --verbose on every command
    p = sub.add_parser("distill", help="distil a teacher into a student (teacher on Serve, student on Train)")
    p.add_argument("--config", help="YAML file (see jobs/configs/)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resource plan and per-worker memory "
                   "estimate, refuse a plan that cannot fit; start nothing")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loss.alpha=0.7")
    p = sub.add_parser("pipeline", help="run distillation stages in order (general → instruction → domain), one MLflow tree")
    p.add_argument("--config", required=True, help="YAML file (see jobs/configs/pipeline_three_stage.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides; stages by name: stages.domain.loss.alpha=0.9")
    p = sub.add_parser("sweep", help="Ray Tune over temperature / alpha / schedules / lr, one shared teacher")
    p.add_argument("--config", required=True, help="sweep YAML (see jobs/configs/sweep_asha.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name (Tune restore)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. num_samples=8 asha.grace_period=20")
    p = sub.add_parser("capture", help="score a dataset once with the teacher (Ray Data) into Parquet shards")
    p.add_argument("--config", help="YAML file (see jobs/configs/capture.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. top_k=32")
    p = sub.add_parser("mlm-distill", help="masked-LM distillation (DistilBERT-style) from a BERT teacher on Serve")
    p.add_argument("--config", help="YAML file (see jobs/configs/mlm.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. student.num_layers=2")
    p = sub.add_parser("compress", help="KD students vs quantized, pruned, factorised variants of one teacher, measured alike")
    p.add_argument("--config", required=True, help="YAML file (see jobs/configs/compress.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. recovery.steps=30")
    p = sub.add_parser("build-teacher", help="build (or find in the cache) the offline tiny teacher")
    p.add_argument("--out", help="directory to write; default: the raykd cache")
    p.add_argument("overrides", nargs="*", help="TinyTeacherConfig fields, e.g. max_minutes=2")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt: the same unwinding (MLflow run KILLED,
    raykd/tracking.py; Ray shut down in the commands' `finally`), another exit code."""


_sigterm_received = False  # libraries may re-raise a KeyboardInterrupt of their own (Ray Train's fit does)


def _raise_terminated(signum, frame) -> None:
    import signal

    global _sigterm_received
    _sigterm_received = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    from raykd.console import is_verbose, set_verbose

    set_verbose(args.verbose or is_verbose())  # RAYKD_VERBOSE=1 in the environment works too
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not is_verbose():  # before anything imports transformers (a teacher build runs before Ray starts)
        import logging

        from raykd.cluster import QUIET_LOGGERS

        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(QUIET_LOGGERS[name])
    from raykd.config import ConfigError

    try:
        if args.command == "distill":
            from raykd.config import DistillConfig, load_config
            from raykd.distill import plan_distill, run_distill

            cfg = load_config(DistillConfig, args.config, args.overrides)
            plan_distill(cfg) if args.dry_run else run_distill(cfg)
        elif args.command == "pipeline":
            from raykd.config.pipeline import load_pipeline_config
            from raykd.pipeline.run import run_pipeline

            run_pipeline(load_pipeline_config(args.config, args.overrides))
        elif args.command == "sweep":
            from raykd.config.sweep import load_sweep
            from raykd.sweep.run import SweepInterrupted, run_sweep

            try:
                run_sweep(*load_sweep(args.config, args.overrides), resume=args.resume)
            except SweepInterrupted as e:
                print(f"raykd: {e}; continue with: raykd sweep --config {args.config} --resume", file=sys.stderr)
                return 130
        elif args.command == "capture":
            from raykd.capture import run_capture
            from raykd.config import CaptureConfig, load_config

            print(run_capture(load_config(CaptureConfig, args.config, args.overrides))["output_dir"])
        elif args.command == "mlm-distill":
            from raykd.config import load_config
            from raykd.config.mlm import MLMDistillConfig
            from raykd.mlm.run import run_mlm_distill

            run_mlm_distill(load_config(MLMDistillConfig, args.config, args.overrides))
        elif args.command == "compress":
            from raykd.compress.run import run_compress
            from raykd.config import load_config
            from raykd.config.compress import CompressConfig

            run_compress(load_config(CompressConfig, args.config, args.overrides))
        elif args.command == "build-teacher":
            from pathlib import Path

            from raykd.config import TinyTeacherConfig, load_config
            from raykd.teacher.build import build_tiny_teacher, ensure_tiny_teacher

            cfg = load_config(TinyTeacherConfig, None, args.overrides)
            path = build_tiny_teacher(cfg, Path(args.out)) if args.out else ensure_tiny_teacher(cfg)
            print(path)
    except ConfigError as e:
        print(f"raykd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        term = isinstance(e, Terminated) or _sigterm_received
        print(f"raykd: stopped by {'SIGTERM' if term else 'SIGINT'}; the same command resumes from the last "
              "checkpoint", file=sys.stderr)
        return 143 if term else 130
    except Exception:  # the whole traceback (a worker's is inside Ray's error), then where Ray's logs are
        import traceback

        from raykd.cluster import ray_log_dir

        traceback.print_exc()
        if ray_log_dir():
            print(f"raykd: Ray's logs of this run (workers, teacher replicas): {ray_log_dir()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
