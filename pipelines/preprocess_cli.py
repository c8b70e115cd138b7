"""`tbd preprocess --data DIR`: media shards from the ingest manifest (Ray Data; resumable)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.clip_media import MediaConfig
from pipelines.preprocess import PreprocessConfig, run_preprocess


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="the folder `tbd ingest --out` wrote")
    p.add_argument("--crop-size", type=int, default=MediaConfig().crop_size, help="face crop side in pixels")
    p.add_argument(
        "--clips-per-shard", type=int, default=PreprocessConfig.model_fields["clips_per_shard"].default
    )
    p.add_argument("--concurrency", type=int, default=PreprocessConfig.model_fields["concurrency"].default)
    p.add_argument("--min-face-fraction", type=float, default=MediaConfig().min_face_fraction)
    p.add_argument(
        "--audio-encoder", help="local folder of a pretrained speech encoder (wav2vec2...); default log-mel"
    )
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or DATA/mlflow.db)"
    )


def run(args: argparse.Namespace) -> int:
    config = PreprocessConfig(
        data=Path(args.data),
        media=MediaConfig(
            crop_size=args.crop_size,
            min_face_fraction=args.min_face_fraction,
            audio_encoder=args.audio_encoder,
        ),
        clips_per_shard=args.clips_per_shard,
        concurrency=args.concurrency,
        tracking_uri=args.tracking_uri,
    )
    result = run_preprocess(config)
    print(json.dumps(result["metrics"]))
    return 0
