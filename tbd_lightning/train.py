"""`tbd train`: LightningCLI over `TBDModule` + `TBDDataModule`, tracked in MLflow; optionally on Ray Train.

    tbd train --config configs/train/tiny.yaml [--trainer.max_steps 500 ...] [--ckpt_path last]
    tbd train --config configs/train/base.yaml --ray-workers 8 --ray-gpu     # Ray Train TorchTrainer

Filled in when the config leaves them empty:
- the MLflow tracking URI: `$MLFLOW_TRACKING_URI`, else the sqlite store beside the data (`DATA/mlflow.db`);
- `ModelCheckpoint.dirpath`: `default_root_dir/checkpoints`, so `--ckpt_path last` finds it across runs;
- `trainer.precision`: bf16-mixed when CUDA is used, else 32-bit;
- on resume, the MLflow run id stored in the checkpoint, so the resumed run continues the same MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from tbd_core.errors import UserError
from tbd_lightning.callbacks import MLflowSaveConfig
from tbd_lightning.checkpoint_file import load_checkpoint
from tbd_lightning.data import TBDDataModule
from tbd_lightning.module import TBDModule

log = logging.getLogger(__name__)


def _class_entries(value) -> list:
    """The `class_path`/`init_args` entries of a trainer option that may be one object or a list."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def _checkpoint_file(ckpt_path: str | None, dirpath: str | None) -> Path | None:
    if not ckpt_path:
        return None
    path = Path(dirpath or ".") / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    return path if path.is_file() else None


def _max_local(module: TBDModule) -> int:
    return int(module.model.config.max_local)


def _global_text(module: TBDModule) -> str:
    return str(module.model.config.global_text)


def _latent_scale(module: TBDModule) -> int:
    return module.latent_scale


def _prompt_encoder(module: TBDModule) -> str | None:
    """The SD folder whose text encoder makes the global text's token states (None: sentence vectors)."""
    return module.hparams.pretrained if getattr(module.model.config, "text_chunks", 0) else None


def _text_chunks(module: TBDModule) -> int:
    return int(getattr(module.model.config, "text_chunks", 0) or 1)


def _keyword_params(fn) -> dict[str, object]:
    """Name -> annotation of `fn`'s parameters that have a default."""
    import inspect

    params = inspect.signature(fn, eval_str=True).parameters.values()
    return {p.name: p.annotation for p in params if p.default is not inspect.Parameter.empty}


def denoiser_fields(model: str) -> dict[str, object]:
    """The fields `model.model_overrides` may set for `model` (a preset, or sd), with their types."""
    if model == "sd":
        from tbd_lightning.sd_model import SDVideoDenoiser

        fields = {**_keyword_params(SDVideoDenoiser.__init__), **_keyword_params(SDVideoDenoiser.from_sd)}
        return {k: v for k, v in fields.items() if k not in ("unet", "unet_config", "motion_adapter")}
    from tbd_lightning.model import TBDVideoDenoiser

    return _keyword_params(TBDVideoDenoiser.__init__)


def _typed(key: str, value, annotation):
    """`value` as `annotation`: a command-line string read as YAML (`2`, `true`, `[false, true]`) first;
    UserError naming the key and the type when it is not one."""
    import contextlib

    import yaml
    from pydantic import TypeAdapter, ValidationError

    if isinstance(value, str) and annotation is not str:
        with contextlib.suppress(yaml.YAMLError):  # not YAML: checked as the string it is
            value = yaml.safe_load(value)
    try:
        checked = TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        name = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        raise UserError(f"model.model_overrides.{key} expects {name}, not {value!r}") from None
    return checked if isinstance(checked, bool | int | float | str) else value  # lists stay lists (hparams)


def typed_overrides(model: str, overrides: dict | None) -> dict | None:
    """`model.model_overrides` with each value of its field's type (`--model.model_overrides.text_chunks 2`
    arrives as the string '2'); UserError for a key the denoiser does not have."""
    if not overrides:
        return overrides
    fields = denoiser_fields(model)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UserError(f"model.model_overrides.{unknown[0]}: not a field of the {model!r} denoiser "
                        f"(its fields: {', '.join(sorted(fields))})")  # fmt: skip
    return {k: _typed(k, v, fields[k]) for k, v in overrides.items()}


