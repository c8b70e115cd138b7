"""`tbd generate --image PORTRAIT --audio SPEECH --emotion contempt --level 2 --model DIR --out out.mp4`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tbd_lightning.sampler import MODES, GuidanceConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, type=Path, help="portrait (any image PIL reads)")
    p.add_argument("--audio", required=True, type=Path, help="speech (wav, mp3, m4a, or a video's audio)")
    p.add_argument("--model", required=True, type=Path, help="folder written by `tbd export`")
    p.add_argument(
        "--out", required=True, type=Path, help="output mp4 (.png strip, _aus.png, .json beside it)"
    )
    p.add_argument("--emotion", default="unknown", help="MEAD emotion label (or omit and give --text)")
    p.add_argument("--level", type=int, help="MEAD intensity level 1..3")
    p.add_argument("--text", help='free-text emotion, e.g. "a bittersweet smile"')
    p.add_argument("--label-only", action="store_true", help="ablation: global text is the label, no CoT")
    p.add_argument("--engine", default="facs", help="think engine: facs (default), vllm, openai")
    p.add_argument("--llm", help="vllm/openai: the model (local path or served name)")
    p.add_argument("--base-url", help="openai: endpoint base URL")
    d = GuidanceConfig()
    g = p.add_argument_group("guidance")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--scheduler", default=d.scheduler, choices=["ddim", "euler", "dpm"])
    g.add_argument("--audio-scale", type=float, default=d.audio_scale)
    g.add_argument("--global-scale", type=float, default=d.global_scale)
    g.add_argument("--local-scale", type=float, default=d.local_scale)
    g.add_argument("--switch", type=float, default=d.switch, help="progress at which local control starts")
    g.add_argument("--global-floor", type=float, default=d.global_floor)
    g.add_argument("--mode", default=d.mode, choices=MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.add_argument("--tracking-uri", help="MLflow store (default: the training run's, else beside the model)")


def run(args: argparse.Namespace) -> int:
    from tbd_lightning.generate import GenerateConfig, generate

    engine_config = {}
    if args.engine != "facs":
        engine_config["model"] = args.llm
        if args.base_url:
            engine_config["base_url"] = args.base_url
    guidance = GuidanceConfig(
        steps=args.steps, scheduler=args.scheduler, audio_scale=args.audio_scale, global_scale=args.global_scale,
        local_scale=args.local_scale, switch=args.switch, global_floor=args.global_floor, mode=args.mode,
    )  # fmt: skip
    report = generate(
        GenerateConfig(
            image=args.image,
            audio=args.audio,
            model=args.model,
            out=args.out,
            emotion=args.emotion,
            level=args.level,
            text=args.text,
            label_only=args.label_only,
            engine=args.engine,
            engine_config=engine_config,
            guidance=guidance,
            seed=args.seed,
            max_seconds=args.max_seconds,
            device=args.device,
            tracking_uri=args.tracking_uri,
        )  # fmt: skip
    )
    print(json.dumps({k: report[k] for k in ("video", "strip", "au_plot", "frames", "seconds", "emotion")}))
    return 0
