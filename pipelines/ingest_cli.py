"""`tbd ingest --dataset mead|hdtf --root DIR --out DIR`: discover clips and write the manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.ingest import IngestConfig, ingest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("mead", "hdtf"), required=True)
    p.add_argument("--root", required=True, help="the dataset folder (MEAD speakers / HDTF mp4 files)")
    p.add_argument(
        "--out", required=True, help="data folder: manifest.parquet, ledger/, later media/ and annotations/"
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)


def run(args: argparse.Namespace) -> int:
    config = IngestConfig(
        dataset=args.dataset, root=Path(args.root), out=Path(args.out),
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
    )  # fmt: skip
    clips, rejects = ingest(config)
    print(
        f"{len(clips)} clips -> {config.out / 'manifest.parquet'}; {len(rejects)} rejected -> ledger/ingest.parquet"
    )
    return 0
