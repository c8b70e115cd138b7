"""`tbd cluster-check [--data DIR] [--require-gpu]`: a tiny Ray job that proves a cluster is ready."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cluster_check import ClusterCheckConfig, run_cluster_check, summary_line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="a folder every node must see (the shared data volume)")
    p.add_argument("--require-gpu", action="store_true", help="fail unless some node has a CUDA device")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI")


def run(args: argparse.Namespace) -> int:
    config = ClusterCheckConfig(
        data=Path(args.data) if args.data else None,
        require_gpu=args.require_gpu,
        tracking_uri=args.tracking_uri,
    )
    result = run_cluster_check(config)
    print(summary_line(result))
    return 0 if result["ok"] else 1
