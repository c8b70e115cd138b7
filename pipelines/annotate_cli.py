"""`tbd annotate --data DIR [--engine facs|vllm|openai ...]` and `tbd annotations --data DIR` (list versions)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from annotation.engines import ENGINES
from pipelines.annotate import AnnotateConfig, run_annotate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data folder with media/ (from `tbd preprocess`)")
    p.add_argument("--engine", choices=ENGINES, default="facs")
    p.add_argument("--model", help="vllm: model folder or hub id; openai: served model name")
    p.add_argument("--base-url", help="openai: endpoint, e.g. http://head:8000/v1")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--template", help="prompt template YAML (a new template -> a new annotation version)")
    p.add_argument("--concurrency", type=int, default=1, help="engine workers")
    p.add_argument("--batch-size", type=int, default=64, help="requests per engine call")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--only-missing",
        action="store_true",
        help="write only missing/invalid shards of the version (the default)",
    )
    mode.add_argument("--only-rejected", action="store_true", help="regenerate only the rejected annotations")
    p.add_argument("--tracking-uri")


def engine_config(args: argparse.Namespace) -> dict:
    config = {k: v for k, v in {"model": args.model, "max_tokens": args.max_tokens}.items() if v is not None}
    if args.engine == "vllm" and args.max_model_len:
        config["max_model_len"] = args.max_model_len
    if args.engine == "openai" and args.base_url:
        config["base_url"] = args.base_url
    return config


def run(args: argparse.Namespace) -> int:
    config = AnnotateConfig(
        data=Path(args.data), engine=args.engine, engine_config=engine_config(args), template=args.template,
        concurrency=args.concurrency, batch_size=args.batch_size, num_gpus_per_worker=args.gpus_per_worker,
        only_rejected=args.only_rejected, tracking_uri=args.tracking_uri,
    )  # fmt: skip
    result = run_annotate(config)
    print(json.dumps({"version": result["version"], **result["metrics"]}))
    return 0
