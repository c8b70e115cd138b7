"""Preprocess throughput: the whole stage versus the sum of its parts, and 2 Ray workers versus 1 process.

On the same clips (a small demo corpus rendered on the fly, or `--corpus DIR` in the MEAD layout):
- whole stage, one process: `process_clip` per clip (decode, audio, detect + track mesh, crop, AU
  proxies, log-mel, H.264 encode);
- parts alone on the same frames: decode every clip; detect as the stage does (once to start tracking,
  and every face in the first, middle and last frame for the one-speaker check); the 468-point mesh on
  every frame. Their summed time is the limit the stage would reach with zero overhead;
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

from media.clip_media import MediaConfig, process_clip
from media.face import FaceAnalyzer
from media.video_io import read_frames
from pipelines.ingest import IngestConfig, ingest


def corpus(tmp: Path) -> Path:
    from tbd.cli import main

    out = tmp / "corpus"
    rc = main(["demo-corpus", "--out", str(out)])  # 3 identities x 8 emotions x 2 levels
    assert rc == 0
    return out / "mead"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="a MEAD-layout folder (default: render a small demo corpus)")
    ap.add_argument("--crop-size", type=int, default=128)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    root = Path(args.corpus) if args.corpus else corpus(tmp)
    clips, _ = ingest(IngestConfig(dataset="mead", root=root, out=tmp / "data"))
    config = MediaConfig(crop_size=args.crop_size)

    with FaceAnalyzer() as fa:
        process_clip(clips[0], fa, config)  # warm-up (model load, codec init)
        start = time.perf_counter()
        frames = sum(process_clip(c, fa, config).meta["frames"] for c in clips)
        whole = time.perf_counter() - start

        start = time.perf_counter()
        decoded = [read_frames(c.video)[0] for c in clips]
        t_decode = time.perf_counter() - start
        start = time.perf_counter()
        detections = [fa.detect(v[0]) for v in decoded]
        for v in decoded:  # the one-speaker check: every face in the first, middle and last frame
            for i in sorted({0, len(v) // 2, len(v) - 1}):
                fa.detect_all(v[i])
        t_detect = time.perf_counter() - start
        start = time.perf_counter()
        for video, det in zip(decoded, detections, strict=True):
            mesh = fa.mesh_from_detection(video[0], det)
            for frame in video[1:]:
                mesh = fa.mesh_from_previous(frame, mesh) or mesh
        t_mesh = time.perf_counter() - start
    assert sum(len(v) for v in decoded) == frames

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
