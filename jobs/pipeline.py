"""Entrypoint for `ray job submit`: a multi-stage distillation pipeline (one MLflow parent run, a child per stage).

    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline_three_stage.yaml [key=value ...]

Inside a submitted job `RAY_ADDRESS` is set, so raykd joins that cluster instead of starting one. Set
`MLFLOW_TRACKING_URI` in the job's runtime environment to log to a shared tracking server. Re-submitting
the same command after an interruption resumes: completed stages are skipped, the interrupted one
continues from its Ray Train checkpoint.
"""

import sys

from raykd.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
