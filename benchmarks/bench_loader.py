"""Data loading versus training: can the data module feed the `tiny` model?

On the same media + annotation shards (the demo MEAD corpus built on the fly, or `--data DIR`), at the
same batch size, window and frame size as `configs/train/tiny.yaml`:
- loader: samples/s of `TBDDataModule.train_dataloader()` (mp4 decode, windows, region and mouth masks,
  cached text embeddings), after a warm-up epoch;
- training: samples/s of `TBDModule` training steps (forward, backward, AdamW) on batches already in memory.
ratio = loader / training: above 1 the loader keeps up (with this many loader workers); prints one JSON line.

Then window decode against clip length (alone with `--window-only`): 16-frame windows at
random starts of a 4 s and a 60 s crop video (256 px, 25 fps, written as preprocess writes them: a keyframe
every 2 s), decoded as the loader does (`decode_frames`: seek, then the window) and as it did before (the
whole clip, then the window). `window_cost_ratio` = ms per window on the long clip / on the short one: 1
when decode cost follows the window; the whole-clip way grows with the clip (15x here).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch


def build_data(tmp: Path) -> Path:
    from tbd.cli import main

    corpus, data = tmp / "corpus", tmp / "data"
    assert main(["demo-corpus", "--out", str(corpus)]) == 0
    assert main(["ingest", "--dataset", "mead", "--root", str(corpus / "mead"), "--out", str(data)]) == 0
    assert main(["preprocess", "--data", str(data), "--media.crop_size", "64", "--clips_per_shard", "8"]) == 0
    assert main(["annotate", "--data", str(data)]) == 0
    return data


def window_decode(seconds: tuple[float, float] = (4.0, 60.0), windows: int = 12, frames: int = 16) -> dict:
    """ms per window: seek-and-decode vs whole-clip decode, on a short and a long clip."""
    import random

    import numpy as np

    from media.video_io import write_mp4
    from tbd_lightning.data import decode_frames, decode_mp4

    rng, out = random.Random(0), {}
    for s in seconds:
        n = int(s * 25)
        t = np.arange(n)[:, None, None, None]
        video = (np.indices((256, 256)).sum(0)[None, ..., None] + 3 * t).astype(np.uint8).repeat(3, -1)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "clip.mp4"
            write_mp4(path, video, fps=25, crf=20, keyframe_every=50)
            data = path.read_bytes()
        starts = [rng.randrange(n - frames) for _ in range(windows)]
        start = time.perf_counter()
        for a in starts:
            decode_frames(data, a, frames, 25)
        seek_ms = (time.perf_counter() - start) / windows * 1000
        start = time.perf_counter()
        for a in starts[:3]:
            decode_mp4(data)[a : a + frames]
        whole_ms = (time.perf_counter() - start) / 3 * 1000
        out[s] = (seek_ms, whole_ms)
    (short, long) = seconds
    return {
        "clip_seconds": list(seconds),
        "window_ms_seek": [round(out[s][0], 1) for s in seconds],
        "window_ms_whole_clip": [round(out[s][1], 1) for s in seconds],
        "window_cost_ratio": round(out[long][0] / out[short][0], 2),
        "whole_clip_cost_ratio": round(out[long][1] / out[short][1], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a data folder with media and annotation shards (default: build the demo)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--window-only", action="store_true", help="only the window-decode comparison")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    windows = window_decode()
    print(f"16-frame window, 4 s vs 60 s clip: seek {windows['window_ms_seek']} ms (ratio "
          f"{windows['window_cost_ratio']}), whole clip {windows['window_ms_whole_clip']} ms (ratio "
          f"{windows['whole_clip_cost_ratio']})")  # fmt: skip
    if args.window_only:
        print(json.dumps({"benchmark": "loader-window", "ratio": windows["window_cost_ratio"], **windows}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    data = Path(args.data) if args.data else build_data(tmp)

    from tbd_lightning.data import TBDDataModule
    from tbd_lightning.module import TBDModule

    torch.manual_seed(0)
    dm = TBDDataModule(
        str(data), frames=args.frames, size=args.size, batch_size=args.batch_size,
        train_batches=args.batches, num_workers=args.workers, text_cache=str(tmp / "text"),
    )  # fmt: skip
    batches = list(dm.train_dataloader())  # warm-up: text embeddings computed and cached once
    start = time.perf_counter()
    n = sum(len(b["key"]) for b in dm.train_dataloader())
    loader_sps = n / (time.perf_counter() - start)

    module = TBDModule()
    opt = module.configure_optimizers()["optimizer"]

    def step(batch):
        module.diffusion_loss(batch).backward()
        opt.step()
        opt.zero_grad()

    for b in batches[:2]:
        step(b)  # warm-up
    start = time.perf_counter()
    for b in batches:
        step(b)
    train_sps = len(batches) * args.batch_size / (time.perf_counter() - start)

    result = {
        "benchmark": "loader",
        "batch_size": args.batch_size,
        "frames": args.frames,
        "size": args.size,
        "workers": args.workers,
        "loader_samples_per_s": round(loader_sps, 2),
        "train_samples_per_s": round(train_sps, 2),
        "train_steps_per_s": round(train_sps / args.batch_size, 2),
        "ratio": round(loader_sps / train_sps, 3),
        "threads": torch.get_num_threads(),
        **windows,
    }
    print(f"data module : {result['loader_samples_per_s']:8.2f} samples/s ({args.workers} workers)")
    print(
        f"tiny train  : {result['train_samples_per_s']:8.2f} samples/s ({result['train_steps_per_s']} steps/s)"
    )
    print(f"loader / training = {result['ratio']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
