"""The `tbd` commands, registered as objects: each names its job's typed config and the job function.

The command line of a command is generated from its config class by jsonargparse (the library behind
LightningCLI, so every command reads the same way as `tbd train`): one option per field, nested configs
as dotted options (`--media.crop_size 64`, `--guidance.switch 0.3`, `--think.engine vllm`), booleans as
`--force true`, and `--config job.yaml` for a whole config in a file. Configs and job functions are
imported only when their command runs, so `tbd --help` stays fast.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Command:
    """A subcommand: `config` and `run` are `module:attribute` paths; `run(config)` does the job."""

    name: str
    help: str
    config: str = ""
    run: str = ""
    positional: tuple[str, ...] = ()  # config fields taken as positional arguments, in order
    show: Callable[[object], object] | None = None  # what of the result to print as one JSON line
    exit_code: Callable[[object], int] | None = None
    main_argv: str = ""  # a command that parses its own command line (train: LightningCLI)
    examples: tuple[str, ...] = field(default=())

    def config_class(self) -> type:
        return _load(self.config)

    def parser(self):
        """The jsonargparse parser of this command (also used to check cluster entrypoints offline)."""
        from jsonargparse import ArgumentParser

        cls = self.config_class()
        parser = ArgumentParser(
            prog=f"tbd {self.name}", description=self.help, exit_on_error=False, allow_abbrev=False,
            epilog="\n".join(self.examples) or None,
        )  # fmt: skip
        parser.add_argument("--config", action="config", help="a YAML file with any of the options below")
        fields = _fields(cls)
        for name in self.positional:
            annotation, default = fields[name]
            parser.add_argument(name, type=annotation, **({"nargs": "?", "default": default} if default is not _REQUIRED else {}))  # fmt: skip
        parser.add_class_arguments(cls, nested_key=None, skip=set(self.positional), fail_untyped=True)
        return parser

    def make_config(self, argv: list[str]):
        parser = self.parser()
        cfg = parser.parse_args(argv)
        values = parser.instantiate(cfg).as_dict()
        values.pop("config", None)
        values.pop("__path__", None)
        return self.config_class()(**values)

    def __call__(self, argv: list[str]) -> int:
        if self.main_argv:
            return int(_load(self.main_argv)(argv) or 0)
        result = _load(self.run)(self.make_config(argv))
        if self.show is not None:
            shown = self.show(result)
            print(shown if isinstance(shown, str) else json.dumps(shown, default=str))
        return self.exit_code(result) if self.exit_code else 0


_REQUIRED = object()


def _fields(cls: type) -> dict[str, tuple[object, object]]:
    """Field name -> (type, default or _REQUIRED) of a pydantic model or a dataclass."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    if dataclasses.is_dataclass(cls):
        out = {}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else _REQUIRED
            out[f.name] = (hints[f.name], default)
        return out
    return {n: (hints[n], _REQUIRED if f.is_required() else f.default) for n, f in cls.model_fields.items()}


