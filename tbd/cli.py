"""`tbd` entry point: one argparse front end whose subcommands live in the stage packages.

Each subcommand is registered as ``name -> (module, help)``; the module is imported only when the
subcommand runs, so ``tbd --help`` stays fast and a stage's heavy imports never slow the others.
A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``, or, when it parses its
own command line (``tbd train`` is a LightningCLI), ``main_argv(argv) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tbd.errors import UserError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "assets": ("pipelines.assets_cli", "list, fetch, verify or override the offline model assets"),
    "demo-corpus": ("pipelines.demo_corpus.cli", "render the embedded demo corpus (MEAD + HDTF layouts)"),
    "face": ("pipelines.face_cli", "detect a face and its 468-point mesh in an image"),
    "ingest": ("pipelines.ingest_cli", "discover MEAD/HDTF clips and write the manifest"),
    "preprocess": ("pipelines.preprocess_cli", "Ray job: clips -> media shards + reject ledger"),
    "annotate": ("pipelines.annotate_cli", "Ray job: media shards -> CoT annotation shards of one version"),
    "annotations": ("pipelines.annotations_cli", "list annotation versions with counts and acceptance"),
    "cluster-check": (
        "pipelines.cluster_check_cli",
        "Ray job: prove a cluster is ready (nodes, GPUs, volume, MLflow)",
    ),
    "infra": ("tbd.infra_cli", "render and validate the Kubernetes manifests; submit a job to a Ray cluster"),
    "think": ("annotation.think_cli", "reason from an emotion to FACS muscle movements (CoT JSON)"),
    "tiny-llm": ("annotation.tiny_llm_cli", "build a tiny local stand-in LLM for the vllm engine"),
    "train": (
        "tbd_lightning.train_cli",
        "train the video denoiser (LightningCLI YAML; --ray-workers N: Ray Train)",
    ),
    "export": ("tbd_lightning.export", "checkpoint -> diffusers-style model folder (from_pretrained)"),
    "evaluate": ("pipelines.evaluate_cli", "score generated held-out clips (PSNR/SSIM/LMD/sync/AU/emotion)"),
    "generate": (
        "tbd_lightning.generate_cli",
        "portrait + speech + emotion -> talking-head mp4 (progressive guidance)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tbd", description="Think-Before-Draw: think (FACS chain-of-thought), annotate, draw, track."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only the global options and the subcommand name; the subcommand parses the rest.
    split = next((i for i, a in enumerate(argv) if a in SUBCOMMANDS), len(argv))
    args = parser.parse_args(argv[: split + 1])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    module_name, help_text = SUBCOMMANDS[args.command]
    module = importlib.import_module(module_name)
    if hasattr(module, "main_argv"):
        try:
            return int(module.main_argv(argv[split + 1 :]) or 0)
        except UserError as err:
            print(f"tbd {args.command}: error: {err}", file=sys.stderr)
            return 2
    sub_parser = argparse.ArgumentParser(prog=f"tbd {args.command}", description=help_text)
    module.add_arguments(sub_parser)
    sub_args = sub_parser.parse_args(argv[split + 1 :])
    try:
        return int(module.run(sub_args) or 0)
    except UserError as err:
        print(f"tbd {args.command}: error: {err}", file=sys.stderr)
        return 2
