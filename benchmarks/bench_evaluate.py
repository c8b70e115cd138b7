"""Evaluation's sampling: the clips of one table row one by one versus through one batched call.

`tbd evaluate` samples every clip of a row (the same guidance and seed) through one `TBDPipeline.generate`
call, whose windows go through the denoiser together (`tbd_lightning.video_batch`); before, each clip was a
`TBDPipeline.__call__` of its own. Same exported model, clips, guidance and seed; each way is timed
`--repeats` times alternately and the fastest kept. Prints both, their ratio, the largest difference
between the two ways' frames (the batching must not change a video), and one JSON line. With
`--motion_frames K` the windows of each clip follow one another, so window w of every clip forms a batch.
Default inputs: what `make demo` wrote under out/demo.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tbd_core.allocator import keep_freed_memory


def main() -> None:
    from evaluation.clips import load_clips
    from evaluation.evaluate import EvaluateConfig
    from tbd_lightning.pipeline import TBDPipeline
    from tbd_lightning.sampler import GuidanceConfig
    from tbd_lightning.video_batch import VideoRequest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("out/demo/model"))
    ap.add_argument("--data", type=Path, default=Path("out/demo/data/mead"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=50, help="frames per clip (evaluate's max_frames)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--motion_frames", type=int, default=None, help="default: as the model was trained")
    ap.add_argument("--max_frames_per_batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if not (args.model / "model_index.json").is_file():
        raise SystemExit(f"no exported model at {args.model}: run `make demo` first")
    keep_freed_memory()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = TBDPipeline.from_pretrained(args.model).to(device)
    config = EvaluateConfig(model=args.model, data=args.data, split=args.split, max_clips=args.clips,
                            max_frames=args.frames)  # fmt: skip
    from pipelines.data_folder import DataFolder

    version = DataFolder(args.data).pick_version(pipe.config.annotation_version)
    clips = load_clips(config, pipe.size, version, {})
    guidance = GuidanceConfig(steps=args.steps, motion_frames=args.motion_frames)
    requests = [VideoRequest(c.reference, c.reference_landmarks, c.audio_features, cot=c.cot) for c in clips]

    def one_by_one():
        return [pipe(r.reference, r.reference_landmarks, r.audio_features, cot=r.cot, guidance=guidance,
                     seed=0, max_frames_per_batch=args.max_frames_per_batch).frames for r in requests]  # fmt: skip

    def batched():
        outs = pipe.generate(requests, guidance, 0, max_frames_per_batch=args.max_frames_per_batch)
        return [o.frames for o in outs]

    times = {"one_by_one": [], "batched": []}
    frames = {}
    batched()  # warm-up (text encoder, allocator)
    for _ in range(args.repeats):
        for name, fn in (("one_by_one", one_by_one), ("batched", batched)):
            start = time.perf_counter()
            frames[name] = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    diff = max(
        int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(*frames.values(), strict=True)
    )
    best = {k: min(v) for k, v in times.items()}
    ratio = best["one_by_one"] / best["batched"]
    n_frames = sum(len(r.audio_features) for r in requests)
    print(f"{len(clips)} clips, {n_frames} frames, {args.steps} steps, {pipe.size} px, device {device}")
    print(f"one by one: {best['one_by_one']:.2f} s   batched: {best['batched']:.2f} s   ratio {ratio:.2f}")
    print(f"largest pixel difference between the two ways: {diff} (of 255)")
    print(json.dumps({"benchmark": "evaluate_batching", "ratio": round(ratio, 3), "clips": len(clips),
                      "frames": n_frames, "steps": args.steps, "device": device,
                      "seconds": {k: round(v, 3) for k, v in best.items()}, "max_pixel_diff": diff,
                      "motion_frames": args.motion_frames}))  # fmt: skip


if __name__ == "__main__":
    main()
