"""Entrypoint for `ray job submit`: one distillation run (teacher on Serve → student on Train → MLflow).

    ray job submit --working-dir . -- python jobs/distill.py --config jobs/configs/quickstart.yaml [key=value ...]

Inside a submitted job `RAY_ADDRESS` is set, so raykd joins that cluster instead of starting one.
Set `MLFLOW_TRACKING_URI` in the job's runtime environment to log to a shared tracking server.
"""

import sys

from raykd.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
