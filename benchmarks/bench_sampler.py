"""Progressive guidance versus plain two-branch classifier-free guidance: seconds per denoising step.

Same denoiser (the `tiny` preset, random weights, or the `--model DIR` pipeline of `tbd export`), same
conditions, scheduler, step count and seed. Progressive guidance evaluates 3 branches per step before
the switch point and 4 after (one batched forward pass each); plain CFG evaluates 2. Prints both, the
ratio, the branch-count expectation, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import DDPMScheduler

from tbd_lightning.model import Conditions, TBDVideoDenoiser
from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", help="a pipeline folder of `tbd export` (default: the tiny preset, random weights)"
    )
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--switch", type=float, default=0.4)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if args.model:
        from tbd_lightning.pipeline import TBDPipeline

        pipe = TBDPipeline.from_pretrained(args.model).to(device)
        model, train_config = pipe.denoiser, pipe.scheduler.config
    else:
        model = TBDVideoDenoiser.from_preset("tiny").eval().to(device)
        train_config = DDPMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True).config
    c, s, t = model.config.in_channels, args.size, args.frames
    g = torch.Generator().manual_seed(0)
    cond = Conditions(
        torch.randn(1, model.config.ref_channels, s, s, generator=g), torch.randn(1, t, model.config.audio_dim, generator=g),
        torch.randn(1, model.config.text_dim, generator=g), torch.randn(1, 8, model.config.text_dim, generator=g),
        torch.arange(8)[None] < 3, torch.rand(1, t, 1, s, s, generator=g),
    ).map(lambda x: x.to(device))  # fmt: skip
    shape = (1, t, c, s, s)

    def per_step(config: GuidanceConfig) -> float:
        sampler = ProgressiveSampler(model, train_config, config)
        sampler.sample(shape, cond, generator=torch.Generator(device).manual_seed(0))  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sampler.sample(shape, cond, generator=torch.Generator(device).manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    progressive = per_step(GuidanceConfig(steps=args.steps, switch=args.switch))
    plain = per_step(GuidanceConfig(steps=args.steps, mode="cfg"))
    expected = (args.switch * 3 + (1 - args.switch) * 4) / 2
    result = {
        "benchmark": "sampler",
        "device": device,
        "size": s,
        "frames": t,
        "steps": args.steps,
        "progressive_s_per_step": round(progressive, 4),
        "cfg_s_per_step": round(plain, 4),
        "ratio": round(progressive / plain, 3),
        "branch_ratio": round(expected, 3),
    }
    print(f"progressive guidance : {progressive * 1000:8.1f} ms/step")
    print(f"plain CFG (2 branches): {plain * 1000:8.1f} ms/step")
    print(f"progressive / CFG = {result['ratio']} (branch count alone: {result['branch_ratio']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
