"""`tbd demo-corpus --out DIR`: render the embedded demo corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from annotation.facs import MEAD_EMOTIONS


def _csv(kind):
    return lambda s: tuple(kind(x.strip()) for x in s.split(",") if x.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (created atomically)")
    p.add_argument("--portraits", type=Path, help="folder of portrait photos (default: packaged real photos)")
    p.add_argument("--identities", type=int, default=3, help="number of identities (default 3)")
    p.add_argument("--emotions", type=_csv(str), default=MEAD_EMOTIONS, help="comma list (default: MEAD's 8)")
    p.add_argument("--levels", type=_csv(int), default=(1, 3), help="comma list of MEAD levels (default 1,3)")
    p.add_argument("--clips-per-level", type=int, default=1)
    p.add_argument("--hdtf-clips", type=int, default=1, help="HDTF-layout clips per identity (default 1)")
    p.add_argument("--seconds", type=float, default=2.0, help="clip length (default 2 s)")
    p.add_argument("--size", type=int, default=128, help="frame size in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="render processes (default min(2, cores))")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from pipelines.demo_corpus.corpus import CorpusConfig, build

    cfg = CorpusConfig(
        out=args.out,
        portraits=args.portraits,
        identities=args.identities,
        emotions=tuple(e.lower() for e in args.emotions),
        levels=args.levels,
        clips_per_level=args.clips_per_level,
        hdtf_clips=args.hdtf_clips,
        seconds=args.seconds,
        size=args.size,
        seed=args.seed,
        force=args.force,
        **({"workers": args.workers} if args.workers else {}),
    )
    out = build(cfg)
    print(f"demo corpus written to {out}")
    print(
        f"  MEAD layout: {out / 'mead'}\n  HDTF layout: {out / 'hdtf'}\n  ground truth (evaluation only): "
        f"{out / 'groundtruth'}\n  index: {out / 'corpus.json'}"
    )
    return 0
