"""Entrypoint for `ray job submit`: the compression study (KD students, quantized, pruned, factorised variants).

    ray job submit --working-dir . -- python jobs/compress.py --config jobs/configs/compress.yaml [key=value ...]

Inside a submitted job `RAY_ADDRESS` is set, so raykd joins that cluster instead of starting one.
"""

import sys

from raykd.cli import main

if __name__ == "__main__":
    sys.exit(main(["compress", *sys.argv[1:]]))
