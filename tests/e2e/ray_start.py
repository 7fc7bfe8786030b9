"""Starting an embedded Ray for the teacher tests on a shared, loaded 2-core machine."""

from __future__ import annotations


def start_ray(num_cpus: int) -> None:
    """ray.init, retried: under load the raylet can miss Ray's fixed 30 s node-startup window."""
    import ray

    for attempt in range(5):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception as e:  # noqa: BLE001
            if "timed out during startup" not in str(e) or attempt == 4:
                raise
            ray.shutdown()
