"""The teacher alone as a Serve application: for a RayService that many jobs share, or `serve run`.

    # RayService serveConfigV2 (infra/rayservice-teacher.yaml)
    applications:
      - name: raykd-teacher                      # = teacher.app_name of the jobs that use it
        import_path: raykd.teacher.app:build_app
        args: {path: null, backend: vllm, num_replicas: 2, num_gpus: 1}   # a distill config's `teacher:`

    serve run raykd.teacher.app:build_app backend=hf num_replicas=1      # locally, key=value args

`args` is exactly the `teacher:` section of a distill config (`TeacherConfig`, strict). A job whose
teacher resolves to the same weights (same `path`, or same `build` for the tiny teacher, with
`RAYKD_CACHE` on a shared volume) and the same backend finds this app by its name and uses its replicas
instead of deploying its own (`launch_teacher`). With `path: null` the tiny teacher is built once into
the cache by whichever process first needs it.
"""

from __future__ import annotations

from typing import Any

from raykd.config import TeacherConfig, validate


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder: validate `args` as a TeacherConfig, resolve the weights, bind the deployment."""
    from raykd.models import check_model_dir, model_fingerprint
    from raykd.teacher.service import teacher_app

    cfg = validate(TeacherConfig, args, "serve args")
    if cfg.path is not None:
        check_model_dir(cfg.path, "serve args: path")
        path = cfg.path
    else:
        from raykd.teacher.build import ensure_tiny_teacher

        path = str(ensure_tiny_teacher(cfg.build))
    return teacher_app(cfg, path, model_fingerprint(path))
