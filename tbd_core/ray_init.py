"""Ray start-up shared by every Ray job (preprocess, annotate, cluster check, Ray Train)."""

from __future__ import annotations


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to `$RAY_ADDRESS` (set by `ray job submit`) or start a local Ray on this machine."""
    import ray
    import ray.data

    from tbd_core.terminal import route_library_logs

    route_library_logs()  # Ray's console handler (its token notice) to the log file, before it starts
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False)
    route_library_logs()  # Ray's and Ray Data's console lines to the log file; Ray Data's progress off
