"""`tbd ingest --dataset mead|hdtf --root DIR --out DIR`: discover clips and write the manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.ingest import IngestConfig, ingest
from tbd.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("mead", "hdtf"), required=True)
    p.add_argument("--root", required=True, help="the dataset folder (MEAD speakers / HDTF mp4 files)")
    p.add_argument(
        "--out", required=True, help="data folder: manifest.parquet, ledger/, later media/ and annotations/"
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument(
        "--split",
        action="append",
        default=[],
        metavar="SPEAKER=SPLIT",
        help="pin a speaker to train|val|test (repeatable)",
    )


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        speaker, sep, split = pair.partition("=")
        if not sep or split not in ("train", "val", "test"):
            raise UserError(f"--split {pair!r}: expected SPEAKER=train|val|test")
        out[speaker] = split
    return out


def run(args: argparse.Namespace) -> int:
    config = IngestConfig(
        split_overrides=_overrides(args.split),
        dataset=args.dataset, root=Path(args.root), out=Path(args.out),
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
    )  # fmt: skip
    clips, rejects = ingest(config)
    print(
        f"{len(clips)} clips -> {config.out / 'manifest.parquet'}; {len(rejects)} rejected -> ledger/ingest.parquet"
    )
    return 0
