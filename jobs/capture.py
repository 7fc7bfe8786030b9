"""Entrypoint for `ray job submit`: score a dataset once with the teacher into Parquet signal shards.

    ray job submit --working-dir . -- python jobs/capture.py --config jobs/configs/capture.yaml [key=value ...]

Inside a submitted job `RAY_ADDRESS` is set, so raykd joins that cluster (and reuses a running teacher app
with the same weights). Point `output_dir` at shared storage for other jobs to read the shards.
"""

import sys

from raykd.cli import main

if __name__ == "__main__":
    sys.exit(main(["capture", *sys.argv[1:]]))
