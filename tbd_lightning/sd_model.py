"""The latent Draw denoiser on Stable-Diffusion-1.5 priors: diffusers' `UNetMotionModel` plus conditioning
as attention processors (`tbd_lightning.sd_processors`).

    SD-1.5 UNet2DConditionModel (weights by name)  --UNetMotionModel.from_unet2d-->  + MotionAdapter
    attn1 (spatial self-attention):  reference attention — the same UNet runs once in "write" mode over
                                     the reference latent (t = 0, no text); every attn1 keeps its input,
                                     and in "read" mode concatenates it into its keys and values
                                     (Animate Anyone / Hallo's ReferenceNet, weight-shared)
                                     through a zero-initialised gate per layer (out = own +
                                     gate * (joint - own)), so a new model is the pretrained UNet
    attn2 (cross-attention):         the global emotion sentence as SD's own text encoder's per-token
                                     states (`tbd_lightning.sd_text`; dropped = SD's empty prompt)
                                     through SD's own text keys/values; speech
                                     (per-frame window of audio features) and each local muscle token
                                     (inside its own face region) through keys/values of their own,
                                     values zero-initialised: the pretrained UNet's output is unchanged
                                     until they learn
    motion modules:                  AnimateDiff temporal attention (a motion-module folder, or new ones
                                     whose output projections start at zero)

The interface is `TBDVideoDenoiser`'s — `forward(sample (B, T, C, h, w), timestep, Conditions)` with the
same `keep` semantics and null tokens — so the training module, the progressive sampler and `TBDPipeline`
use it unchanged. While no gradient is taken the reference's features are computed once per video (cached
across denoising steps and guidance branches: `reference_passes` counts the write passes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from tbd_lightning.model import MAX_LOCAL, Conditions, ConditionTokens
from tbd_lightning.sd_processors import ConditionCrossAttnProcessor, ReferenceAttnProcessor
from tbd_lightning.sd_text import WINDOW
from tbd_lightning.text import check_global_text

log = logging.getLogger(__name__)


def motion_adapter_for(unet_config: dict, heads: int = 8, max_frames: int = 32) -> MotionAdapter:
    """New motion modules matching a UNet2DConditionModel config; outputs start at zero (image model)."""
    adapter = MotionAdapter(
        block_out_channels=tuple(unet_config["block_out_channels"]),
        motion_layers_per_block=unet_config["layers_per_block"], motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=heads, motion_norm_num_groups=unet_config["norm_num_groups"],
        motion_max_seq_length=max_frames, use_motion_mid_block=True,
    )  # fmt: skip
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return adapter


def sd_scheduler_betas(folder: str | Path) -> dict:
    """The noise schedule of a Stable-Diffusion folder's scheduler/ (SD-1.5: scaled_linear 0.00085-0.012)."""
    import json

    file = Path(folder) / "scheduler" / "scheduler_config.json"
    config = json.loads(file.read_text()) if file.is_file() else {}
    keys = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
    return {k: config[k] for k in keys if k in config} or dict(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )


def _period(rows: torch.Tensor) -> int:
    """The smallest p such that `rows` is its first p rows repeated (stacked guidance branches)."""
    n = rows.shape[0]
    for p in range(1, n):
        if n % p == 0 and torch.equal(rows[p:], rows[:-p]):
            return p
    return n


