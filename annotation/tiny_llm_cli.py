"""`tbd tiny-llm --out DIR`: build the tiny local stand-in LLM (random weights, local tokenizer)."""

from __future__ import annotations

import argparse
from pathlib import Path

from annotation.tiny_llm import build_tiny_llm


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write the model to (kept if already built)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    path = build_tiny_llm(Path(args.out), seed=args.seed)
    print(f"tiny LLM ready at {path} (random weights: outputs are schema-valid nonsense)")
    return 0
