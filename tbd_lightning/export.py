"""`tbd export CKPT OUT_DIR`: a training checkpoint -> a diffusers-style model folder.

    OUT_DIR/denoiser/    config.json + diffusion_pytorch_model.safetensors  (TBDVideoDenoiser.from_pretrained)
    OUT_DIR/scheduler/   scheduler_config.json                              (DDPMScheduler/DDIMScheduler.from_pretrained)
    OUT_DIR/tbd_model.json  text encoder and VAE references, conditioning shapes, source checkpoint

The checkpoint's `state_dict` is exported, which holds the EMA weights when training used EMA
(Lightning's weight averaging stores the averaged weights there). `load_exported` reads it all back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.assets import sha256_of
from tbd.errors import UserError

log = logging.getLogger(__name__)
FORMAT = 1


def export(ckpt: str | Path, out: str | Path) -> dict:
    from tbd_lightning.module import TBDModule

    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_file():
        raise UserError(f"checkpoint {ckpt} does not exist")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if "state_dict" not in state or "hyper_parameters" not in state:
        raise UserError(f"{ckpt} is not a `tbd train` checkpoint (no state_dict / hyper_parameters)")
    hp = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}  # drop _instantiator
    module = TBDModule(**{**hp, "init_weights": None, "gradient_checkpointing": False})
    module.load_state_dict(state["state_dict"])
    module.model.save_pretrained(out / "denoiser", safe_serialization=True)
    module.scheduler.save_pretrained(out / "scheduler")
    data_hp = dict(state.get("datamodule_hyper_parameters", {}))
    info = {
        "format": FORMAT,
        "denoiser": "denoiser",
        "scheduler": "scheduler",
        "text_encoder": data_hp.get("text_encoder"),  # None: the offline sentence-transformers package
        "vae": hp.get("vae_path"),
        "media": data_hp.get("media"),  # fps, crop margin, audio features of the training shards
        "conditioning": {
            "frames": data_hp.get("frames"), "size": data_hp.get("size"),
            "prediction_type": hp["prediction_type"], "drop": module.drop,
        },
        "source": {
            "checkpoint": str(ckpt.resolve()), "sha256": sha256_of(ckpt), "global_step": state.get("global_step"),
            "ema": "current_model_state" in state, "annotation_version": data_hp.get("version"),
            "mlflow_run_id": state.get("mlflow_run_id"), "mlflow_tracking_uri": state.get("mlflow_tracking_uri"),
        },
    }  # fmt: skip
    (out / "tbd_model.json").write_text(json.dumps(info, indent=2))
    log.info("exported %s (step %s) to %s", ckpt, info["source"]["global_step"], out)
    return info


@dataclass
class Exported:
    denoiser: torch.nn.Module
    scheduler: object
    info: dict


def load_exported(folder: str | Path, device: str | None = None) -> Exported:
    from diffusers import DDPMScheduler

    from tbd_lightning.model import TBDVideoDenoiser

    folder = Path(folder)
    meta = folder / "tbd_model.json"
    if not meta.is_file():
        raise UserError(f"{folder} is not an exported model folder (no tbd_model.json)")
    info = json.loads(meta.read_text())
    denoiser = TBDVideoDenoiser.from_pretrained(folder / info["denoiser"]).eval()
    if device:
        denoiser.to(device)
    return Exported(denoiser, DDPMScheduler.from_pretrained(folder / info["scheduler"]), info)


def add_arguments(parser) -> None:
    parser.add_argument(
        "ckpt", help="a checkpoint of `tbd train` (e.g. out/train/tiny/checkpoints/last.ckpt)"
    )
    parser.add_argument("out", help="output folder")


def run(args) -> int:
    info = export(args.ckpt, args.out)
    print(json.dumps(info, indent=2))
    return 0
