"""Preprocess throughput: the whole stage versus the sum of its parts, and 2 Ray workers versus 1 process.

On the same clips (a small demo corpus rendered on the fly, `--input 1080p` for MEAD-size clips: 1920x1080
at 30 fps with 48 kHz m4a, or `--corpus DIR` in the MEAD layout):
- whole stage, one process: `process_clip` per clip (streamed twice: decode + timestamp resampling,
  audio, detect + track mesh, AU features; then decode again, crop, H.264 encode; log-mel);
- parts alone on the same frames: decode every clip once; detect as the stage does (once to start
  tracking, and every face in the first frame, every 125th and the last for the one-speaker check); the
  468-point mesh on every frame. Their summed time is the limit the stage would reach with zero overhead
  (the stage's second decode and its AU features and encode are overhead against it);
- the preprocess job with 2 Ray workers (`ShardBuilder` actors) versus the single process above.
Prints frames/s, the ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from media.clip_media import IDENTITY_EVERY, MediaConfig, process_clip
from media.face import FaceAnalyzer
from media.video_io import iter_frames
from pipelines.ingest import IngestConfig, ingest
from tbd_core.records import Reject


def corpus(tmp: Path) -> Path:
    from tbd.cli import main

    out = tmp / "corpus"
    rc = main(["demo-corpus", "--out", str(out)])  # 3 identities x 8 emotions x 2 levels
    assert rc == 0
    return out / "mead"


def corpus_1080p(tmp: Path, clips: int = 6, seconds: float = 3.0) -> Path:
    """MEAD-size clips: 1920x1080 at 30 fps (the astronaut nodding, two thirds of the height) + 48 kHz m4a."""
    import cv2
    from skimage import data

    from media.video_io import write_m4a, write_mp4

    root = tmp / "mead1080"
    face = cv2.resize(data.astronaut(), (720, 720), interpolation=cv2.INTER_AREA)
    for i in range(clips):
        video = root / "M001" / "video" / "front" / "neutral" / "level_1" / f"{i:03d}.mp4"
        audio = root / "M001" / "audio" / "neutral" / "level_1" / f"{i:03d}.m4a"
        video.parent.mkdir(parents=True, exist_ok=True)
        audio.parent.mkdir(parents=True, exist_ok=True)

        def frames(i=i):
            for k in range(int(seconds * 30)):
                canvas = np.full((1080, 1920, 3), 90, np.uint8)
                dy = int(20 * np.sin((k + 10 * i) / 15))
                canvas[180 + dy : 900 + dy, 600:1320] = face
                yield canvas

        write_mp4(video, frames(), fps=30, crf=23)
        t = np.arange(int((seconds + 0.2) * 48000)) / 48000
        write_m4a(audio, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 48000)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="a MEAD-layout folder (default: render a small demo corpus)")
    ap.add_argument(
        "--input", choices=("demo", "1080p"), default="demo", help="the clips rendered when no --corpus"
    )
    ap.add_argument("--crop-size", type=int, default=128)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    root = Path(args.corpus) if args.corpus else corpus_1080p(tmp) if args.input == "1080p" else corpus(tmp)
    clips, _ = ingest(IngestConfig(dataset="mead", root=root, out=tmp / "data"))
    config = MediaConfig(crop_size=args.crop_size)

    with FaceAnalyzer() as fa:
        process_clip(clips[0], fa, config)  # warm-up (model load, codec init)
        start = time.perf_counter()
        results = [r for c in clips for r in process_clip(c, fa, config)]
        whole = time.perf_counter() - start
        assert not any(isinstance(r, Reject) for r in results), [r for r in results if isinstance(r, Reject)]
        frames = sum(r.meta["frames"] for r in results)

        # The parts, streamed as the stage streams (holding every decoded 1080p frame would time page
        # faults, not decoding): each part's time summed over the same frames.
        t_decode = t_detect = t_mesh = 0.0
        counted = 0
        for clip in clips:
            mesh, last, i = None, None, -1
            tick = time.perf_counter()
            for i, timed in enumerate(iter_frames(clip.video, config.fps)):
                now = time.perf_counter()
                t_decode += now - tick
                last = timed.image
                if i == 0:
                    det = fa.detect_all(last)[0]  # what starts tracking
                if i % IDENTITY_EVERY == 0:  # the one-speaker check: every 125th frame (and the last, below)
                    fa.detect_all(last)
                tick = time.perf_counter()
                t_detect += tick - now
                mesh = (
                    fa.mesh_from_detection(last, det)
                    if i == 0
                    else (fa.mesh_from_previous(last, mesh) or mesh)
                )
                now, tick = tick, time.perf_counter()
                t_mesh += tick - now
            if i % IDENTITY_EVERY:
                now = time.perf_counter()
                fa.detect_all(last)
                t_detect += time.perf_counter() - now
            counted += i + 1
    assert counted == frames

    from pipelines.preprocess import PreprocessConfig, run_preprocess
    from tbd_core.ray_init import init_ray

    init_ray()  # Ray start-up is not part of the job's throughput
    job = run_preprocess(
        PreprocessConfig(
            data=tmp / "data",
            media=config,
            clips_per_shard=8,
            concurrency=2,
            tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        )
    )["metrics"]

    parts = t_decode + t_detect + t_mesh
    result = {
        "benchmark": "preprocess",
        "input": args.corpus or args.input,
        "clips": len(clips),
        "frames": frames,
        "whole_fps": round(frames / whole, 1),
        "parts_limit_fps": round(frames / parts, 1),
        "decode_fps": round(frames / t_decode, 1),
        "detect_per_clip_ms": round(1000 * t_detect / len(clips), 2),
        "mesh_fps": round(frames / t_mesh, 1),
        "ratio": round(parts / whole, 3),
        "ray_2_workers_fps": round(job["frames_per_s"], 1),
        "ray_vs_process_ratio": round(job["frames_per_s"] / (frames / whole), 3),
        "ray_2_workers_steady_fps": round(job["steady_frames_per_s"], 1),
        "ray_steady_vs_process_ratio": round(job["steady_frames_per_s"] / (frames / whole), 3),
        "ray_cpu_utilisation": round(job["cpu_utilisation"], 3),
    }
    print(
        f"whole stage, 1 process : {result['whole_fps']:8.1f} frames/s ({len(clips)} clips, {frames} frames)"
    )
    print(
        f"sum-of-parts limit     : {result['parts_limit_fps']:8.1f} frames/s (decode {result['decode_fps']}, mesh {result['mesh_fps']} fps, detect {result['detect_per_clip_ms']} ms/clip)"
    )
    print(
        f"Ray job, 2 workers     : {result['ray_2_workers_fps']:8.1f} frames/s over the job's wall time "
        f"(worker start-up included); {result['ray_2_workers_steady_fps']:.1f} once the workers are up; "
        f"CPU utilisation {result['ray_cpu_utilisation']:.0%} of all cores"
    )
    print(
        f"whole / parts limit = {result['ratio']} ; 2 Ray workers / 1 process = {result['ray_vs_process_ratio']}x "
        f"(steady: {result['ray_steady_vs_process_ratio']}x)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
