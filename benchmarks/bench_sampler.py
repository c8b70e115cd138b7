"""Progressive guidance versus plain two-branch classifier-free guidance: seconds per denoising step.

Same denoiser (the `tiny` preset, random weights; `--sd DIR` the latent SD model built from a Stable-Diffusion
folder, e.g. `tbd tiny-sd --out DIR`; or the `--model DIR` pipeline of `tbd export`), same conditions,
scheduler, step count and seed. Progressive guidance evaluates 3 branches per step before the switch point
and 4 after (one batched forward pass each); plain CFG evaluates 2. Prints both, the ratio, the branch-count
expectation, and one JSON line. For a model with reference attention it also times progressive guidance with
the reference features recomputed in every forward pass (no cache) against the cached run: the saving.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from tbd_lightning.model import Conditions, TBDVideoDenoiser
from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler


def models(args, device: str):
    """(denoiser, training scheduler config) to bench: the one asked for, else the pixel `tiny` preset and the
    latent SD model of a tiny SD-1.5-layout folder (`tbd tiny-sd`, written to a temporary folder)."""
    if args.model:
        from tbd_lightning.pipeline import TBDPipeline

        pipe = TBDPipeline.from_pretrained(args.model).to(device)
        yield pipe.denoiser, pipe.scheduler.config, args.size
        return
    if not args.sd:
        model = TBDVideoDenoiser.from_preset("tiny").eval().to(device)
        yield (
            model,
            DDPMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True).config,
            args.size,
        )
    import tempfile

    from tbd_lightning.sd_model import SDVideoDenoiser, sd_scheduler_betas
    from tbd_lightning.tiny_sd import write_tiny_sd

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.sd or write_tiny_sd(Path(tmp) / "tiny-sd", motion=False)
        model = SDVideoDenoiser.from_sd(folder, max_frames=max(32, args.frames)).eval().to(device)
        if device == "cuda":
            model = model.to(torch.bfloat16)
        yield model, DDPMScheduler(**sd_scheduler_betas(folder)).config, args.latent_size


def bench(model, train_config, s: int, args, device: str) -> dict:
    c, t = model.config.in_channels, args.frames
    g = torch.Generator().manual_seed(0)
    cond = Conditions(
        torch.randn(1, model.config.ref_channels, s, s, generator=g), torch.randn(1, t, model.config.audio_dim, generator=g),
        torch.randn(1, model.config.text_dim, generator=g), torch.randn(1, 8, model.config.text_dim, generator=g),
        torch.arange(8)[None] < 3, torch.rand(1, t, 1, s, s, generator=g),
    ).map(lambda x: x.to(device=device, dtype=model.dtype) if x.is_floating_point() else x.to(device))  # fmt: skip
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
    uncached = None
    if getattr(model.config, "reference_attention", False):
        model.cache_reference = False
        uncached = per_step(GuidanceConfig(steps=args.steps, switch=args.switch))
        model.cache_reference = True
    result = {
        "benchmark": "sampler",
        "model": type(model).__name__,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "size": s,
        "frames": t,
        "steps": args.steps,
        "progressive_s_per_step": round(progressive, 4),
        "cfg_s_per_step": round(plain, 4),
        "ratio": round(progressive / plain, 3),
        "branch_ratio": round(expected, 3),
    }
    print(f"== {result['model']} ({s}x{s}, {t} frames, {device})")
    print(f"progressive guidance : {progressive * 1000:8.1f} ms/step")
    print(f"plain CFG (2 branches): {plain * 1000:8.1f} ms/step")
    print(f"progressive / CFG = {result['ratio']} (branch count alone: {result['branch_ratio']})")
    if uncached is not None:
        saving = round(uncached / progressive, 3)
        result.update(progressive_uncached_s_per_step=round(uncached, 4), reference_cache_saving=saving)
        print(f"progressive, reference recomputed in every pass: {uncached * 1000:8.1f} ms/step "
              f"(the cache saves {saving}x)")  # fmt: skip
    print(json.dumps(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a pipeline folder of `tbd export` (only this model)")
    ap.add_argument("--sd", help="a Stable-Diffusion folder (only the latent SDVideoDenoiser built from it)")
    ap.add_argument("--size", type=int, default=32, help="pixel models' frame size")
    ap.add_argument(
        "--latent_size", type=int, default=16, help="latent models' latent size (SD-1.5 at 512 px: 64)"
    )
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--switch", type=float, default=0.4)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    for model, train_config, size in models(args, device):
        bench(model, train_config, size, args, device)


if __name__ == "__main__":
    main()
