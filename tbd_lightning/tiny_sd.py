"""`tbd tiny-sd --out DIR`: a Stable-Diffusion-1.5 folder in diffusers layout with tiny random weights.

    DIR/model_index.json   StableDiffusionPipeline (as the real SD-1.5 folder)
    DIR/unet/              UNet2DConditionModel: SD-1.5's block types (3 cross-attention levels + 1 plain)
    DIR/vae/               AutoencoderKL (2 levels: 8x fewer pixels per latent than SD's 3 downsamplings)
    DIR/text_encoder/      CLIPTextModel
    DIR/tokenizer/         CLIPTokenizer (byte-level vocabulary built here: no merges, nothing downloaded)
    DIR/scheduler/         PNDMScheduler with SD-1.5's betas
    DIR/motion_adapter/    MotionAdapter matching the UNet (an AnimateDiff motion-module folder), with
                           `--motion true`

What diffusers' own tests do with hub folders, offline: the same code paths that load a real SD-1.5 folder
(`--model.pretrained /models/stable-diffusion-v1-5`) run on CPU in seconds. The weights are random.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# SD-1.5's layout, shrunk: same block types, 4 levels, cross-attention at the first three.
UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)  # fmt: skip
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=64,
    scaling_factor=0.18215,
)  # fmt: skip
# SD-1.5's own sizes (random weights): what `benchmarks/bench_train.py` times on a GPU without the real folder.
SD15_UNET = dict(
    UNET, sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=32,
)  # fmt: skip
SD15_VAE = dict(
    VAE, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
)  # fmt: skip


@dataclass
class TinySDConfig:
    out: Path  # the folder to write (created; an existing model_index.json is overwritten)
    seed: int = 0
    motion: bool = True  # also write motion_adapter/ (a MotionAdapter matching the UNet)
    arch: str = "tiny"  # tiny | sd15 (SD-1.5's full sizes, random weights: ~4 GB, for benchmarks)


def byte_tokenizer(folder: Path):
    """A CLIPTokenizer over single bytes (SD's byte-to-unicode alphabet, with and without `</w>`)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return tok


def write_tiny_sd(out: str | Path, seed: int = 0, motion: bool = True, arch: str = "tiny") -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in ("tiny", "sd15"):
        raise ValueError(f"arch {arch!r}: tiny | sd15")
    unet, vae = (UNET, VAE) if arch == "tiny" else (SD15_UNET, SD15_VAE)
    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = byte_tokenizer(out / "tokenizer")
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=unet["cross_attention_dim"], intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**unet), vae=AutoencoderKL(**vae), text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer, scheduler=PNDMScheduler(**SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(out, safe_serialization=True)
    if motion:
        from tbd_lightning.sd_model import motion_adapter_for

        heads = 2 if arch == "tiny" else 8
        motion_adapter_for(dict(pipe.unet.config), heads=heads).save_pretrained(
            out / "motion_adapter", safe_serialization=True
        )
    log.info("wrote a tiny Stable-Diffusion-1.5-layout folder (random weights) to %s", out)
    return out


def write_from_config(config: TinySDConfig) -> str:
    return str(write_tiny_sd(config.out, config.seed, config.motion, config.arch))
