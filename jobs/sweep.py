"""Entrypoint for `ray job submit`: a Ray Tune sweep of distillation runs sharing one teacher.

    ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/sweep_asha.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/sweep.py --config jobs/configs/sweep_asha.yaml --resume

Inside a submitted job `RAY_ADDRESS` is set, so raykd joins that cluster instead of starting one. For a
multi-node cluster set `storage_path` (and the base config's `train.storage_path`) to storage every node
sees: Tune and Train keep trial checkpoints there, and PBT copies them between trials.
"""

import sys

from raykd.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