class SDVideoDenoiser(ModelMixin, ConfigMixin, ConditionTokens):
    """UNetMotionModel + reference attention + audio / global / local conditioning (module docstring)."""

    _supports_gradient_checkpointing = True
    ignore_for_config = ["unet"]

    @register_to_config
    def __init__(
        self,
        unet_config: dict | None = None,
        text_dim: int = 384,
        audio_dim: int = 80,
        audio_context: int = 2,
        max_local: int = MAX_LOCAL,
        max_frames: int = 32,
        global_tokens: int = 4,
        text_chunks: int = 1,
        reference_attention: bool = True,
        in_channels: int = 4,
        ref_channels: int = 4,
        unet: UNetMotionModel | None = None,
        global_text: str = "description",
    ):
        """`unet_config`: a UNetMotionModel config (as `SDVideoDenoiser.from_sd` records it); `unet`: an
        already built one with weights (not saved in the config). `text_chunks`: the global sentence comes
        as SD's text encoder's states, `text_chunks` windows of 77 tokens (`tbd_lightning.sd_text`); 0: as
        a sentence vector projected to `global_tokens` tokens (the pixel model's way). `global_text`: as
        `TBDVideoDenoiser`'s."""
        super().__init__()
        check_global_text(global_text)
        if unet is None and unet_config is None:
            raise ValueError("give unet_config (or build with SDVideoDenoiser.from_sd(folder))")
        self.unet = unet if unet is not None else UNetMotionModel.from_config(unet_config)
        if unet is not None:
            self.register_to_config(
                unet_config={k: v for k, v in unet.config.items() if not k.startswith("_")}
            )
        if self.unet.config.in_channels != in_channels:  # the latent channels the sampler draws
            channels = self.unet.config.in_channels
            self.register_to_config(in_channels=channels, ref_channels=channels)
        dim = int(self.unet.config.cross_attention_dim)
        tokens = WINDOW * text_chunks if text_chunks else global_tokens
        self._init_condition_tokens(
            text_dim, audio_dim, audio_context, tokens, dim, project_global=not text_chunks
        )
        self._install_processors()
        self._cache: tuple | None = None  # (the distinct reference rows, their features, the weights' key)
        self.cache_reference = True  # False: a write pass over every row in every forward (benchmarks)
        self.reference_passes = 0

    # -- building ----------------------------------------------------------------------------------------
    @classmethod
    def from_sd(cls, folder: str | Path, motion_adapter: str | Path | None = None, motion_heads: int = 8,
                **config) -> SDVideoDenoiser:  # fmt: skip
        """From a Stable-Diffusion folder in diffusers layout (its `unet/`; every weight lands by name) and
        optionally an AnimateDiff motion-module folder (`MotionAdapter`); local files only."""
        from tbd_core.errors import UserError

        folder = Path(folder)
        if not (folder / "unet" / "config.json").is_file():
            raise UserError(
                f"{folder} is not a Stable-Diffusion folder in diffusers layout (no unet/config.json)"
            )
        unet2d = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        max_frames = config.get("max_frames", 32)
        if motion_adapter:
            if not Path(motion_adapter).is_dir():
                raise UserError(
                    f"motion adapter {motion_adapter} is not a folder (a diffusers MotionAdapter)"
                )
            adapter = MotionAdapter.from_pretrained(motion_adapter, local_files_only=True)
        else:
            adapter = motion_adapter_for(dict(unet2d.config), motion_heads, max_frames)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        log.info(
            "UNet from %s%s", folder, f", motion modules from {motion_adapter}" if motion_adapter else ""
        )
        model = cls(unet=unet, **config)
        if model.config.text_chunks:  # a dropped global text is SD's unconditional: the empty prompt's states
            from tbd_lightning.sd_text import PromptEncoder

            empty = PromptEncoder.from_sd(folder, model.config.text_chunks).encode([""])[0]
            model.null["global"].data.copy_(empty)
        return model

    def _install_processors(self) -> None:
        procs = {}
        for name, proc in self.unet.attn_processors.items():
            if "motion_modules" in name:
                procs[name] = proc
            elif name.endswith("attn1.processor"):
                procs[name] = ReferenceAttnProcessor(name, enabled=self.config.reference_attention)
            else:
                attn = self.unet.get_submodule(name.rsplit(".", 1)[0])
                procs[name] = ConditionCrossAttnProcessor(attn.to_q.out_features, attn.to_k.in_features)
        self.unet.set_attn_processor(procs)

    # -- conditions --------------------------------------------------------------------------------------
    def _tokens(self, cond: Conditions, frames: int) -> tuple[torch.Tensor, dict]:
        """Per frame (as UNetMotionModel takes them): global tokens (BT, G, D) and the processors' `tbd`."""
        audio, g, local, bias, masks = self.condition_tokens(cond, frames, self.dtype)
        return g, {"audio": audio, "local": local, "local_bias": bias, "masks": masks}

    def _null_text(self, b: int) -> torch.Tensor:
        return self.null["global"].to(self.dtype).expand(b, -1, -1)

    @torch.no_grad()
    def _weights_fingerprint(self) -> torch.Tensor:
        """Each UNet parameter's L2 norm (one fused kernel): the reference cache's key on the weights.
        Swapping weights under `no_grad` (Lightning's EMA swap uses `param.data.copy_`, which leaves the
        tensor's version counter alone; `load_state_dict`) changes it, so stale features are never reused."""
        return torch.stack(torch._foreach_norm([p.detach() for p in self.unet.parameters()])).float()

    def _write_reference(self, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the UNet over the reference latents (t = 0, no text): every attn1 keeps its input.

        Without gradients, once per video: the guidance branches stack copies of the same rows (only the
        distinct leading rows are run, the features repeated), and while the same reference comes back
        (by value: branch sets before and after the switch point stack it anew) the features are reused."""
        grad = torch.is_grad_enabled()
        unique = reference if grad or not self.cache_reference else reference[: _period(reference)]
        cache, weights = self._cache, None if grad else self._weights_fingerprint()
        hit = (not grad and cache is not None and cache[0].shape == unique.shape
               and torch.equal(cache[0], unique) and torch.equal(cache[2], weights))  # fmt: skip
        if not (hit and self.cache_reference):
            b, bank = unique.shape[0], {}
            zero = torch.zeros(b, dtype=torch.long, device=unique.device)
            self.unet(unique.to(self.dtype)[:, :, None], zero, encoder_hidden_states=self._null_text(b),
                      cross_attention_kwargs={"tbd": {"mode": "write", "bank": bank}})  # fmt: skip
            self.reference_passes += 1
            self._cache = None if grad else (unique.detach().clone(), bank, weights)
        else:
            bank = cache[1]
        repeats = reference.shape[0] // unique.shape[0]
        return bank if repeats == 1 else {k: v.repeat(repeats, 1, 1) for k, v in bank.items()}

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: Conditions) -> torch.Tensor:
        b, t = sample.shape[:2]
        if t > self.config.max_frames:
            raise ValueError(f"{t} frames exceed the model's max_frames={self.config.max_frames}")
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        g, extra = self._tokens(cond, t)
        if self.config.reference_attention:
            bank = self._write_reference(cond.reference)
            extra.update(mode="read", bank=bank, frames=t, keep=cond.kept("reference"))
        out = self.unet(sample.to(self.dtype).permute(0, 2, 1, 3, 4), timestep, encoder_hidden_states=g,
                        cross_attention_kwargs={"tbd": extra}).sample  # fmt: skip
        return out.permute(0, 2, 1, 3, 4)

    # -- training stages ---------------------------------------------------------------------------------
    def trainable(self, part: str) -> None:
        """`all`; `spatial` (image stage: everything but the motion modules); `motion` (video stage:
        the motion modules only, as AnimateDiff trains them)."""
        if part not in ("all", "spatial", "motion"):
            raise ValueError(f"trainable part {part!r}: all | spatial | motion")
        for name, p in self.named_parameters():
            motion = "motion_modules" in name
            p.requires_grad_(part == "all" or (part == "motion") == motion)
