"""MLflow tracking for every job: one run per job invocation, parameters, counts, throughput, artifacts.

The tracking URI is `--tracking-uri`, else `$MLFLOW_TRACKING_URI` (a cluster's server), else the store a
model recorded at training (generate, evaluate), else one sqlite store for the data folders side by side
(`DATA/../mlflow.db`: `out/demo/data/mead` and `out/demo/data/hdtf` share `out/demo/data/mlflow.db`), so
one project's preprocess, annotation, training and evaluation runs are in one store by default.

Each stage has its experiment (`tbd-preprocess`, `tbd-annotate`, `tbd-train`, ...); runs are linked by
tags: an annotate run names its preprocess run (`tbd.preprocess_run`), a train run its annotate and
preprocess runs, generate and evaluate their train run (`tbd.train_run`). A shard set records the run that
last finished it in `mlflow_run.json` beside its manifest (not in the manifest: a resumed set's content
equals a clean one's), which is how a later stage finds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
EXPERIMENT_PREFIX = "tbd-"


def experiment(stage: str) -> str:
    """The MLflow experiment of a stage (`train` -> `tbd-train`)."""
    return EXPERIMENT_PREFIX + stage


def tracking_uri(explicit: str | None, data: Path, recorded: str | None = None) -> str:
    """`explicit`, else $MLFLOW_TRACKING_URI, else `recorded`, else a sqlite store beside `data` (a data
    folder, or a model folder for generation): `data/../mlflow.db`."""
    return (
        explicit
        or os.environ.get("MLFLOW_TRACKING_URI")
        or recorded
        or f"sqlite:///{Path(data).resolve().parent / 'mlflow.db'}"
    )


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside it (`mlartifacts/`), not into the working directory's
    `mlruns/` (MLflow's default for a new experiment); a server chooses its own (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def use_experiment(mlflow, uri: str, stage: str) -> None:
    """Select the stage's experiment in the store at `uri`, created with its artifact location."""
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    name = experiment(stage)
    if mlflow.get_experiment_by_name(name) is None:
        with contextlib.suppress(MlflowException):  # another job created it meanwhile
            mlflow.create_experiment(name, artifact_location=artifact_location(uri))
    mlflow.set_experiment(name)


RUN_FILE = "mlflow_run.json"


def record_run(folder: Path, uri: str) -> None:
    """Write the active run's id and store into a shard set's folder (`mlflow_run.json`)."""
    import json

    import mlflow

    run = {"id": mlflow.active_run().info.run_id, "uri": uri}
    (Path(folder) / RUN_FILE).write_text(json.dumps(run))


def run_ref(folder: Path) -> str:
    """The id of the run that last finished the shard set in `folder`, or "" if none is recorded."""
    import json

    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text())["id"] if path.is_file() else ""


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
    """An MLflow run named after the job, in its stage's experiment; yields the `mlflow` module."""
    import mlflow

    from tbd_core.terminal import route_library_logs

    route_library_logs()  # the libraries the job imported: their console lines to the log file
    use_experiment(mlflow, uri, job)
    with mlflow.start_run(run_name=job, tags={"tbd.job": job, **(tags or {})}) as run:
        mlflow.log_params(_flat(params))
        log.info("MLflow run %s (%s) at %s", run.info.run_id, job, uri)
        yield mlflow
