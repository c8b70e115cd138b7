"""Training throughput of the pixel model against the latent SD model: steps/s, samples/s, peak memory.

On a GPU (the issue's setting): 512 px, 16 frames, bf16 autocast, gradient checkpointing, fused AdamW; the
pixel `base` preset against the latent `sd` model with SD-1.5's full architecture (random weights written
by `tbd tiny-sd --arch sd15` to a temporary folder, or `--sd DIR` for a real SD-1.5 folder), its VAE
encoding the frames in every step as in training. On CPU it runs the tiny configurations (`tiny` at 32 px
against `tbd tiny-sd` at 32 px, 8 frames, float32) and says so. The batch is synthetic (random video,
texts and masks of the shapes the data module gives): this measures the model, not the loader
(`bench_loader.py`). Prints both, the ratio of samples/s (latent / pixel), and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

from tbd_core.allocator import keep_freed_memory


def batch(
    b: int, t: int, s: int, device, text_dim: int = 384, audio_dim: int = 80, max_local: int = 8
) -> dict:
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(b, max_local, s, s, generator=g) > 0.7).half()  # static over the window
    out = {
        "key": [f"clip{i}" for i in range(b)],
        "video": torch.rand(b, t, 3, s, s, generator=g) * 2 - 1,
        "reference": torch.rand(b, 3, s, s, generator=g) * 2 - 1,
        "audio": torch.randn(b, t, audio_dim, generator=g),
        "mask": masks.float().amax(1, keepdim=True),
        "local_masks": masks,
        "mouth": (torch.rand(b, t, 1, s, s, generator=g) > 0.8).float(),
        "global_text": torch.randn(b, text_dim, generator=g),
        "label_text": torch.randn(b, text_dim, generator=g),
        "local_text": torch.randn(b, max_local, text_dim, generator=g),
        "local_valid": (torch.arange(max_local) < 3)[None].expand(b, -1),
    }
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in out.items()}


def run(name: str, module, data: dict, steps: int, device: str, bf16: bool) -> dict:
    module = module.to(device).train()
    opt = module.configure_optimizers()["optimizer"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with autocast:
            loss = module.diffusion_loss(data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        start = time.perf_counter()
        for _ in range(2):  # warm-up (allocator, kernels; torch.compile compiles here)
            step()
        warmup = time.perf_counter() - start
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    except torch.OutOfMemoryError:
        return {"model": name, "error": "out of memory"}
    b = data["video"].shape[0]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    ema = ema_seconds(module, steps, device)
    return {"model": name, "steps_per_s": round(1 / seconds, 4), "samples_per_s": round(b / seconds, 4),
            "peak_gib": None if peak is None else round(peak, 2), "trainable_params": trainable,
            "warmup_s": round(warmup, 1), **{f"ema_{k}_s": round(v, 5) for k, v in ema.items()},
            "ema_share": round(ema["foreach"] / (seconds + ema["foreach"]), 4)}  # fmt: skip


def ema_seconds(module, steps: int, device: str) -> dict[str, float]:
    """Seconds per EMA update of `module`: `WarmupEMA`'s `ForeachEMA` (trainable tensors, one foreach lerp)
    against the per-tensor `AveragedModel(avg_fn=EMADecay)` it replaced (a host sync per tensor)."""
    from torch.optim.swa_utils import AveragedModel

    from tbd_lightning.callbacks import EMADecay, ForeachEMA

    makers = {"foreach": lambda: ForeachEMA(module, EMADecay(0.9999), use_buffers=True),
              "per_tensor": lambda: AveragedModel(module, avg_fn=EMADecay(0.9999), use_buffers=True)}  # fmt: skip
    out = {}
    for name, make in makers.items():
        ema = make()
        ema.update_parameters(module)  # the first update copies
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            ema.update_parameters(module)
        if device == "cuda":
            torch.cuda.synchronize()
        out[name] = (time.perf_counter() - start) / steps
        del ema
    return out


def main() -> None:
    from tbd_lightning.module import TBDModule
    from tbd_lightning.tiny_sd import write_tiny_sd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sd", help="a real Stable-Diffusion-1.5 folder (default: its architecture, random weights)"
    )
    ap.add_argument("--size", type=int, help="frame size (GPU default 512, CPU 32)")
    ap.add_argument("--frames", type=int, help="frames per sample (GPU default 16, CPU 8)")
    ap.add_argument("--batch", type=int, help="samples per step (default 1; --compile: 4)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--trainable", default="all", help="sd model: all | spatial | motion")
    ap.add_argument(
        "--checkpointing", choices=("on", "off"), help="gradient checkpointing (default: on with a GPU)"
    )
    ap.add_argument("--compile", action="store_true",
                    help="tiny.yaml's pixel model eager vs torch.compile (default 48 px, batch 4)")  # fmt: skip
    args = ap.parse_args()
    keep_freed_memory()  # as `tbd` does (tbd_core.allocator)
    if args.compile:
        return compare_compile(args)
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    size, frames = args.size or (512 if gpu else 32), args.frames or (16 if gpu else 8)
    args.batch = args.batch or 1
    data = batch(args.batch, frames, size, device)
    checkpointing = gpu if args.checkpointing is None else args.checkpointing == "on"
    common = dict(
        gradient_checkpointing=checkpointing, optimizer="adamw-fused" if gpu else "adamw", warmup_steps=0
    )
    results = {}
    torch.manual_seed(0)
    pixel = TBDModule(
        model="base" if gpu else "tiny", model_overrides={"max_frames": max(32, frames)}, **common
    )
    results["pixel"] = run("base" if gpu else "tiny", pixel, data, args.steps, device, gpu)
    del pixel
    if gpu:
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.sd or write_tiny_sd(Path(tmp) / "sd", motion=False, arch="sd15" if gpu else "tiny")
        latent = TBDModule(model="sd", pretrained=str(folder), trainable=args.trainable, prediction_type="epsilon",
                           rescale_zero_snr=False, model_overrides={"max_frames": max(32, frames)}, **common)  # fmt: skip
        if gpu:
            latent.vae.to(device, torch.bfloat16)
        # SD takes the global and label texts as its text encoder's token states (77 x cross_attention_dim)
        states = torch.randn(
            args.batch, *latent.model.global_text_shape, generator=torch.Generator().manual_seed(1)
        )
        sd_data = {**data, "global_text": states.to(device), "label_text": states.flip(0).to(device)}
        results["latent"] = run("sd15" if gpu else "sd-tiny", latent, sd_data, args.steps, device, gpu)
    ok = all("error" not in r for r in results.values())
    ratio = results["latent"]["samples_per_s"] / results["pixel"]["samples_per_s"] if ok else None
    card = torch.cuda.get_device_name() if gpu else "cpu (tiny configurations: not the 512 px setting)"
    for r in results.values():
        print(f"{r['model']:8s} " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "model"))
    print(f"latent / pixel samples/s = {None if ratio is None else round(ratio, 3)} on {card}")
    print(json.dumps({"benchmark": "train", "device": card, "size": size, "frames": frames, "batch": args.batch,
                      "bf16": gpu, "gradient_checkpointing": checkpointing, "trainable": args.trainable,
                      "ratio": None if ratio is None else round(ratio, 3), **results}))  # fmt: skip


def compare_compile(args) -> None:
    """The pixel model of `configs/train/tiny.yaml` (its model section) eager vs `torch.compile`d."""
    import yaml

    from tbd_lightning.module import TBDModule

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    size, frames = args.size or 48, args.frames or 8
    b = args.batch or 4
    config = yaml.safe_load(Path("configs/train/tiny.yaml").read_text())["model"]
    data = batch(b, frames, size, device)
    results = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        module = TBDModule(**{**config, "warmup_steps": 0})
        if name == "compiled":
            module.model = torch.compile(module.model)
        results[name] = run(name, module, data, args.steps, device, gpu)
    ratio = results["compiled"]["samples_per_s"] / results["eager"]["samples_per_s"]
    card = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    for r in results.values():
        print(f"{r['model']:8s} " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "model"))
    print(f"compiled / eager samples/s = {ratio:.3f} on {card}")
    print(json.dumps({"benchmark": "train-compile", "device": card, "size": size, "frames": frames, "batch": b,
                      "bf16": gpu, "ratio": round(ratio, 3), **results}))  # fmt: skip


if __name__ == "__main__":
    main()
