"""Training of the Draw denoiser: diffusion loss, condition dropout along the guidance chain, mouth weighting.

Pixel space by default (`tiny`); with `vae_path` (a local diffusers `AutoencoderKL` folder) frames and
the reference are encoded to latents by the frozen VAE, which is kept out of the checkpoint.
`init_weights` (a folder saved by `save_pretrained`, or a .safetensors file) initialises every
parameter whose name and shape match and logs how many did.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from tbd_core.errors import UserError
from tbd_lightning import branches as chain
from tbd_lightning.model import Conditions, TBDVideoDenoiser, latent_scale

log = logging.getLogger(__name__)
OPTIMIZERS = ("adamw", "adamw-fused", "adamw-8bit")


def load_vae(path: str | None):
    if not path:
        return None
    from diffusers import AutoencoderKL

    if not Path(path).is_dir():
        raise UserError(f"vae_path {path} does not exist: give a local diffusers AutoencoderKL folder")
    vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    return vae.requires_grad_(False).eval()


def init_from(model: torch.nn.Module, path: str) -> tuple[int, int]:
    """Copy every tensor of `path` whose name and shape match; returns (copied, total parameters)."""
    from safetensors.torch import load_file

    p = Path(path)
    files = [p] if p.is_file() else sorted(p.rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights at {path}")
    source = {k: v for f in files for k, v in load_file(str(f)).items()}
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    log.info("init_weights %s: %d of %d tensors matched", path, len(matched), len(own))
    return len(matched), len(own)


def mouth_map(batch: dict, x0: torch.Tensor) -> torch.Tensor:
    """The batch's mouth mask (B, T, 1, H', W') at the size of `x0` (B, T, C, H, W): the share of each
    pixel inside the mouth, in [0, 1] (area pooling, so a latent cell is partly mouth)."""
    mouth = F.adaptive_avg_pool2d(batch["mouth"].flatten(0, 1).float(), x0.shape[-2:])
    return mouth.reshape(*x0.shape[:2], 1, *x0.shape[-2:])


def region_map(batch: dict, x0: torch.Tensor) -> torch.Tensor:
    """The union of the CoT's AU regions (the batch's `mask`, (B, 1, h, w), the reference's) as (B, T, 1, H',
    W') at the size of `x0`, each pixel's share inside a region in [0, 1], the same for every frame."""
    union = F.adaptive_avg_pool2d(batch["mask"].float(), x0.shape[-2:])
    return union[:, None].expand(-1, x0.shape[1], -1, -1, -1)


def loss_weight(batch: dict, x0: torch.Tensor, mouth_weight: float, region_weight: float) -> torch.Tensor:
    """(B, T, 1, H', W') per-pixel loss weight: 1, plus `mouth_weight` - 1 inside the mouth and
    `region_weight` - 1 inside the CoT's AU regions (added where both are), pro rata a cell's share."""
    extra = torch.zeros(1, device=x0.device)
    if mouth_weight != 1 and "mouth" in batch:
        extra = extra + (mouth_weight - 1) * mouth_map(batch, x0)
    if region_weight != 1 and "mask" in batch:
        extra = extra + (region_weight - 1) * region_map(batch, x0)
    return 1 + extra


class TBDModule(pl.LightningModule):
    def __init__(
        self,
        model: str = "tiny",
        model_overrides: dict | None = None,
        prediction_type: str = "v_prediction",
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        rescale_zero_snr: bool = True,
        branches: dict[str, float] | None = None,
        reference_drop: float = 0.0,
        mouth_weight: float = 10.0,
        region_weight: float = 1.0,
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        gradient_checkpointing: bool = False,
        vae_path: str | None = None,
        init_weights: str | None = None,
        pretrained: str | None = None,
        motion_adapter: str | None = None,
        trainable: str = "all",
        optimizer: str = "adamw",
        motion_frames: int = 0,
        motion_prob: float = 0.5,
    ):
        """`model` names a preset of `TBDVideoDenoiser` (tiny | base | full) or `sd`: the latent
        `SDVideoDenoiser` built from `pretrained` (a local Stable-Diffusion-1.5 folder in diffusers layout:
        its unet/ by name, its vae/ unless `vae_path` says otherwise, its scheduler's betas) and optionally
        an AnimateDiff `motion_adapter` folder; `trainable` (sd): all | spatial (image stage) | motion
        (video stage); `optimizer`: adamw | adamw-fused (CUDA) | adamw-8bit (bitsandbytes);
        `model_overrides` the denoiser's fields;
        `motion_frames`, `motion_prob`: that share of training windows gets its first `motion_frames` frames
        clean (no noise, no loss there), as sampling gives a long video's windows the last frames of the
        window before (`ProgressiveSampler.sample(known=)`); 0 (the default) trains independent windows only:
        on the demo's conditioning check 2 clean frames cut the speech effect from 0.374 to 0.140;
        `branches` how often each guidance branch is trained (`tbd_lightning.branches`: none, a, ag, label; the
        rest trains the full branch); `reference_drop` drops the reference on top, for an identity scale of
        its own (0: the reference is in every branch); `mouth_weight`, `region_weight`: the loss's weight inside
        the mouth (speech moves it) and inside the union of the CoT's AU regions (where a local sentence acts:
        a brow is a few pixels of a 48 px face), 1 elsewhere; the two add where they overlap."""
        super().__init__()
        self.save_hyperparameters()
        if rescale_zero_snr and prediction_type == "epsilon":
            raise UserError(
                "prediction_type epsilon with rescale_zero_snr: at t = T the input is pure noise, so predicting "
                "the noise is trivial there and x0 = (x - sqrt(1 - a) eps) / sqrt(a) divides by sqrt(a) = 0 "
                "(Lin et al. 2024, sec. 3.2): use v_prediction (the default), or rescale_zero_snr false"
            )
        self.branches = chain.check_probabilities(
            chain.DEFAULT_TRAIN_BRANCHES if branches is None else branches
        )
        betas = dict(beta_schedule=beta_schedule)
        overrides = {"global_text": "emotion", **(model_overrides or {})}  # the global / local split
        if model == "sd":
            from tbd_lightning.sd_model import SDVideoDenoiser, sd_scheduler_betas

            if not pretrained:
                raise UserError(
                    "model: sd needs model.pretrained: a local Stable-Diffusion folder (diffusers layout)"
                )
            self.model = SDVideoDenoiser.from_sd(pretrained, motion_adapter, **overrides)
            self.model.trainable(trainable)
            betas = sd_scheduler_betas(pretrained)
            vae_path = vae_path or str(Path(pretrained) / "vae")
        elif pretrained or motion_adapter or trainable != "all":
            raise UserError("pretrained, motion_adapter and trainable apply to model: sd")
        else:
            self.model = TBDVideoDenoiser.from_preset(model, **overrides)
        if optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
        if init_weights:
            init_from(self.model, init_weights)
        if gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.scheduler = DDPMScheduler(
            **{"num_train_timesteps": num_train_timesteps, **betas},
            prediction_type=prediction_type, rescale_betas_zero_snr=rescale_zero_snr,
            clip_sample=vae_path is None,
        )  # fmt: skip
        self._vae = [load_vae(vae_path)]  # a list: not a registered submodule, so not in checkpoints

    # -- encoding --------------------------------------------------------------------------------------
    @property
    def vae(self):
        return self._vae[0]

    @property
    def latent_scale(self) -> int:
        """Pixels per latent cell along a side: 1 in pixel space, 8 through SD's VAE."""
        return latent_scale(self.vae)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) pixels in [-1, 1] -> what the denoiser works on (pixels, or scaled latents)."""
        if self.vae is None:
            return frames
        self.vae.to(frames.device)
        lead = frames.shape[:-3]
        latents = self.vae.encode(frames.flatten(0, len(lead) - 1).to(self.vae.dtype)).latent_dist.mode()
        return (latents * self.vae.config.scaling_factor).reshape(*lead, *latents.shape[1:])

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x.clamp(-1, 1)
        lead = x.shape[:-3]
        pixels = self.vae.decode(x.flatten(0, len(lead) - 1) / self.vae.config.scaling_factor).sample
        return pixels.reshape(*lead, *pixels.shape[1:]).clamp(-1, 1)

    def conditions(
        self, batch: dict, keep: dict[str, torch.Tensor] | None = None, label: torch.Tensor | None = None
    ) -> Conditions:
        """The batch's conditions; `label` (B,) bool: those samples get the label caption as global text."""
        text = "local_text" if batch["global_text"].dim() == 3 else "global_text"  # 3-dim: SD token states
        for name, dim in ((text, "text_dim"), ("audio", "audio_dim")):
            if batch[name].shape[-1] != self.model.config[dim]:
                raise ValueError(
                    f"{name} features are {batch[name].shape[-1]}-d but the model expects {dim}="
                    f"{self.model.config[dim]}: set model.model_overrides.{dim} to match the data"
                )
        global_text = batch["global_text"]
        if label is not None and label.any():
            pick = label.to(global_text.device).view(-1, *[1] * (global_text.dim() - 1))
            global_text = torch.where(pick, batch["label_text"], global_text)
        frames = batch["audio"].shape[1]
        masks, union = batch.get("local_masks"), batch.get("mask")

        def over_frames(m):  # the loader's static (B, C, H, W) masks as (B, T, C, H, W) views
            if m is None or m.dim() == 5:  # absent, or per frame already
                return None if m is None else m.float()
            return m.float()[:, None].expand(-1, frames, -1, -1, -1)

        return Conditions(
            reference=self.encode(batch["reference"]), audio=batch["audio"], global_text=global_text,
            local_text=batch["local_text"], local_valid=batch["local_valid"], region_mask=over_frames(union),
            keep=keep, local_masks=over_frames(masks),
        )  # fmt: skip

    def draw_branches(self, b: int, generator: torch.Generator | None, device) -> tuple[dict, torch.Tensor]:
        """One guidance branch per sample (the chain, reference kept), plus reference dropout if configured."""
        names = chain.draw(self.branches, b, generator, device)
        keep = {c: k.to(device) for c, k in chain.keep_masks(names).items()}
        if self.hparams.reference_drop > 0:
            keep["reference"] = (
                torch.rand(b, generator=generator, device=device).to(device) >= self.hparams.reference_drop
            )
        return keep, torch.tensor([n == "label" for n in names], device=device)

    # -- loss ------------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None, dropout: bool = True):
        x0 = self.encode(batch["video"])
        b = x0.shape[0]
        device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=device).to(x0)

        t = (
            (torch.rand(b, generator=generator, device=device) * self.scheduler.config.num_train_timesteps)
            .long()
            .clamp_max(self.scheduler.config.num_train_timesteps - 1)
            .to(x0.device)
        )
        keep, label = self.draw_branches(b, generator, device) if dropout else (None, None)
        if keep is not None:
            keep, label = {c: k.to(x0.device) for c, k in keep.items()}, label.to(x0.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        weight = torch.ones(*x0.shape[:2], 1, 1, 1, device=x0.device)  # (B, T, 1, 1, 1)
        k = self.hparams.get("motion_frames", 0)
        if dropout and k and x0.shape[1] > k:  # motion frames: the first k frames given clean, not scored
            given = (torch.rand(b, generator=generator, device=device) < self.hparams.motion_prob).to(
                x0.device
            )
            clean = given[:, None] & (torch.arange(x0.shape[1], device=x0.device) < k)  # (B, T)
            noisy = torch.where(clean[..., None, None, None], x0, noisy)
            weight = weight * (~clean).float()[..., None, None, None]
        target = {"epsilon": noise, "sample": x0}.get(self.hparams.prediction_type)
        if target is None:
            target = self.scheduler.get_velocity(x0, noise, t)
        pred = self.model(noisy, t, self.conditions(batch, keep, label))
        err = (pred.float() - target.float()).square()
        weight = weight * loss_weight(
            batch, x0, self.hparams.mouth_weight, self.hparams.get("region_weight", 1.0)
        )
        return (err * weight).sum() / weight.expand_as(err).sum()

    def training_step(self, batch, batch_idx):
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["key"]))
        return loss

    def validation_step(self, batch, batch_idx):
        # Fixed noise and timesteps per batch, all conditions on: comparable across evaluations.
        gen = torch.Generator(device=batch["video"].device).manual_seed(1000 + batch_idx)
        loss = self.diffusion_loss(batch, generator=gen, dropout=False)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["key"]), sync_dist=True)

    def on_train_epoch_start(self) -> None:
        """New windows, clip order and references every epoch (the train loader is built once)."""
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        from diffusers.optimization import get_constant_schedule_with_warmup

        params = [p for p in self.model.parameters() if p.requires_grad]
        kwargs = dict(lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.optimizer == "adamw-8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise UserError("optimizer adamw-8bit needs bitsandbytes (pip install bitsandbytes)") from err
            opt = bnb.optim.AdamW8bit(params, **kwargs)
        else:
            opt = torch.optim.AdamW(params, fused=self.hparams.optimizer == "adamw-fused", **kwargs)
        sched = get_constant_schedule_with_warmup(opt, self.hparams.warmup_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self) -> None:
        version = getattr(self.trainer.datamodule, "version", None)
        if version and self.logger is not None:
            self.logger.log_hyperparams({"annotation_version": version})  # resolved (the config may say null)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        run_id = getattr(self.logger, "run_id", None)
        if run_id:
            checkpoint["mlflow_run_id"] = run_id  # `tbd train --ckpt_path` continues this MLflow run
            checkpoint["mlflow_tracking_uri"] = getattr(self.logger, "_tracking_uri", None)

    # -- preview sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def preview(self, batch: dict, steps: int = 10, guidance: float = 2.0, seed: int = 0) -> torch.Tensor:
        """A quick DDIM sample with plain classifier-free guidance over all conditions (training previews;
        `tbd generate` uses progressive guidance). Returns pixels (B, T, 3, H, W)."""
        from tbd_lightning.sampler import GuidanceConfig, ProgressiveSampler

        config = GuidanceConfig(steps=steps, scheduler="ddim", audio_scale=guidance, mode="cfg")
        sampler = ProgressiveSampler(self.model, self.scheduler.config, config)
        shape = self.encode(batch["video"]).shape
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return self.decode(sampler.sample(shape, self.conditions(batch), generator=gen))
