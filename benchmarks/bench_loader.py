"""Data loading versus training: can the data module feed the `tiny` model?

On the same media + annotation shards (the demo MEAD corpus built on the fly, or `--data DIR`), at the
same batch size, window and frame size as `configs/train/tiny.yaml`:
- loader: samples/s of `TBDDataModule.train_dataloader()` (mp4 decode, windows, region and mouth masks,
  cached text embeddings), after a warm-up epoch;
- training: samples/s of `TBDModule` training steps (forward, backward, AdamW) on batches already in memory.
ratio = loader / training: above 1 the loader keeps up (with this many loader workers); prints one JSON line.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a data folder with media and annotation shards (default: build the demo)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
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
    }
    print(f"data module : {result['loader_samples_per_s']:8.2f} samples/s ({args.workers} workers)")
    print(
        f"tiny train  : {result['train_samples_per_s']:8.2f} samples/s ({result['train_steps_per_s']} steps/s)"
    )
    print(f"loader / training = {result['ratio']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
