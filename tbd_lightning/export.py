"""`tbd export CKPT OUT_DIR`: a `tbd train` checkpoint -> a diffusers pipeline folder (`TBDPipeline`).

    OUT_DIR/model_index.json  components, text encoder reference, media settings, conditioning shapes,
                              annotation version, source (checkpoint, sha256, step, EMA, MLflow run)
    OUT_DIR/denoiser/         config.json + diffusion_pytorch_model.safetensors
    OUT_DIR/scheduler/        scheduler_config.json (the training DDPMScheduler)
    OUT_DIR/vae/              latent models only: the frozen VAE they were trained with

`TBDPipeline.from_pretrained(OUT_DIR)` reads it back. The checkpoint's `state_dict` is exported, which holds
the EMA weights when training used EMA (Lightning's weight averaging stores the averaged weights there).
`pipeline_from_module` is shared with the `LogPipeline` training callback (the same pipeline, in MLflow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tbd_core.files import sha256_of
from tbd_lightning.checkpoint_file import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    ckpt: Path  # a checkpoint of `tbd train` (e.g. out/train/tiny/checkpoints/last.ckpt)
    out: Path  # the pipeline folder to write


def pipeline_from_module(module, data_hparams: dict, source: dict):
    """The pipeline of a `TBDModule` (its denoiser, training scheduler and VAE, as they are) and the
    hyper-parameters of the data module it was trained with (frames, size, media, text encoder, version)."""
    from tbd_lightning.pipeline import TBDPipeline

    conditioning = {
        "frames": data_hparams.get("frames"), "size": data_hparams.get("size"),
        "prediction_type": module.hparams["prediction_type"], "branches": dict(module.branches),
        "region_masks": data_hparams.get("region_masks", True),  # False: sample with guidance mode no-masks
        "motion_frames": module.hparams.get("motion_frames", 0),  # trained: known first frames given clean
    }  # fmt: skip
    prompts = {}
    if getattr(module.model.config, "text_chunks", 0):  # SD: the global text through its own text encoder
        from tbd_lightning.sd_text import load_clip_text

        tokenizer, encoder = load_clip_text(module.hparams["pretrained"])
        prompts = dict(prompt_encoder=encoder, prompt_tokenizer=tokenizer)
    return TBDPipeline(
        denoiser=module.model, scheduler=module.scheduler, vae=module.vae, **prompts,
        text_encoder=data_hparams.get("text_encoder"),  # None: the offline sentence-transformers package
        media=data_hparams.get("media"),  # fps, crop margin, audio features of the training shards
        conditioning=conditioning, annotation_version=data_hparams.get("version"), source=source,
    )  # fmt: skip


def export(ckpt: str | Path, out: str | Path):
    """Write the pipeline of a `tbd train` checkpoint to `out`; returns the `TBDPipeline`."""
    from tbd_lightning.module import TBDModule

    ckpt, out = Path(ckpt), Path(out)
    state = load_checkpoint(ckpt)  # weights_only: a pickle that would run code is refused
    hp = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}  # drop _instantiator
    module = TBDModule(**{**hp, "init_weights": None, "gradient_checkpointing": False})
    module.load_state_dict(state["state_dict"])
    source = {
        "checkpoint": str(ckpt.resolve()), "sha256": sha256_of(ckpt), "global_step": state.get("global_step"),
        "ema": "current_model_state" in state, "mlflow_run_id": state.get("mlflow_run_id"),
        "mlflow_tracking_uri": state.get("mlflow_tracking_uri"),
    }  # fmt: skip
    pipe = pipeline_from_module(module, dict(state.get("datamodule_hyper_parameters", {})), source)
    pipe.save_pretrained(out)
    log.info("exported %s (step %s) to %s", ckpt, source["global_step"], out)
    return pipe


def export_untrained(folder: str | Path, frames: int, size: int, crop_size: int = 64, seed: int = 0) -> Path:
    """An exported `tiny` model with untrained weights, through the real checkpoint and `export`
    (`folder/model`): a stand-in of the trained model's architecture for tests and benchmarks that measure
    plumbing, memory or time, not quality."""
    import torch

    from tbd_lightning.module import TBDModule

    torch.manual_seed(seed)
    folder = Path(folder)
    module = TBDModule()
    media = {"fps": 25, "crop_margin": 1.8, "crop_size": crop_size, "n_mels": 80, "audio_encoder": None,
             "silence_dbfs": -50.0}  # fmt: skip
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 0,
         "datamodule_hyper_parameters": {"frames": frames, "size": size, "media": media, "text_encoder": None}},
        folder / "untrained.ckpt",
    )  # fmt: skip
    export(folder / "untrained.ckpt", folder / "model")
    return folder / "model"


def describe(pipe, out: str | Path) -> dict:
    """What an exported folder holds, as printed by `tbd export`."""
    keys = ("annotation_version", "text_encoder", "media", "conditioning", "source")
    return {"out": str(out), "vae": pipe.vae is not None, **{k: pipe.config[k] for k in keys}}


def export_from_config(config: ExportConfig) -> dict:
    return describe(export(config.ckpt, config.out), config.out)