class TBDCLI(LightningCLI):
    def __init__(self, args: list[str], ray_mode: bool = False):
        self.ray_mode = ray_mode
        super().__init__(
            TBDModule, TBDDataModule, save_config_callback=MLflowSaveConfig,
            save_config_kwargs={"save_to_log_dir": False}, run=False, args=args, seed_everything_default=0,
            parser_kwargs={"prog": "tbd train", "description": __doc__.split("\n")[0]},
        )  # fmt: skip

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="resume from a checkpoint, or 'last'"
        )
        # One truth for the text conditions (how many local sentences, what the global one is): the model's.
        parser.link_arguments("model", "data.max_local", compute_fn=_max_local, apply_on="instantiate")
        parser.link_arguments("model", "data.global_text", compute_fn=_global_text, apply_on="instantiate")
        parser.link_arguments("model", "data.latent_scale", compute_fn=_latent_scale, apply_on="instantiate")
        parser.link_arguments(
            "model", "data.prompt_encoder", compute_fn=_prompt_encoder, apply_on="instantiate"
        )
        parser.link_arguments("model", "data.text_chunks", compute_fn=_text_chunks, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        cfg.model.model_overrides = typed_overrides(cfg.model.model, cfg.model.model_overrides)
        trainer = cfg.trainer
        root = Path(trainer.default_root_dir or ".")
        if trainer.precision is None and torch.cuda.is_available() and trainer.accelerator != "cpu":
            trainer.precision = "bf16-mixed"
        dirpath = None
        for cb in _class_entries(trainer.callbacks):
            if cb.class_path.endswith("ModelCheckpoint"):
                cb.init_args.dirpath = cb.init_args.dirpath or str(root / "checkpoints")
                dirpath = cb.init_args.dirpath
        resume = _checkpoint_file(cfg.ckpt_path, dirpath)
        log.info("train: %s (annotations %s), %s steps -> %s", cfg.data.data, cfg.data.version or "newest",
                 trainer.max_steps, root)  # fmt: skip
        # Read once, safely (a pickle that would run code is refused here, with a clear error).
        state = load_checkpoint(resume) if resume is not None else None
        self._checked_ckpt = resume
        for logger in _class_entries(trainer.logger):
            if logger.class_path.endswith("MLFlowLogger"):
                from tbd_core.tracking import artifact_location, tracking_uri

                args = logger.init_args
                args.tracking_uri = args.tracking_uri or tracking_uri(None, Path(cfg.data.data))
                args.artifact_location = args.artifact_location or artifact_location(args.tracking_uri)
                args.tags = {**_lineage_tags(cfg.data.data, cfg.data.version), **(args.tags or {})}
                if state is not None and not args.run_id:
                    args.run_id = state.get("mlflow_run_id")
                    log.info("resuming %s: MLflow run %s", resume, args.run_id)

    def instantiate_trainer(self, **kwargs):
        if not self.ray_mode:
            return super().instantiate_trainer(**kwargs)
        from ray.train.lightning import (
            RayDDPStrategy,
            RayLightningEnvironment,
            RayTrainReportCallback,
            prepare_trainer,
        )

        kwargs.update(strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()], devices="auto")
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(RayTrainReportCallback())
        return prepare_trainer(trainer)

    def fit(self, ckpt_path: str | None = None) -> None:
        ckpt_path = ckpt_path or self.config.ckpt_path
        checked = getattr(self, "_checked_ckpt", None)
        if ckpt_path and ckpt_path != "last" and (checked is None or Path(ckpt_path) != checked):
            load_checkpoint(ckpt_path)  # refused here, with a clear error, before Lightning reads it
        for callback in self.trainer.checkpoint_callbacks:
            callback.fresh_run = not ckpt_path  # refuses a folder with an earlier run's checkpoints
        # weights_only: Lightning's own read of the file runs no pickled code either.
        self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True)


def _ray_loop(config: dict) -> None:
    """Runs on every Ray Train worker: the same CLI, with Ray's DDP strategy and environment."""
    import ray.train
    import ray.train.collective
    from lightning.pytorch.utilities import rank_zero_only

    from tbd_core.allocator import keep_freed_memory
    from tbd_core.native_log import divert_native_stderr

    keep_freed_memory()  # a Ray worker is a process of its own
    divert_native_stderr()  # and has its own native log (tbd_core.native_log)
    os.chdir(config["cwd"])
    # Lightning reads the rank from the environment at import; Ray Train sets it later. Rank-zero-only
    # logging (the MLflow run) must know it before the CLI builds the logger.
    rank_zero_only.rank = ray.train.get_context().get_world_rank()
    # Building the MLflow logger opens (and on first use migrates) the tracking store: rank 0 first, so
    # the other ranks never race it on a fresh sqlite file.
    if rank_zero_only.rank == 0:
        cli = TBDCLI(config["argv"], ray_mode=True)
    ray.train.collective.barrier()
    if rank_zero_only.rank != 0:
        cli = TBDCLI(config["argv"], ray_mode=True)
    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts the job after a worker failure
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            cli.fit(str(Path(folder) / "checkpoint.ckpt"))
    else:
        cli.fit()


def run_on_ray(argv: list[str], workers: int, use_gpu: bool, storage: str) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tbd_core.ray_init import init_ray

    init_ray()
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={"argv": argv, "cwd": os.getcwd()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name="tbd-train",
            storage_path=str(Path(storage).resolve()),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    result = trainer.fit()
    log.info("Ray Train finished: %s", result.metrics)


def split_ray_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The --ray-* options of `tbd train`; the rest is LightningCLI's."""
    front = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    front.add_argument("--ray-workers", type=int, default=0, help="run on Ray Train with N workers")
    front.add_argument("--ray-gpu", action="store_true", help="one GPU per Ray Train worker")
    front.add_argument(
        "--ray-storage", default="out/ray-train", help="Ray Train storage (shared on clusters)"
    )
    return front.parse_known_args(argv)


def main_argv(argv: list[str]) -> int:
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    from tbd_core.terminal import route_library_logs

    route_library_logs()  # Lightning's own console lines (tips, "GPU available") to the log file
    ray_args, rest = split_ray_args(argv)
    if ray_args.ray_workers > 0:
        run_on_ray(rest, ray_args.ray_workers, ray_args.ray_gpu, ray_args.ray_storage)
    else:
        TBDCLI(rest).fit()
    return 0


def _lineage_tags(data: str, version: str | None) -> dict[str, str]:
    """Tags that link a train run to the runs that made its data (see `tbd_core.tracking`)."""
    from pipelines.data_folder import DataFolder
    from tbd_core.tracking import run_ref

    folder = DataFolder(data)
    try:
        version = folder.pick_version(version)
        return {
            "tbd.version": version,
            "tbd.annotate_run": run_ref(folder.annotation_dir(version)),
            "tbd.preprocess_run": run_ref(folder.media_dir),
        }
    except UserError:
        return {}  # no data yet: the data module says so, with its own message
