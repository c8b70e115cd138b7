"""Ray start-up shared by every Ray job (preprocess, annotate, cluster check, Ray Train)."""

from __future__ import annotations


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to `$RAY_ADDRESS` (set by `ray job submit`) or start a local Ray on this machine."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False)
