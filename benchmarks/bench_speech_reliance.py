"""Does a trained denoiser use speech? Its x0 error inside the mouth with another clip's audio over the
error with the clip's own audio, same noisy input and timestep (1.0: speech unused; higher: it relies on it).

Teacher-forced on real training windows, so it is far less noisy than the conditioning check's `speech`
effect (a correlation over 24 generated frames of 4 clips). Each model is also measured with its speech path
cut (`evaluation.conditioning.BrokenPath`): the known answer there is exactly 1.0. Pixel-space models
(`tiny`). Prints one line per model and one JSON line:

    python benchmarks/bench_speech_reliance.py [--data D --version V] [MODEL ...]

Defaults (after `make demo` and `make check-conditioning`): the demo's model and the check's overfit, on the
demo's MEAD data and the annotation version they trained on (`out/demo/mead-llm.json`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tbd_lightning.module import mouth_map

CLIPS = ["mead_W001_happy_3_000", "mead_W001_sad_3_000", "mead_W002_happy_3_000", "mead_W002_sad_3_000"]
TIMESTEPS = (100, 300, 500, 700)


def mouth_errors(model, scheduler, module, batches, seed: int = 0) -> tuple[float, float]:
    """(mean mouth-region x0 squared error with the own audio, with the audio rolled one clip over)."""
    g = torch.Generator().manual_seed(seed)
    own, swap = [], []
    with torch.no_grad():
        for batch in batches:
            x0, b = batch["video"], batch["video"].shape[0]
            mouth = mouth_map(batch, x0)
            for t0 in TIMESTEPS:
                t = torch.full((b,), t0)
                noisy = scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), t)
                for out, audio in ((own, batch["audio"]), (swap, batch["audio"].roll(1, 0))):
                    pred = model(noisy, t, module.conditions({**batch, "audio": audio}))
                    err = (pred - x0).square().mean(2, keepdim=True)
                    out.append(float((err * mouth).sum() / mouth.sum()))
    return float(np.mean(own)), float(np.mean(swap))


def main() -> None:
    from evaluation.conditioning import BrokenPath
    from tbd_lightning.data import TBDDataModule
    from tbd_lightning.module import TBDModule
    from tbd_lightning.pipeline import TBDPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["out/demo/model", "out/demo/check-conditioning/model"],
                    help="exported pipelines (tbd export), pixel space")  # fmt: skip
    ap.add_argument("--data", default="out/demo/data/mead")
    ap.add_argument("--version", help="annotation version (default: out/demo/mead-llm.json's)")
    ap.add_argument("--clips", nargs="+", default=CLIPS, help="4 clips: each batch swaps audio among them")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--text_cache", default="out/demo/text-cache")
    args = ap.parse_args()
    demo = Path("out/demo/mead-llm.json")
    if args.version is None and not demo.is_file():
        raise SystemExit(
            "name --version (or run `make demo` first: its version is in out/demo/mead-llm.json)"
        )
    version = args.version or json.loads(demo.read_text())["version"]
    results = []
    module = TBDModule(prediction_type="sample")  # its `conditions` (batch -> Conditions), on each model
    for folder in args.models:
        pipe = TBDPipeline.from_pretrained(folder)
        if pipe.scheduler.config.prediction_type != "sample" or pipe.vae is not None:
            raise SystemExit(
                f"{folder}: a pixel-space x0 (prediction_type sample) model is what this measures"
            )
        dm = TBDDataModule(args.data, version, frames=pipe.frames, batch_size=len(args.clips),
                           train_batches=args.batches, size=pipe.size, clips=args.clips,
                           text_cache=args.text_cache, num_workers=0)  # fmt: skip
        torch.manual_seed(0)
        batches = list(dm.train_dataloader())
        module.model = model = pipe.denoiser.eval()  # `conditions` checks the batch against this model
        own, swap = mouth_errors(model, pipe.scheduler, module, batches)
        with BrokenPath(model, "speech"):
            cut_own, cut_swap = mouth_errors(model, pipe.scheduler, module, batches)
        row = {"model": folder, "mouth_mse_own": round(own, 5), "mouth_mse_swapped": round(swap, 5),
               "reliance": round(swap / own, 3), "reliance_speech_cut": round(cut_swap / cut_own, 4)}  # fmt: skip
        print(f"{folder}: mouth x0 error own {own:.5f}, swapped speech {swap:.5f}: reliance {swap / own:.3f} "
              f"(speech path cut: {cut_swap / cut_own:.4f})")  # fmt: skip
        results.append(row)
    print(json.dumps({"benchmark": "speech-reliance", "clips": args.clips, "timesteps": TIMESTEPS,
                      "batches": args.batches, "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
