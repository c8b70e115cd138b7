"""`tbd evaluate --model DIR --data DATA --split test [--ablations]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.evaluate import EvaluateConfig, run_evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="folder written by `tbd export`")
    p.add_argument(
        "--data", "--shards", dest="data", required=True, type=Path, help="data folder (media + annotations)"
    )
    p.add_argument("--version", help="annotation version (default: the only one present)")
    p.add_argument("--split", default="test")
    p.add_argument("--max-clips", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ablations", action="store_true", help="progressive vs single-stage vs label-only vs no-masks"
    )
    p.add_argument("--out", type=Path, help="output folder (default: MODEL/../evaluation)")
    p.add_argument(
        "--fid-net", type=Path, help="TorchScript feature network for FID (e.g. a local InceptionV3)"
    )
    p.add_argument("--fvd-net", type=Path, help="TorchScript video network for FVD (e.g. a local I3D)")
    p.add_argument("--lpips-net", type=Path, help="TorchScript network returning feature maps, for LPIPS")
    p.add_argument(
        "--groundtruth", type=Path, help="demo corpus folder: also score AUs against its ground truth"
    )
    p.add_argument("--tracking-uri")
    p.add_argument("--device")


def run(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in vars(args).items() if k in EvaluateConfig.model_fields}
    report = run_evaluate(EvaluateConfig(**fields))
    print(json.dumps({"clips": len(report["clips"]), "results": report["results"]}))
    return 0
