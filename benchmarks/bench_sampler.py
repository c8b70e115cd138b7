"""Progressive guidance versus plain two-branch classifier-free guidance: seconds per denoising step.

Same denoiser (the `tiny` preset, random weights; `--sd DIR` the latent SD model built from a Stable-Diffusion
folder, e.g. `tbd tiny-sd --out DIR`; or the `--model DIR` pipeline of `tbd export`), same conditions,
scheduler, step count and seed; three local sentences with their own region masks, as `TBDPipeline` passes them. Progressive guidance evaluates 3 branches per step before the switch point
and 4 after (one batched forward pass each); plain CFG evaluates 2. Prints both, the ratio, the branch-count
expectation (branch rows evaluated, counted by the sampler), and one JSON line; then the same with guidance
limited to `--interval` (both modes: one unguided branch outside it, Kynkäänniemi et al. 2024). A step's cost
is linear in its branch rows once freed memory stays in the process (`tbd_core.allocator`, as in `tbd`;
`--glibc_defaults` runs without it: there a batch of 4 branches cost 2.2x a batch of 2, page faults). For a model with reference attention it also times progressive guidance with
the reference features recomputed in every forward pass (no cache) against the cached run: the saving.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from tbd_core.allocator import keep_freed_memory
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


def bench(model, train_config, s: int, args, device: str, kept: bool) -> dict:
    c, t = model.config.in_channels, args.frames
    g = torch.Generator().manual_seed(0)
    cond = Conditions(
        torch.randn(1, model.config.ref_channels, s, s, generator=g), torch.randn(1, t, model.config.audio_dim, generator=g),
        torch.randn(1, *model.global_text_shape, generator=g), torch.randn(1, 8, model.config.text_dim, generator=g),
        torch.arange(8)[None] < 3, torch.rand(1, t, 1, s, s, generator=g),
        local_masks=(torch.rand(1, t, 8, s, s, generator=g) > 0.5).float() * (torch.arange(8) < 3)[:, None, None],
    ).map(lambda x: x.to(device=device, dtype=model.dtype) if x.is_floating_point() else x.to(device))  # fmt: skip
    shape = (1, t, c, s, s)

    def per_step(config: GuidanceConfig) -> tuple[float, int]:
        sampler = ProgressiveSampler(model, train_config, config)
        sampler.sample(shape, cond, generator=torch.Generator(device).manual_seed(0))  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        rows, start = sampler.branch_evaluations, time.perf_counter()
        sampler.sample(shape, cond, generator=torch.Generator(device).manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps, sampler.branch_evaluations - rows

    def compare(interval: tuple[float, float]) -> tuple[float, float, float, float]:
        """(progressive s/step, CFG s/step, ratio, branch-row ratio); the two modes alternate 3 times and
        each keeps its fastest run, so a slow moment of a shared machine does not land on one side."""
        runs = {"progressive": [], "cfg": []}
        for _ in range(3):
            for mode in runs:
                config = GuidanceConfig(steps=args.steps, switch=args.switch, mode=mode, interval=interval)
                runs[mode].append(per_step(config))
        (p, p_rows), (c, c_rows) = min(runs["progressive"]), min(runs["cfg"])
        return p, c, p / c, p_rows / c_rows

    progressive, plain, ratio, expected = compare((0.0, 1.0))
    limited = compare(tuple(args.interval))
    uncached = None
    if getattr(model.config, "reference_attention", False):
        model.cache_reference = False
        uncached = per_step(GuidanceConfig(steps=args.steps, switch=args.switch))[0]
        model.cache_reference = True
    result = {
        "benchmark": "sampler",
        "model": type(model).__name__,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "size": s,
        "frames": t,
        "steps": args.steps,
        "keep_freed_memory": kept,
        "progressive_s_per_step": round(progressive, 4),
        "cfg_s_per_step": round(plain, 4),
        "ratio": round(ratio, 3),
        "branch_ratio": round(expected, 3),
        "interval": list(args.interval),
        "interval_progressive_s_per_step": round(limited[0], 4),
        "interval_cfg_s_per_step": round(limited[1], 4),
        "interval_ratio": round(limited[2], 3),
        "interval_branch_ratio": round(limited[3], 3),
    }
    print(f"== {result['model']} ({s}x{s}, {t} frames, {device})")
    print(f"progressive guidance : {progressive * 1000:8.1f} ms/step")
    print(f"plain CFG (2 branches): {plain * 1000:8.1f} ms/step")
    print(f"progressive / CFG = {result['ratio']} (branch count alone: {result['branch_ratio']})")
    print(
        f"guidance in p in {args.interval} only: progressive {limited[0] * 1000:.1f}, CFG {limited[1] * 1000:.1f}"
        f" ms/step, ratio {result['interval_ratio']} (branch count: {result['interval_branch_ratio']})"
    )
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
    ap.add_argument("--glibc_defaults", action="store_true",
                    help="leave malloc as glibc sets it (the comparison for tbd_core.allocator)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--switch", type=float, default=0.4)
    ap.add_argument(
        "--interval",
        type=float,
        nargs=2,
        default=(0.0, 0.8),
        metavar=("LO", "HI"),
        help="progress range of the limited-interval comparison",
    )
    args = ap.parse_args()
    kept = not args.glibc_defaults and keep_freed_memory()  # as `tbd` does (tbd_core.allocator)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    for model, train_config, size in models(args, device):
        bench(model, train_config, size, args, device, kept)


if __name__ == "__main__":
    main()