def _metrics(result: dict) -> dict:
    return result["metrics"]


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "assets", "list, fetch, set or unset the offline model assets",
            "tbd_core.assets:AssetsConfig", "tbd_core.assets:run_assets", positional=("action", "name", "path"),
            examples=("tbd assets fetch", "tbd assets set face_detector /path/to/model.tflite"),
        ),
        Command(
            "demo-corpus", "render the embedded demo corpus (MEAD + HDTF layouts)",
            "pipelines.demo_corpus.corpus:CorpusConfig", "pipelines.demo_corpus.corpus:build_and_describe",
            show=str,
        ),
        Command(
            "calibrate", "fit the AU measure against ground truth (renders or DISFA-style labels); print its table",
            "pipelines.calibrate:CalibrateConfig", "pipelines.calibrate:run_calibrate",
            examples=("tbd calibrate --out my_calibration.json", "tbd calibrate --labels DISFA/ --out disfa.json"),
        ),
        Command(
            "face", "detect a face and its 468-point mesh in an image",
            "media.face_tool:FaceConfig", "media.face_tool:describe_face", positional=("image",), show=str,
        ),
        Command(
            "ingest", "discover MEAD/HDTF clips and write the data folder's clip manifest",
            "pipelines.ingest:IngestConfig", "pipelines.ingest:ingest_summary", show=dict,
            examples=("tbd ingest --dataset mead --root MEAD --out data/mead --split_overrides '{W003: val}'",),
        ),
        Command(
            "preprocess", "Ray job: clips -> media shards + reject ledger",
            "pipelines.preprocess:PreprocessConfig", "pipelines.preprocess:run_preprocess", show=_metrics,
            examples=("tbd preprocess --data data/mead --media.crop_size 64 --clips_per_shard 8",),
        ),
        Command(
            "annotate", "Ray job: media shards -> CoT annotation shards of one version",
            "pipelines.annotate:AnnotateConfig", "pipelines.annotate:run_annotate",
            show=lambda r: {"version": r["version"], **r["metrics"]},
            examples=("tbd annotate --data data/mead --think.engine vllm --think.model /models/qwen",),
        ),
        Command(
            "annotations", "list annotation versions with counts and acceptance",
            "pipelines.annotations_table:AnnotationsConfig", "pipelines.annotations_table:print_versions",
        ),
        Command(
            "cluster-check", "Ray job: prove a cluster is ready (nodes, GPUs, volume, MLflow)",
            "pipelines.cluster_check:ClusterCheckConfig", "pipelines.cluster_check:run_cluster_check",
            show=lambda r: _load("pipelines.cluster_check:summary_line")(r), exit_code=lambda r: 0 if r["ok"] else 1,
        ),
        Command(
            "think", "reason from an emotion to FACS muscle movements (CoT JSON)",
            "annotation.think_once:ThinkConfig", "annotation.think_once:think_once", positional=("emotion",),
            exit_code=int,
            examples=('tbd think contempt --level 2', 'tbd think --text "a bittersweet smile" --level 2'),
        ),
        Command(
            "tiny-llm", "build a tiny local stand-in LLM for the vllm engine",
            "annotation.tiny_llm:TinyLLMConfig", "annotation.tiny_llm:build_from_config", show=str,
        ),
        Command(
            "tiny-sd", "write a Stable-Diffusion-1.5-layout folder with tiny random weights (tests, CPU)",
            "tbd_lightning.tiny_sd:TinySDConfig", "tbd_lightning.tiny_sd:write_from_config", show=str,
        ),
        Command(
            "train", "train the video denoiser (LightningCLI YAML; --ray-workers N: Ray Train)",
            main_argv="tbd_lightning.train:main_argv",
        ),
        Command(
            "export", "checkpoint -> diffusers pipeline folder (TBDPipeline.from_pretrained)",
            "tbd_lightning.export:ExportConfig", "tbd_lightning.export:export_from_config",
            positional=("ckpt", "out"), show=dict,
        ),
        Command(
            "generate", "portrait + speech + emotion -> talking-head mp4 (progressive guidance)",
            "tbd_lightning.generate:GenerateConfig", "tbd_lightning.generate:generate",
            show=lambda r: {k: r[k] for k in ("video", "strip", "au_plot", "frames", "seconds", "emotion", "windows", "seam_ratio")},
        ),
        Command(
            "app", "a local web app: think, edit, draw; browse and compare annotation versions (Gradio)",
            "tbd.app:AppConfig", "tbd.app:serve",
            examples=("tbd app --model out/demo/model --data '[out/demo/data/mead, out/demo/data/hdtf]'",),
        ),
        Command(
            "check-conditioning", "overfit a handful of clips, swap speech / text / reference: does each act?",
            "evaluation.conditioning:CheckConfig", "evaluation.conditioning:check",
            show=lambda r: {c: e["effect"] for c, e in r["effects"].items()},
            examples=("tbd check-conditioning --data data/mead --train_config configs/train/tiny.yaml --steps 250 --lr 0.003",),
        ),
        Command(
            "check-measures", "the emotion classifier, FER2013 judge and AU error on real clips (known answers)",
            "evaluation.check_measures:CheckMeasuresConfig", "evaluation.check_measures:check_measures",
            show=lambda r: {k: v for k, v in r.items() if k != "rows"},
            examples=("tbd check-measures --data out/demo/data/mead --corpus out/demo/corpus --size 48",),
        ),
        Command(
            "evaluate", "score generated held-out clips (PSNR/SSIM/LMD/sync/AU/emotion)",
            "evaluation.evaluate:EvaluateConfig", "evaluation.evaluate:run_evaluate",
            show=lambda r: {"clips": len(r["clips"]), "results": r["results"]},
            examples=("tbd evaluate --model out/model --data data/mead --split val --guidance.switch 0.3",),
        ),
    )
}  # fmt: skip
