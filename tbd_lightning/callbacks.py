"""Training callbacks: EMA weights with warm-up, sample videos to MLflow, the resolved LightningCLI config as an MLflow artifact, and the
trained model as a `TBDPipeline` folder in the run (optionally registered as a model version)."""

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
from torch.optim.swa_utils import AveragedModel

from tbd_core.errors import UserError

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


class EMADecay:
    """The decay of step n (0-based count of averaged updates), as diffusers' `EMAModel.get_decay`:
    `min(decay, 1 - (1 + n / inv_gamma) ** -power)` with warm-up, else `min(decay, (1 + n) / (10 + n))`, never
    below `min_decay`. Without warm-up a decay of 0.9999 keeps ~37 % of the initial weights after 10k steps;
    with it (power 2/3) the average covers the last ~3 % of training at any step. A picklable callable
    (`AveragedModel`'s `avg_fn(averaged, current, num_averaged)`): DDP spawn and checkpoints carry it."""

    def __init__(self, decay: float, use_warmup: bool = True, inv_gamma: float = 1.0, power: float = 2 / 3,
                 min_decay: float = 0.0):  # fmt: skip
        if not 0 <= min_decay <= decay < 1:
            raise ValueError(f"EMA decay must satisfy 0 <= min_decay <= decay < 1 (got {min_decay}, {decay})")
        self.decay, self.use_warmup, self.inv_gamma, self.power, self.min_decay = (
            decay,
            use_warmup,
            inv_gamma,
            power,
            min_decay,
        )

    def at(self, n: int) -> float:
        if self.use_warmup:
            value = 1 - (1 + n / self.inv_gamma) ** -self.power
        else:
            value = (1 + n) / (10 + n)
        return max(self.min_decay, min(self.decay, value))

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        d = self.at(int(num_averaged))
        return averaged * d + current * (1 - d)


class ForeachEMA(AveragedModel):
    """torch's `AveragedModel` with an exponential moving average (decay `EMADecay`) updated as one foreach
    lerp over the trainable tensors (issue 39): no Python loop of kernels per tensor, no host sync (the count
    of updates is kept on the host beside `n_averaged`; `AveragedModel` with `avg_fn` read it once per
    tensor per step). Weights that do not train (`requires_grad` False when the copy is made: a frozen UNet
    under `trainable: motion`) are not averaged: on the model's device they are the model's own tensors
    (shared: no memory, no time), elsewhere copied at the first update. Buffers: floating ones averaged with
    `use_buffers`, the rest copied (an integer counter is not averaged). Numerically
    `AveragedModel(model, avg_fn=EMADecay(...))` (a test holds them equal)."""

    def __init__(self, model: torch.nn.Module, decay: EMADecay, device=None, use_buffers: bool = False):
        super().__init__(model, device=device, use_buffers=use_buffers)
        self.decay = decay
        self._count: int | None = 0  # host copy of n_averaged; None: read it once (after a restore)
        self._cache: tuple | None = None
        own = dict(self.module.named_parameters())
        for name, param in model.named_parameters():
            if not param.requires_grad and own[name].device == param.device:
                own[name].data = param.data  # shared with the model (the deep copy is freed)

    def _tensors(self, model: torch.nn.Module) -> tuple[list, list, list, list]:
        """(averaged, current) tensor lists to average and (averaged, current) to copy, made once per model."""
        key = (id(model), next(model.parameters()).data_ptr())
        if self._cache is None or self._cache[0] != key:
            own_p, own_b = dict(self.module.named_parameters()), dict(self.module.named_buffers())
            avg, cur, copy_avg, copy_cur = [], [], [], []
            for name, param in model.named_parameters():
                if param.requires_grad:
                    avg.append(own_p[name].detach())
                    cur.append(param.detach())
                elif own_p[name].data_ptr() != param.data_ptr():  # another device: kept equal by copying
                    copy_avg.append(own_p[name].detach())
                    copy_cur.append(param.detach())
            for name, buf in model.named_buffers():
                averaged = self.use_buffers and buf.is_floating_point()
                (avg if averaged else copy_avg).append(own_b[name])
                (cur if averaged else copy_cur).append(buf)
            self._cache = (key, avg, cur, copy_avg, copy_cur)
        return self._cache[1:]

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._count is None:
            self._count = int(self.n_averaged)  # one host sync after a checkpoint restored the count
        avg, cur, copy_avg, copy_cur = self._tensors(model)
        if avg and avg[0].device != cur[0].device:
            cur = [c.to(avg[0].device, non_blocking=True) for c in cur]
        if self._count == 0:
            torch._foreach_copy_(avg, cur)  # the first update copies, as AveragedModel does
        elif avg:
            torch._foreach_lerp_(avg, cur, 1.0 - self.decay.at(self._count))  # avg * d + cur * (1 - d)
        if copy_avg:
            torch._foreach_copy_(copy_avg, [c.to(a.device) for a, c in zip(copy_avg, copy_cur, strict=True)])
        self.n_averaged += 1
        self._count += 1

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None  # n_averaged restored: read it at the next update


