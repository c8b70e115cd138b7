"""Training callbacks: sample videos to MLflow, and the resolved LightningCLI config as an MLflow artifact."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def mlflow_logger(trainer: pl.Trainer) -> MLFlowLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


def log_artifact(trainer: pl.Trainer, path: Path, artifact_dir: str) -> None:
    """To the MLflow run when there is one, else under `default_root_dir/artifact_dir`."""
    logger = mlflow_logger(trainer)
    if logger is not None:
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_dir)
    else:
        out = Path(trainer.default_root_dir) / artifact_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / path.name).write_bytes(path.read_bytes())


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class MLflowSaveConfig(SaveConfigCallback):
    """Writes the resolved config to `default_root_dir/config.yaml` and logs it to MLflow as config.yaml
    (with `save_to_log_dir=False`: an MLflow logger has no local log_dir)."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        text = self.parser.dump(self.config, skip_none=False)
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.default_root_dir) / "config.yaml").write_text(text)
        logger = mlflow_logger(trainer)
        if logger is not None:
            logger.experiment.log_text(logger.run_id, text, "config.yaml")


class SampleVideos(pl.Callback):
    """Every `every_n_steps` (and at the end of training) samples the first validation batch and logs,
    per clip, an mp4 and a PNG strip of ground truth (top) over the sample (bottom) under `samples/`."""

    def __init__(self, every_n_steps: int = 200, steps: int = 10, guidance: float = 2.0, max_videos: int = 2):
        self.every_n_steps, self.steps, self.guidance, self.max_videos = (
            every_n_steps,
            steps,
            guidance,
            max_videos,
        )
        self._batch: dict | None = None
        self._last_step = -1

    def _first_val_batch(self, trainer: pl.Trainer) -> dict:
        if self._batch is None:
            loader = trainer.datamodule.val_dataloader()
            self._batch = next(iter(loader))
        return self._batch

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        batch = self._first_val_batch(trainer)
        batch = {k: (v[: self.max_videos].to(pl_module.device) if torch.is_tensor(v) else v[: self.max_videos]) for k, v in batch.items()}  # fmt: skip
        was_training = pl_module.training
        pl_module.eval()
        video = pl_module.preview(batch, steps=self.steps, guidance=self.guidance)
        pl_module.train(was_training)
        from PIL import Image

        from pipelines.video_io import write_mp4

        with tempfile.TemporaryDirectory() as tmp:
            for i, key in enumerate(batch["key"]):
                grid = np.concatenate(
                    [to_uint8(batch["video"][i]), to_uint8(video[i])], axis=1
                )  # (T, 2H, W, 3)
                mp4 = Path(tmp) / f"{key}.mp4"
                write_mp4(mp4, grid, fps=25)
                png = Path(tmp) / f"{key}.png"
                Image.fromarray(np.concatenate(list(grid), axis=1)).save(png)
                for f in (mp4, png):
                    log_artifact(trainer, f, f"samples/step-{step:07d}")
        log.info("logged %d sample videos at step %d", len(batch["key"]), step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module)


class ResumableMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` for runs that resume: MLflow refuses to change a logged param, so a value that differs
    from the run's (a lower lr after resuming) is recorded as tag `changed_on_resume.KEY` instead of failing."""

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        changed = {k: v for k, v in flat.items() if k in logged and logged[k] != str(v)[:250]}
        for key, value in changed.items():
            self.experiment.set_tag(self.run_id, f"changed_on_resume.{key}", str(value)[:250])
        super().log_hyperparams({k: v for k, v in flat.items() if k not in changed})
