"""MLflow tracking for every job: one run per job invocation, parameters, counts, throughput, artifacts.

The tracking URI is `--tracking-uri`, else `$MLFLOW_TRACKING_URI` (a cluster's server), else the store a
model recorded at training (generate, evaluate), else a sqlite store beside the data (`DATA/mlflow.db`), so
a dataset's preprocess and annotation runs stay together by default.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
EXPERIMENT = "think-before-draw"


def tracking_uri(explicit: str | None, data: Path, recorded: str | None = None) -> str:
    return (
        explicit
        or os.environ.get("MLFLOW_TRACKING_URI")
        or recorded
        or f"sqlite:///{Path(data).resolve() / 'mlflow.db'}"
    )


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


@contextlib.contextmanager
def job_run(job: str, uri: str, params: dict, tags: dict | None = None) -> Iterator[object]:
    """An MLflow run named after the job; yields the `mlflow` module for metrics and artifacts."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=job, tags={"tbd.job": job, **(tags or {})}) as run:
        mlflow.log_params(_flat(params))
        log.info("MLflow run %s (%s) at %s", run.info.run_id, job, uri)
        yield mlflow