class WarmupEMA(pl.callbacks.WeightAveraging):
    """`EMAWeightAveraging` whose decay warms up (`EMADecay`): an export after a short run is the trained
    weights averaged over its last steps, not the initialisation. Updated after every optimizer step from
    `update_starting_at_step` (default 0) with `ForeachEMA` (trainable weights only, foreach ops, no host
    syncs); the averaged weights replace the model's for validation, checkpoints' `state_dict` and the end of
    training (Lightning's `WeightAveraging`)."""

    def __init__(self, decay: float = 0.9999, use_warmup: bool = True, inv_gamma: float = 1.0,
                 power: float = 2 / 3, min_decay: float = 0.0, update_starting_at_step: int = 0,
                 device: str | None = None, use_buffers: bool = True):  # fmt: skip
        self.ema_decay = EMADecay(decay, use_warmup, inv_gamma, power, min_decay)
        super().__init__(device=device, use_buffers=use_buffers)
        self.update_starting_at_step = update_starting_at_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # as WeightAveraging.setup, with ForeachEMA (TBDModule has no configure_model)
            device = self._device or pl_module.device
            self._average_model = ForeachEMA(pl_module, self.ema_decay, device, self._use_buffers)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.update_starting_at_step


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

        from media.video_io import write_mp4
        from tbd_lightning.pipeline import to_uint8

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


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, and `last.ckpt` at the end of training whenever the last save was at an
    earlier step. (Lightning 2.6 writes the final `last.ckpt` only if none was written before, so with
    `every_n_train_steps: 100` and `max_steps: 260` the last 60 steps never reached a checkpoint or an export.)"""

    fresh_run: bool = False  # set by `tbd train` when no --ckpt_path is given: refuse a used folder

    def setup(self, trainer, pl_module, stage: str) -> None:
        """A fresh run into a folder that already holds checkpoints would write `last-v1.ckpt` beside the old
        `last.ckpt`, and `tbd export .../last.ckpt` would then export the old model: refused, clearly."""
        super().setup(trainer, pl_module, stage)
        old = sorted(Path(self.dirpath).glob("*.ckpt")) if self.fresh_run and self.dirpath else []
        if old:
            raise UserError(
                f"{self.dirpath} already holds checkpoints of an earlier run ({', '.join(p.name for p in old[:3])}"
                f"{', ...' if len(old) > 3 else ''}): resume it with --ckpt_path last, or train into another "
                "--trainer.default_root_dir (or delete that folder)"
            )

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and trainer.global_step and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            log.info("saved last.ckpt at the final step %d", trainer.global_step)
            return
        super().on_train_end(trainer, pl_module)


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


class LogPipeline(pl.Callback):
    """At the end of training, the model as a `TBDPipeline` (what `tbd export` writes) in the MLflow run under
    `pipeline/` (no MLflow logger: `default_root_dir/pipeline`), so a model can be picked in the MLflow UI and
    loaded with `TBDPipeline.from_pretrained`. With `registered_model_name`, also registered as a new version
    of that model in the run's model registry.

    Runs in `on_fit_end`, after every callback's `on_train_end`: with `EMAWeightAveraging` the module then
    holds the averaged weights whatever the order of the callbacks (that callback copies them in at
    `on_train_end`), which are the weights `tbd export` takes from a checkpoint."""

    def __init__(self, registered_model_name: str | None = None, artifact_path: str = "pipeline"):
        self.registered_model_name, self.artifact_path = registered_model_name, artifact_path

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.callbacks import WeightAveraging

        from tbd_lightning.export import pipeline_from_module

        logger = mlflow_logger(trainer)
        run_id = logger.run_id if logger is not None else None
        source = {
            "checkpoint": None, "sha256": None, "global_step": trainer.global_step,
            "ema": any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks), "mlflow_run_id": run_id,
            "mlflow_tracking_uri": getattr(logger, "_tracking_uri", None),
        }  # fmt: skip
        datamodule = getattr(trainer, "datamodule", None)
        data_hparams = dict(datamodule.hparams) if datamodule is not None else {}
        pipe = pipeline_from_module(pl_module, data_hparams, source)
        if logger is None:
            pipe.save_pretrained(Path(trainer.default_root_dir) / self.artifact_path)
            log.info("saved the pipeline to %s", Path(trainer.default_root_dir) / self.artifact_path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            pipe.save_pretrained(tmp)
            logger.experiment.log_artifacts(run_id, tmp, self.artifact_path)
        log.info("logged the pipeline to MLflow run %s under %s/", run_id, self.artifact_path)
        if self.registered_model_name:
            self._register(logger.experiment, run_id)

    def _register(self, client, run_id: str) -> None:
        """A new version of `registered_model_name` whose source is the run's `pipeline/` folder."""
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(self.registered_model_name)
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{self.artifact_path}"
        version = client.create_model_version(self.registered_model_name, source, run_id=run_id)
        log.info("registered %s version %s (%s)", self.registered_model_name, version.version, source)
